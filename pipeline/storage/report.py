"""The run journal as pictures and figures: a timeline, throughput per stage, time left.

From :func:`pipeline.storage.journal.read_journal` rows (one per stage run):

* :func:`timeline_figure` / :func:`timeline_png`: one lane per worker, one box per task from its
  ``started`` to its ``finished`` time, coloured by stage (failed runs hatched), every stage named
  in a legend below the lanes.  Luigi runs each task of a
  ``--workers N`` process in a forked child (a new pid per task), so lanes are worker slots:
  per host, each run goes to the first lane free at its start (:func:`worker_lanes`); a
  ``--workers 1`` process is one lane;
* :func:`throughput`: per stage, the runs, the audio seconds they processed (the counts'
  ``audio_seconds``), the seconds spent in their bodies (``body_s``) and audio seconds per
  second, both per worker (audio / body seconds) and for the run (audio / its wall span);
* :func:`time_left`: for an unfinished run, the work left per stage (shards or stages not
  done, from ``silentmine status``) times the mean wall time of that stage's runs so far,
  divided among the workers seen; stages with no run yet are named, not guessed.

:func:`latest_run` picks the journal rows of the pipeline's latest run: the stage runs after the
last stretch of ``gap_s`` seconds with nothing running.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

RUN_GAP_S = 600.0  # idle seconds that separate two runs of the pipeline in the journal


def latest_run(journal: pd.DataFrame, gap_s: float = RUN_GAP_S) -> pd.DataFrame:
    """The rows of ``journal`` (read_journal columns) of the pipeline's latest run: after the last
    stretch of ``gap_s`` seconds in which no stage was running."""
    if journal.empty:
        return journal
    rows = journal.sort_values("started", kind="stable").reset_index(drop=True)
    reach = rows["finished"].astype(float).cummax().shift(fill_value=-math.inf)
    starts = rows.index[rows["started"].astype(float) > reach + gap_s]
    return rows.iloc[int(starts[-1]) if len(starts) else 0:].reset_index(drop=True)


def worker_lanes(journal: pd.DataFrame) -> pd.Series:
    """A lane label (``"<host> #<k>"``) per row: per host, runs in start order, each in the
    first lane whose last run had finished when it started."""
    labels = pd.Series("", index=journal.index, dtype=object)
    for host, rows in journal.groupby(journal["host"].astype(str), sort=True):
        ends: list[float] = []
        for i, run in rows.sort_values("started", kind="stable").iterrows():
            lane = next((k for k, end in enumerate(ends) if end <= float(run["started"]) + 1e-6), len(ends))
            if lane == len(ends):
                ends.append(0.0)
            ends[lane] = float(run["finished"])
            labels[i] = f"{host} #{lane + 1}"
    return labels


def _audio_seconds(counts) -> float:
    value = counts.get("audio_seconds") if isinstance(counts, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def throughput(journal: pd.DataFrame) -> pd.DataFrame:
    """Per stage (first run first): ``runs``, ``failed``, ``audio_s`` (audio seconds processed by
    runs that finished), ``body_s``, ``wall_span_s`` (first start to last end), ``per_worker``
    (audio_s / body_s of runs with audio) and ``overall`` (audio_s / wall_span_s), audio seconds
    per second; NaN where a stage records no audio seconds."""
    columns = ["stage", "runs", "failed", "audio_s", "body_s", "wall_span_s", "per_worker", "overall"]
    if journal.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for stage, runs in journal.groupby("stage", sort=False):
        done = runs[runs["status"] == "done"]
        audio = done["counts"].map(_audio_seconds)
        audio_s = float(audio.sum())
        body_with_audio = float(done.loc[audio > 0, "body_s"].astype(float).sum())
        span = float(runs["finished"].astype(float).max() - runs["started"].astype(float).min())
        rows.append({"stage": stage, "runs": len(runs), "failed": int((runs["status"] == "failed").sum()),
                     "audio_s": audio_s, "body_s": float(runs["body_s"].astype(float).sum()), "wall_span_s": span,
                     "per_worker": audio_s / body_with_audio if audio_s and body_with_audio > 0 else math.nan,
                     "overall": audio_s / span if audio_s and span > 0 else math.nan})
    order = journal.groupby("stage", sort=False)["started"].min().sort_values(kind="stable").index
    return pd.DataFrame(rows, columns=columns).set_index("stage").loc[list(order)].reset_index()


@dataclass(frozen=True)
class TimeLeft:
    """An estimate of the time left: ``seconds`` (of the stages that have a history), ``workers``
    it is shared among, ``per_stage`` ``{stage: (runs left, seconds)}`` and ``unknown`` (stages
    left that have not run yet, so nothing to estimate them from)."""

    seconds: float
    workers: int
    per_stage: dict[str, tuple[int, float]]
    unknown: list[str]

    def lines(self) -> list[str]:
        if not self.per_stage and not self.unknown:
            return ["time left: nothing left to run"]
        head = (f"time left: about {_duration(self.seconds)} with {self.workers} worker"
                f"{'s' * (self.workers != 1)}")
        lines = [head] + [f"  {stage}: {n} left, ~{_duration(s)} of work" for stage, n_s in self.per_stage.items()
                          for n, s in [n_s]]
        if self.unknown:
            lines.append(f"  not estimated (no run yet): {', '.join(self.unknown)}")
        return lines


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def time_left(journal: pd.DataFrame, remaining: dict[str, int], workers: int | None = None) -> TimeLeft:
    """Estimate from ``journal`` rows the time to run ``remaining`` ``{stage: runs left}`` (shards
    of a shard stage, 1 for a plain stage): the mean wall time of the stage's finished runs times
    the runs left, shared among ``workers`` (default: the workers seen in ``journal``)."""
    done = journal[journal["status"] == "done"] if not journal.empty else journal
    seen = max(1, worker_lanes(journal).nunique()) if not journal.empty else 1
    workers = max(1, workers or seen)
    per_stage, unknown, total = {}, [], 0.0
    for stage, left in remaining.items():
        if left <= 0:
            continue
        runs = done[done["stage"] == stage] if not done.empty else done
        if runs.empty:
            unknown.append(stage)
            continue
        work = float(runs["wall_s"].astype(float).mean()) * left
        per_stage[stage] = (left, work)
        total += work
    return TimeLeft(total / workers, workers, per_stage, unknown)


LEGEND_COLUMNS = 5  # stages per row of the timeline's legend


def timeline_figure(journal: pd.DataFrame, title: str = "silentmine run"):
    """The timeline of ``journal`` rows as a matplotlib ``Figure``: one lane per worker slot, one
    box per task (start to end, seconds from the first start), coloured by stage, failed runs
    hatched, and a legend below the lanes that names every stage (in rows of
    ``LEGEND_COLUMNS``; the figure grows with the lanes and the legend's rows, and its
    constrained layout keeps every label inside).  ``ValueError`` for an empty journal."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if journal.empty:
        raise ValueError("the journal is empty: nothing has run under this data root")
    rows = journal.sort_values("started", kind="stable")
    t0 = float(rows["started"].astype(float).min())
    lane_of = worker_lanes(rows)
    lanes = sorted(set(lane_of), key=lambda label: (label.rsplit(" #", 1)[0], int(label.rsplit(" #", 1)[1])))
    stages = list(dict.fromkeys(rows["stage"].astype(str)))
    palette = colormaps["tab10" if len(stages) <= 10 else "tab20"]
    colour = {stage: palette(i % palette.N) for i, stage in enumerate(stages)}
    legend_rows = math.ceil(len(stages) / LEGEND_COLUMNS)
    fig = Figure(figsize=(10, 1.5 + 0.4 * len(lanes) + 0.3 * legend_rows), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for lane, label in enumerate(lanes):
        mine = rows[lane_of == label]
        for run in mine.itertuples(index=False):
            start, width = float(run.started) - t0, max(float(run.finished) - float(run.started), 1e-3)
            ax.broken_barh([(start, width)], (lane - 0.4, 0.8), facecolors=colour[str(run.stage)],
                           edgecolor="black", linewidth=0.4, hatch="///" if run.status == "failed" else None)
    ax.set_yticks(range(len(lanes)), lanes, fontsize=8)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first task started")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", linewidth=0.3)
    fig.legend(handles=[Patch(facecolor=colour[s], edgecolor="black", label=s) for s in stages], fontsize=8,
               loc="outside lower center", ncols=min(len(stages), LEGEND_COLUMNS), frameon=False)
    return fig


def timeline_png(journal: pd.DataFrame, out: str | os.PathLike, title: str = "silentmine run") -> Path:
    """Draw :func:`timeline_figure` of ``journal`` rows to the PNG ``out``; returns ``out``."""
    fig = timeline_figure(journal, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def throughput_lines(table: pd.DataFrame) -> list[str]:
    """``throughput`` as lines for people."""
    lines = []
    for row in table.itertuples(index=False):
        audio = (f", {row.audio_s / 60:.1f} min of audio: {row.per_worker:.1f} audio s/s per worker, "
                 f"{row.overall:.1f} overall" if row.audio_s else "")
        failed = f" ({row.failed} failed)" if row.failed else ""
        lines.append(f"{row.stage}: {row.runs} runs{failed} in {_duration(row.wall_span_s)}{audio}")
    return lines
