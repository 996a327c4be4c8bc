"""How right an extraction was, measured against a catalog whose stems are known (the demo catalog).

The truth table (``catalog_truth.parquet``) has one row per grid window of each catalog file:
``file`` (posix path relative to the catalog root), ``window``, ``start_s`` and ``V_<source>``
in dB.  The index is the D_i index (``pipeline.mining.schema.INDEX_SCHEMA``).  Per source:

* **Precision side.**  A truth window counts as *inside* the excerpts when its whole span
  ``[start_s, start_s + WINDOW_S)`` lies inside the union of the excerpts of the same source and
  file (1e-6 s tolerance); each such window has weight 1.  Windows share the detector's grid, so
  these are the detector windows the excerpts were built from.  ``fraction_silent`` is the share
  of inside windows with ``V_i <= silent_db`` (-20 dB), ``fraction_inaudible`` the share with
  ``V_i <= inaudible_db`` (-30 dB), ``v95_db`` the 95th percentile (inverted CDF, no
  interpolation) of ``V_i`` over inside windows.  ``-inf`` counts as silent.
* **Recall side.**  A *truly silent run* is a run of truth windows with ``V_i <= inaudible_db``
  kept by the extraction's duration rule (``RunRule.strict`` of the run rule: its ``min_seconds``, no
  dip bridged; a file's length is taken as the end of its last window).  It is *recovered* when the union of
  the excerpts of the same source and file overlaps at least half of its span in seconds.

Excerpts whose file is not under ``catalog_root`` or has no truth rows are counted in
``n_excerpts_without_truth`` and take no part in the fractions.

**Rules and the yield-against-purity curve.**  Besides the D_i that was extracted, the same
measurement is made of the excerpts extraction *would* cut from the catalog's detector
probabilities at other thresholds (:func:`simulated_index`: the run rule of extraction,
:meth:`pipeline.mining.extraction.RunRule.select` with the same rule, each file's length taken
as the end of its last truth window; no audio is decoded, and the
all-zero excerpts extraction skips are kept).  :func:`rule_table` does it at each calibration
rule's ``p_i``, :func:`yield_curve` at a grid of thresholds, so that purity can be read
against yield as the threshold varies.  :func:`separator_table` filters the extracted index on
its separator columns at a few limits.  The truth measures; nothing here feeds a threshold.

**The oracle D_i** (:func:`build_oracle_datasets`): what a perfect detector would have mined,
the top rung but one of the mining value ladder.  Its probabilities
(:func:`oracle_probabilities`) are 1 on the truth windows with ``V_i <= silent_db`` (-20 dB, the
calibration target; ``-inf`` counts) and 0 elsewhere, for every source; extraction itself
(:func:`pipeline.mining.extraction.extract_shard`: the same run rule, ``min_seconds`` and
``max_gap``, the same cutting from the original files) then writes the excerpts, index parts
and rejects in the shard-store layout of :mod:`pipeline.mining.datasets`, so that
:class:`~pipeline.mining.datasets.DatasetRun` and the remix step read it like a mined D_i.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.mining.calibration import inverted_cdf_quantile
from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule, extract_shard
from pipeline.mining.schema import PROBABILITY_SCHEMA
from pipeline.sources import INAUDIBLE_DB, SOURCES, TRULY_SILENT_DB, WINDOW_S
from pipeline.storage.outputs import StageResult, write_json_atomic

if TYPE_CHECKING:
    from pipeline.mining.datasets import DatasetRun

RECOVERED_OVERLAP = 0.5  # fraction of a true run that excerpts must cover
_TOLERANCE_S = 1e-6

MEASURE_COLUMNS = ("source", "n_excerpts", "extracted_seconds", "n_excerpts_without_truth", "n_windows_inside",
                   "fraction_silent", "fraction_inaudible", "v95_db", "n_true_runs", "n_recovered", "recall")
CURVE_THRESHOLDS = tuple(np.round(np.concatenate([np.arange(0.05, 0.9, 0.05), np.arange(0.9, 1.0, 0.01)]), 4))
SEPARATOR_LIMITS_DB = (-10.0, -15.0, -20.0, -25.0, -30.0)  # separator_db_mean limits measured


def relative_file(catalog_path: str, catalog_root: str | os.PathLike) -> str | None:
    """``catalog_path`` relative to ``catalog_root`` (posix, symlinks resolved), or None if outside."""
    rel = os.path.relpath(os.path.realpath(catalog_path), os.path.realpath(catalog_root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return rel.replace(os.sep, "/")


def merge_intervals(intervals: np.ndarray) -> np.ndarray:
    """Union of ``[start, end)`` intervals ``(k, 2)`` as sorted disjoint intervals ``(m, 2)``."""
    intervals = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    if intervals.shape[0] == 0:
        return intervals
    intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
    reach = np.maximum.accumulate(intervals[:, 1])
    new_group = np.append(True, intervals[1:, 0] > reach[:-1] + _TOLERANCE_S)
    group = np.cumsum(new_group) - 1
    starts = intervals[new_group, 0]
    ends = np.zeros(starts.size)
    np.maximum.at(ends, group, intervals[:, 1])
    return np.stack([starts, ends], axis=1)


def window_inside(window_starts: np.ndarray, start_s, end_s, window_s: float = WINDOW_S) -> np.ndarray:
    """Bool per window: ``[w, w + window_s)`` lies inside ``[start_s, end_s)`` (scalars, or one
    interval per window), to within 1e-6 s: what "a window inside an excerpt" means everywhere."""
    window_starts = np.asarray(window_starts, dtype=np.float64)
    after_start = window_starts >= np.asarray(start_s) - _TOLERANCE_S
    return after_start & (window_starts + window_s <= np.asarray(end_s) + _TOLERANCE_S)


def windows_inside(window_starts: np.ndarray, union: np.ndarray, window_s: float = WINDOW_S) -> np.ndarray:
    """Bool per window: it lies inside one interval of ``union`` (disjoint, sorted; :func:`window_inside`)."""
    window_starts = np.asarray(window_starts, dtype=np.float64)
    if union.shape[0] == 0:
        return np.zeros(window_starts.shape, dtype=bool)
    slot = np.searchsorted(union[:, 0], window_starts + _TOLERANCE_S, side="right") - 1
    valid = slot >= 0
    slot = np.maximum(slot, 0)
    return valid & window_inside(window_starts, union[slot, 0], union[slot, 1], window_s)


def covered_seconds(spans: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Seconds of each span ``(k, 2)`` covered by the disjoint intervals ``union`` ``(m, 2)``."""
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    if spans.shape[0] == 0 or union.shape[0] == 0:
        return np.zeros(spans.shape[0])
    lo = np.maximum(spans[:, None, 0], union[None, :, 0])
    hi = np.minimum(spans[:, None, 1], union[None, :, 1])
    return np.clip(hi - lo, 0.0, None).sum(axis=1)


def measure_extraction(
    index: pd.DataFrame,
    truth: pd.DataFrame,
    catalog_root: str | os.PathLike,
    silent_db: float = TRULY_SILENT_DB,
    inaudible_db: float = INAUDIBLE_DB,
    run_rule: RunRule = PAPER_RUN_RULE,
) -> pd.DataFrame:
    """One row per source (:data:`MEASURE_COLUMNS`): what the excerpts in ``index`` got right.

    ``index``: D_i index rows (needs ``source, catalog_path, start_s, end_s, duration_s``);
    ``truth``: ``file, window, start_s, V_<source>``; ``run_rule``: the extraction's, whose
    ``min_seconds`` makes a truly silent run.  See the module docstring for the rules.
    """
    relative = [relative_file(str(p), catalog_root) for p in index["catalog_path"]]
    truth_by_file = {str(name): group.sort_values("window", kind="stable")
                     for name, group in truth.groupby("file", sort=True)}
    for name, windows in truth_by_file.items():
        if not np.array_equal(windows["window"].to_numpy(np.int64), np.arange(len(windows))):
            raise ValueError(f"truth windows of {name!r} are not exactly 0..{len(windows) - 1}")
    excerpts = pd.DataFrame({"source": index["source"].astype(str).to_numpy(),
                             "file": pd.Series(relative, dtype=object),
                             "start_s": index["start_s"].to_numpy(np.float64),
                             "end_s": index["end_s"].to_numpy(np.float64),
                             "duration_s": index["duration_s"].to_numpy(np.float64)})
    excerpts["known"] = excerpts["file"].isin(list(truth_by_file))
    unions = {key: merge_intervals(group[["start_s", "end_s"]].to_numpy())
              for key, group in excerpts[excerpts["known"]].groupby(["source", "file"], sort=False)}
    rows = []
    for source in SOURCES:
        mine = excerpts[excerpts["source"] == source]
        inside_volumes, n_runs, n_recovered = [], 0, 0
        for name, windows in truth_by_file.items():
            union = unions.get((source, name), np.zeros((0, 2)))
            volumes = windows[f"V_{source}"].to_numpy(np.float64)
            starts = windows["start_s"].to_numpy(np.float64)
            inside_volumes.append(volumes[windows_inside(starts, union)])
            duration = float(starts[-1] + WINDOW_S) if len(starts) else 0.0
            _, spans = run_rule.strict.select(volumes <= inaudible_db, duration)
            covered = covered_seconds(spans, union)
            n_runs += spans.shape[0]
            n_recovered += int((covered >= RECOVERED_OVERLAP * (spans[:, 1] - spans[:, 0]) - _TOLERANCE_S).sum())
        inside = np.concatenate(inside_volumes) if inside_volumes else np.zeros(0)
        rows.append({
            "source": source,
            "n_excerpts": int(len(mine)),
            "extracted_seconds": float(mine["duration_s"].sum()),
            "n_excerpts_without_truth": int((~mine["known"]).sum()),
            "n_windows_inside": int(inside.size),
            "fraction_silent": float((inside <= silent_db).mean()) if inside.size else float("nan"),
            "fraction_inaudible": float((inside <= inaudible_db).mean()) if inside.size else float("nan"),
            "v95_db": inverted_cdf_quantile(inside, 0.95),
            "n_true_runs": n_runs,
            "n_recovered": n_recovered,
            "recall": n_recovered / n_runs if n_runs else float("nan"),
        })
    return pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))


def file_durations(truth: pd.DataFrame) -> dict[str, float]:
    """``{file: seconds}``: the end of each file's last truth window."""
    last = truth.groupby("file", sort=False)["start_s"].max()
    return {str(name): float(value) + WINDOW_S for name, value in last.items()}


def simulated_index(probabilities: pd.DataFrame, tracks: pd.DataFrame, thresholds: dict[str, float | None],
                    durations: dict[str, float], catalog_root: str | os.PathLike,
                    run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """The excerpts extraction would cut at ``thresholds`` (``{source: p_i or None}``), as index
    rows ``source, catalog_path, start_s, end_s, duration_s``, without decoding audio.

    ``probabilities``: PROBABILITY_SCHEMA rows; ``tracks``: ``track_id, path`` (the catalog
    scan); ``durations``: :func:`file_durations` (files without one are skipped).
    """
    paths = dict(zip(tracks["track_id"].astype(str), tracks["path"].astype(str)))
    rows = []
    for track_id, frames in probabilities.groupby("track_id", sort=True):
        path = paths.get(str(track_id))
        name = relative_file(path, catalog_root) if path is not None else None
        if name is None or name not in durations:
            continue
        frames = frames.sort_values("frame", kind="stable")
        for source, threshold in thresholds.items():
            if threshold is None or not np.isfinite(threshold):
                continue
            mask = frames[f"p_{source}"].to_numpy(np.float64) >= threshold
            _, spans = run_rule.select(mask, durations[name])
            rows.extend({"source": source, "catalog_path": path, "start_s": a, "end_s": b, "duration_s": b - a}
                        for a, b in spans.tolist())
    return pd.DataFrame(rows, columns=["source", "catalog_path", "start_s", "end_s", "duration_s"])


RULE_COLUMNS = ("rule", "source", "threshold", "extracted_hours", "n_excerpts", "fraction_silent", "v95_db",
                "recall", "n_recovered", "n_true_runs")


def rule_table(probabilities: pd.DataFrame, tracks: pd.DataFrame, rules: dict[str, dict[str, float | None]],
               truth: pd.DataFrame, catalog_root: str | os.PathLike,
               run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """Per rule (``{rule: {source: p_i or None}}``) and source: the simulated excerpts' purity
    (``fraction_silent``), ``v95_db``, recall and extracted hours (:data:`RULE_COLUMNS`); a
    source without ``p_i`` under a rule has NaN threshold and no excerpts."""
    durations = file_durations(truth)
    rows = []
    for rule, thresholds in rules.items():
        index = simulated_index(probabilities, tracks, thresholds, durations, catalog_root, run_rule)
        measured = measure_extraction(index, truth, catalog_root, run_rule=run_rule).set_index("source")
        for source in SOURCES:
            r = measured.loc[source]
            threshold = thresholds.get(source)
            rows.append({"rule": rule, "source": source,
                         "threshold": float(threshold) if threshold is not None else float("nan"),
                         "extracted_hours": r["extracted_seconds"] / 3600, "n_excerpts": int(r["n_excerpts"]),
                         "fraction_silent": r["fraction_silent"], "v95_db": r["v95_db"], "recall": r["recall"],
                         "n_recovered": int(r["n_recovered"]), "n_true_runs": int(r["n_true_runs"])})
    return pd.DataFrame(rows, columns=list(RULE_COLUMNS))


def yield_curve(probabilities: pd.DataFrame, tracks: pd.DataFrame, truth: pd.DataFrame,
                catalog_root: str | os.PathLike, thresholds=CURVE_THRESHOLDS,
                run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """Yield against purity as the threshold varies: :func:`rule_table` rows (``rule`` holds
    the threshold's text) of every source at each of ``thresholds``, ascending."""
    tables = [rule_table(probabilities, tracks, {f"{t:g}": {s: float(t) for s in SOURCES}}, truth, catalog_root,
                         run_rule) for t in sorted(set(float(t) for t in thresholds))]
    curve = pd.concat(tables, ignore_index=True).drop(columns="rule")
    return curve.sort_values(["source", "threshold"], kind="stable").reset_index(drop=True)


ORACLE_RULE = "oracle (best single threshold)"


def oracle_rows(curve: pd.DataFrame, target_fraction: float = 0.95) -> pd.DataFrame:
    """The yield curve's best single threshold per source (:data:`RULE_COLUMNS`, ``rule`` =
    :data:`ORACLE_RULE`): among the thresholds whose excerpts reach ``target_fraction`` purity
    against the truth, the one that extracts the most hours (ties: higher purity, then higher
    threshold).  Chosen on the truth, it is what a rule could reach at best with one threshold;
    a source that no threshold brings to the target has NaN threshold and no excerpts."""
    rows = []
    for source in SOURCES:
        mine = curve[(curve["source"] == source) & (curve["n_excerpts"] > 0)
                     & (curve["fraction_silent"] >= target_fraction - 1e-12)]
        if mine.empty:
            rows.append({"rule": ORACLE_RULE, "source": source, "threshold": float("nan"), "extracted_hours": 0.0,
                         "n_excerpts": 0, "fraction_silent": float("nan"), "v95_db": float("nan"),
                         "recall": 0.0, "n_recovered": 0,
                         "n_true_runs": int(curve.loc[curve["source"] == source, "n_true_runs"].max())
                         if (curve["source"] == source).any() else 0})
            continue
        best = mine.sort_values(["extracted_hours", "fraction_silent", "threshold"], ascending=False,
                                kind="stable").iloc[0]
        rows.append({"rule": ORACLE_RULE, **best.to_dict()})
    return pd.DataFrame(rows, columns=list(RULE_COLUMNS))


def separator_table(index: pd.DataFrame, truth: pd.DataFrame, catalog_root: str | os.PathLike,
                    limits=SEPARATOR_LIMITS_DB, run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """The extracted D_i kept by the separator's second opinion at each of ``limits`` dB
    (``separator_db_mean <= limit``), measured like :func:`rule_table` (``rule`` reads
    ``separator <= L dB``); empty when no excerpt has a separator score."""
    scored = index[np.isfinite(index["separator_db_mean"].to_numpy(np.float64))
                   | np.isneginf(index["separator_db_mean"].to_numpy(np.float64))]
    if scored.empty:
        return pd.DataFrame(columns=list(RULE_COLUMNS))
    rows = []
    for limit in (None, *limits):
        kept = scored if limit is None else scored[scored["separator_db_mean"] <= limit]
        measured = measure_extraction(kept, truth, catalog_root, run_rule=run_rule).set_index("source")
        for source in SOURCES:
            r = measured.loc[source]
            rows.append({"rule": "scored, all kept" if limit is None else f"separator <= {limit:g} dB",
                         "source": source, "threshold": float("nan") if limit is None else float(limit),
                         "extracted_hours": r["extracted_seconds"] / 3600, "n_excerpts": int(r["n_excerpts"]),
                         "fraction_silent": r["fraction_silent"], "v95_db": r["v95_db"], "recall": r["recall"],
                         "n_recovered": int(r["n_recovered"]), "n_true_runs": int(r["n_true_runs"])})
    return pd.DataFrame(rows, columns=list(RULE_COLUMNS))


def plot_yield_curve(curve: pd.DataFrame, rules: pd.DataFrame | None, path: str | os.PathLike,
                     target: float = 0.95) -> None:
    """PNG: per source, purity (share of extracted windows <= -20 dB) against extracted hours
    as the threshold varies (:func:`yield_curve`), the rules' points marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.storage.outputs import write_png_atomic

    figure = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2).ravel()
    for ax, source in zip(axes, SOURCES):
        rows = curve[(curve["source"] == source) & (curve["n_excerpts"] > 0)]
        ax.plot(rows["extracted_hours"] * 60, rows["fraction_silent"], marker=".", label="threshold varies")
        for row in rows.iloc[:: max(1, len(rows) // 6)].itertuples():
            ax.annotate(f"{row.threshold:g}", (row.extracted_hours * 60, row.fraction_silent), fontsize=6)
        if rules is not None:
            for row in rules[(rules["source"] == source) & (rules["n_excerpts"] > 0)].itertuples():
                ax.plot(row.extracted_hours * 60, row.fraction_silent, marker="o", linestyle="none",
                        label=f"{row.rule} (p = {row.threshold:.3f}, recall {row.recall:.0%})")
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_title(source)
        ax.set_xlabel("extracted minutes")
        ax.set_ylabel(f"share of windows <= {TRULY_SILENT_DB:g} dB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    write_png_atomic(figure, path)


def _rule_line(r) -> str:
    if not r.n_excerpts and not np.isfinite(r.threshold):
        return f"{r.source} [{r.rule}]: no threshold"
    return (f"{r.source} [{r.rule}]: p = {r.threshold:.3f}, {r.extracted_hours * 60:.1f} min, "
            f"{r.fraction_silent:.1%} <= {TRULY_SILENT_DB:g} dB, V95 {r.v95_db:.1f} dB, "
            f"recall {r.recall:.0%} ({r.n_recovered}/{r.n_true_runs})")


def measure_rules(probabilities: pd.DataFrame, tracks: pd.DataFrame, rules: dict[str, dict[str, float | None]],
                  truth: pd.DataFrame, catalog_root: str | os.PathLike, out: str | os.PathLike,
                  index: pd.DataFrame | None = None, run_rule: RunRule = PAPER_RUN_RULE) -> StageResult:
    """The rules part of the measure stage: ``rules.parquet`` / ``.csv`` (:func:`rule_table`, plus
    :func:`separator_table` of ``index`` when it has scores, plus the curve's :func:`oracle_rows`),
    ``yield_curve.parquet`` / ``.csv`` and
    ``yield_curve.png`` in ``out``; counts ``rules`` (the table's records), a summary line a row."""
    from pathlib import Path

    from pipeline.storage.outputs import write_parquet_atomic

    out = Path(out)
    table = rule_table(probabilities, tracks, rules, truth, catalog_root, run_rule)
    if index is not None:
        table = pd.concat([table, separator_table(index, truth, catalog_root, run_rule=run_rule)], ignore_index=True)
    curve = yield_curve(probabilities, tracks, truth, catalog_root, run_rule=run_rule)
    table = pd.concat([table, oracle_rows(curve)], ignore_index=True)
    write_parquet_atomic(table, out / "rules.parquet")
    (out / "rules.csv").write_text(table.to_csv(index=False))
    write_parquet_atomic(curve, out / "yield_curve.parquet")
    (out / "yield_curve.csv").write_text(curve.to_csv(index=False))
    plot_yield_curve(curve, table[table["rule"].isin([*rules, ORACLE_RULE])], out / "yield_curve.png")
    return StageResult({"rules": json.loads(table.to_json(orient="records"))},
                       [_rule_line(r) for r in table.itertuples()])


def build_measure(run: "DatasetRun | str | os.PathLike", truth_path: str | os.PathLike,
                  catalog_root: str | os.PathLike, out: str | os.PathLike,
                  probability_files: list[str | os.PathLike], tracks_file: str | os.PathLike,
                  threshold_files: dict[str, str | os.PathLike], rule: str = "windows",
                  run_rule: RunRule = PAPER_RUN_RULE) -> StageResult:
    """The measure stage: what an extraction got right, against the truth file.

    :func:`measure_extraction` of the D_i's index (``run``: a
    :class:`pipeline.mining.datasets.DatasetRun` or its folder; extracted under calibration
    ``rule``), written to ``measure.parquet`` / ``measure.csv``; then :func:`measure_rules` of
    the files the pipeline keeps: the detection shards' probabilities (``probability_files``),
    the scan's ``tracks.parquet`` and each calibration rule's ``thresholds.parquet``
    (``threshold_files``: rule -> file), all with extraction's ``run_rule``.
    Counts ``excerpts``, ``measure`` and ``rules`` (the tables' records); the summary: one line a
    source of the extracted D_i, then one a rule and source.
    """
    from pathlib import Path

    from pipeline.mining.calibration import read_thresholds
    from pipeline.mining.datasets import DatasetRun
    from pipeline.storage.outputs import write_parquet_atomic

    out = Path(out)
    index = DatasetRun.of(run).index()
    table = measure_extraction(index, pd.read_parquet(truth_path), catalog_root, run_rule=run_rule)
    write_parquet_atomic(table, out / "measure.parquet")
    (out / "measure.csv").write_text(table.to_csv(index=False))
    lines = [f"extracted ({rule} rule): {r.source}: {r.extracted_seconds / 60:.1f} min in {r.n_excerpts} excerpts, "
             f"{r.fraction_silent:.1%} truly <= {TRULY_SILENT_DB:g} dB, V95 {r.v95_db:.1f} dB, "
             f"recall of silent runs {r.recall:.0%} ({r.n_recovered}/{r.n_true_runs})"
             for r in table.itertuples() if r.n_excerpts or r.n_true_runs]
    probabilities = pd.concat([pd.read_parquet(p) for p in probability_files], ignore_index=True)
    tracks = pd.read_parquet(tracks_file, columns=["track_id", "path"])
    rules = {name: read_thresholds(path) for name, path in threshold_files.items()}
    ruled = measure_rules(probabilities, tracks, rules, pd.read_parquet(truth_path), catalog_root, out, index,
                          run_rule)
    counts = {"excerpts": int(table["n_excerpts"].sum()), "measure": json.loads(table.to_json(orient="records")),
              **ruled.counts}
    return StageResult(counts, [*lines, *ruled.summary])



ORACLE_THRESHOLD = 0.5  # the oracle's P_i is 0 or 1: every p_i in (0, 1] selects the same frames
ORACLE_KEY = "oracle"  # the oracle D_i's shard key, and its rows' detector_key and calibration_key


def oracle_probabilities(truth: pd.DataFrame, tracks: pd.DataFrame, catalog_root: str | os.PathLike,
                         silent_db: float = TRULY_SILENT_DB) -> pd.DataFrame:
    """A perfect detector's output on the catalog scan's ``tracks`` (``track_id, path``):
    PROBABILITY_SCHEMA rows on the truth's grid, ``p_<source>`` = 1 where the true ``V_i <= silent_db``
    dB (``-inf`` included), else 0.  Tracks without truth rows get none."""
    by_file = {str(name): group.sort_values("window", kind="stable") for name, group in truth.groupby("file")}
    parts = []
    for track_id, path in zip(tracks["track_id"].astype(str), tracks["path"].astype(str)):
        windows = by_file.get(relative_file(path, catalog_root) or "")
        if windows is None:
            continue
        part = pd.DataFrame({"track_id": track_id, "frame": windows["window"].to_numpy(np.int32),
                             "start_s": windows["start_s"].to_numpy(np.float64)})
        for source in SOURCES:
            part[f"p_{source}"] = (windows[f"V_{source}"].to_numpy(np.float64) <= silent_db).astype(np.float32)
        parts.append(part)
    columns = [field.name for field in PROBABILITY_SCHEMA]
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=field.type.to_pandas_dtype())
                             for name, field in zip(columns, PROBABILITY_SCHEMA)})
    return pd.concat(parts, ignore_index=True)[columns]


def build_oracle_datasets(truth_path: str | os.PathLike, tracks_file: str | os.PathLike,
                          catalog_root: str | os.PathLike, out: str | os.PathLike, data_root: str | os.PathLike,
                          run_rule: RunRule = PAPER_RUN_RULE, silent_db: float = TRULY_SILENT_DB) -> StageResult:
    """The oracle D_i stage: the excerpts a perfect detector would give extraction (module docstring),
    written into ``out`` as one shard (key ``"oracle"``) of a shard store: ``index/source=<s>/``,
    ``audio/``, ``rejects/`` and ``shards/oracle.json`` (its marker, with the files); rows'
    ``audio_path`` relative to ``data_root``, ``threshold`` 0.5, ``detector_key`` and
    ``calibration_key`` ``"oracle"``.  ``tracks_file``: the catalog scan's ``tracks.parquet``.

    Counts ``tracks`` (scanned), ``tracks_with_truth``, ``excerpts``, ``excerpts_<s>``,
    ``hours_<s>`` and ``rejects``; the summary: one line a source.  ``ValueError`` when the truth
    names none of the scanned files (a truth table of another catalog).
    """
    from pathlib import Path

    from pipeline.mining.datasets import ShardStore

    out = Path(out)
    truth = pd.read_parquet(truth_path)
    tracks = pd.read_parquet(tracks_file)
    probabilities = oracle_probabilities(truth, tracks, catalog_root, silent_db)
    known = tracks[tracks["track_id"].astype(str).isin(set(probabilities["track_id"]))]
    if len(tracks) and not len(known):
        raise ValueError(f"the truth table {truth_path} names none of the {len(tracks)} files of the catalog "
                         f"{catalog_root} (its files are paths relative to the catalog folder): another catalog's?")
    result = extract_shard(known, probabilities, {s: ORACLE_THRESHOLD for s in SOURCES}, run_rule, out,
                           ORACLE_KEY, ORACLE_KEY, ORACLE_KEY, audio_base=data_root)
    counts = {"tracks": int(len(tracks)), "tracks_with_truth": int(len(known)), "excerpts": int(len(result.index)),
              "rejects": int(len(result.rejects))}
    lines = []
    for source in SOURCES:
        rows = result.index[result.index["source"] == source] if len(result.index) else result.index
        seconds = float(rows["duration_s"].sum()) if len(rows) else 0.0
        counts[f"excerpts_{source}"] = int(len(rows))
        counts[f"hours_{source}"] = round(seconds / 3600, 4)
        lines.append(f"oracle D_i (true V_i <= {silent_db:g} dB, runs of >= {run_rule.min_seconds:g} s): {source}: "
                     f"{len(rows)} excerpts, {seconds / 60:.1f} min")
    write_json_atomic(ShardStore(out).marker_path(ORACLE_KEY),
                      {"stage": "oracle_datasets", "shard_key": ORACLE_KEY, "counts": counts, "files": result.files})
    return StageResult(counts, lines)
