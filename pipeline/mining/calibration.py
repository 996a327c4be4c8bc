"""Per-source probability thresholds ``p_i`` from labelled windows (paper section 4.2).

Inputs are aligned per window of the shared grid: detector probabilities ``P_i`` (0..1) and
relative volumes ``V_i`` in dB (``pipeline.corpora.labels.relative_volumes``), both ``(n, 4)`` in
:data:`pipeline.sources.SOURCES` order.

The rule, per source i, taken literally:

* A window is *truly silent* when ``V_i <= target_db`` (-20 dB).  ``V_i = -inf`` (a digitally
  silent mixture) counts as silent.  NaN in either input is an error.
* Candidate thresholds are the distinct predicted values of ``P_i``.  Selecting with
  ``P_i >= p`` lets all windows of equal probability in together, so the statistics of a
  candidate are those of every window whose ``P_i`` is at least that value.
* A candidate is *admissible* when at least ``min_windows`` windows are selected and at least
  ``target_fraction`` (95 %) of them are truly silent.  The fraction is not monotone in the
  threshold, so ``p_i`` is the minimum over *all* admissible candidates (a lower candidate may
  be admissible while some higher ones are not).
* A source with no admissible candidate (the paper's ``other``, or an empty input) is *not
  calibratable*: ``threshold = NaN`` and ``calibratable = False``.  That is a result, not an error.

``min_windows`` defaults to 100 windows (6.4 s of hops).  With fewer, a 95 % fraction is an
anecdote: 95 % of fewer than 20 windows means all of them, the binomial standard error at 95 %
is still 2.2 points at 100 independent windows, and neighbouring windows overlap ten-fold, so
the effective count is smaller still.  It is a parameter: set it to 1 for the literal rule.

Everything is computed from one descending sort and cumulative sums (O(n log n) per source).

**Rule ``excerpts``** (:func:`calibrate_excerpts`; the rule above is ``windows``, the paper's and
the default).  The windows rule targets windows, but extraction keeps only runs of at least
``min_seconds``, so its excerpts come out far purer than the target and most silent material is
left behind.  Rule ``excerpts`` targets the excerpts themselves: for each candidate threshold,
the held-out tracks are cut exactly as extraction would cut a catalog track
(:meth:`pipeline.mining.extraction.RunRule.select`, the same run rule), and
the candidate is admissible when the excerpts hold at least ``min_windows`` windows and at
least ``target_fraction`` of them have ``V_i <= target_db``.  A run's windows are frames
``a .. b-1``, one 64 ms hop each, so this share is duration-weighted; dips bridged by
``max_gap`` count like any other window.  Among admissible candidates ``p_i`` is the one that
cuts the most held-out audio (seconds of excerpts); ties go to the higher fraction, then the
higher threshold.  Candidates are the values of ``P_i`` at ``candidates`` evenly spaced ranks
of all held-out windows (every value when there are fewer windows); the fraction is not
monotone in the threshold, so every candidate is evaluated, and the chosen one is exact among
the candidates.  Nothing admissible: not calibratable, as above.  Both rules are always
computed and reported (threshold and held-out yield of each); ``rule`` says which one
extraction uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule, run_spans
from pipeline.sources import SOURCES, TRULY_SILENT_DB
from pipeline.storage.outputs import StageResult, write_png_atomic

TARGET_DB = TRULY_SILENT_DB  # dB: a selected window counts as silent when V_i <= this
TARGET_FRACTION = 0.95  # fraction of selected windows that must be silent
MIN_WINDOWS = 100  # windows a threshold must select to be admissible
CURVE_POINTS = 200  # most thresholds per source kept in the curves table
EXCERPT_CANDIDATES = 400  # most thresholds per source evaluated by the excerpts rule
# The excerpts rule's candidate grid, named in the key of its Calibrate outputs so that thresholds
# chosen on another grid (ranks among the distinct values, which float noise shifts) are not reused.
EXCERPT_GRID = "ranks of all windows"
RULES = ("windows", "excerpts")  # the paper's (default), and the excerpt-level rule
_FRACTION_TOLERANCE = 1e-12  # so that 19 silent of 20 reaches 0.95 despite rounding

THRESHOLD_COLUMNS = ("source", "calibratable", "threshold", "n_windows_above", "achieved_fraction",
                     "v95_db", "n_windows_total", "coverage")
CURVE_COLUMNS = ("source", "threshold", "n_above", "fraction_silent", "coverage")
EXCERPT_COLUMNS = ("source", "calibratable", "threshold", "n_excerpts", "n_windows_inside", "achieved_fraction",
                   "v95_db", "extracted_s")
EXCERPT_CURVE_COLUMNS = ("source", "threshold", "n_excerpts", "n_windows_inside", "fraction_silent", "extracted_s")


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds and the curves they were chosen from.

    ``thresholds``: one row per source (:data:`THRESHOLD_COLUMNS`); ``curves``: up to
    ``CURVE_POINTS`` rows per source (:data:`CURVE_COLUMNS`), thresholds ascending, always
    including the chosen one.
    """

    thresholds: pd.DataFrame
    curves: pd.DataFrame
    target_db: float
    target_fraction: float
    min_windows: int

    def threshold_map(self) -> dict[str, float | None]:
        """``{source: p_i}``, with ``None`` for sources that are not calibratable."""
        return thresholds_from_table(self.thresholds)


def thresholds_from_table(table: pd.DataFrame) -> dict[str, float | None]:
    """``{source: p_i or None}`` from a thresholds table (as written by the Calibrate stage)."""
    out: dict[str, float | None] = {}
    for row in table.itertuples(index=False):
        value = float(row.threshold)
        out[str(row.source)] = value if bool(row.calibratable) and np.isfinite(value) else None
    return out


def read_thresholds(path: str | os.PathLike) -> dict[str, float | None]:
    """``{source: p_i or None}`` from a Calibrate stage's ``thresholds.parquet``."""
    return thresholds_from_table(pd.read_parquet(path))


def inverted_cdf_quantile(values: np.ndarray, q: float) -> float:
    """The smallest value ``v`` with at least a fraction ``q`` of ``values`` at or below it.

    No interpolation, so ``-inf`` volumes give ``-inf`` rather than NaN; NaN when empty.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, 100.0 * q, method="inverted_cdf"))


def calibrate(
    probs: np.ndarray,
    volumes: np.ndarray,
    target_db: float = TARGET_DB,
    target_fraction: float = TARGET_FRACTION,
    min_windows: int = MIN_WINDOWS,
    curve_points: int = CURVE_POINTS,
) -> Calibration:
    """Choose ``p_i`` for each source from ``probs`` and ``volumes``, both ``(n, 4)``.

    ``probs``: detector probabilities P_i in 0..1; ``volumes``: V_i in dB (-inf allowed).
    See the module docstring for the rule.  Raises ``ValueError`` on bad shapes or NaN.
    """
    probs = np.asarray(probs, dtype=np.float64)
    volumes = np.asarray(volumes, dtype=np.float64)
    if probs.size == 0 and volumes.size == 0:
        probs = probs.reshape(0, len(SOURCES))
        volumes = volumes.reshape(0, len(SOURCES))
    if probs.ndim != 2 or probs.shape[1] != len(SOURCES) or probs.shape != volumes.shape:
        raise ValueError(f"probs and volumes must both be (n, {len(SOURCES)}); got {probs.shape} and {volumes.shape}")
    if np.isnan(probs).any() or np.isnan(volumes).any():
        raise ValueError("probs and volumes must not contain NaN (a silent mixture is V = -inf)")
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must lie in (0, 1], got {target_fraction}")
    if min_windows < 1 or curve_points < 2:
        raise ValueError(f"min_windows must be >= 1 and curve_points >= 2, got {min_windows} and {curve_points}")

    rows, curves = [], []
    for index, source in enumerate(SOURCES):
        row, curve = _calibrate_source(probs[:, index], volumes[:, index], target_db, target_fraction,
                                       min_windows, curve_points)
        rows.append({"source": source, **row})
        curve.insert(0, "source", source)
        curves.append(curve)
    thresholds, curve_table = _typed_tables(rows, THRESHOLD_COLUMNS, ("n_windows_above", "n_windows_total"),
                                            curves, CURVE_COLUMNS)
    return Calibration(thresholds, curve_table, float(target_db), float(target_fraction), int(min_windows))


def _typed_tables(rows: list[dict], columns, int_columns, curves: list[pd.DataFrame], curve_columns,
                  curve_int_columns=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A rule's per-source rows (``calibratable`` as bool, ``int_columns`` as int64) and its
    per-source curves as one table (``curve_int_columns`` as int64)."""
    thresholds = pd.DataFrame(rows, columns=list(columns))
    thresholds["calibratable"] = thresholds["calibratable"].astype(bool)
    for column in int_columns:
        thresholds[column] = thresholds[column].astype(np.int64)
    curve_table = pd.concat(curves, ignore_index=True)[list(curve_columns)]
    for column in curve_int_columns:
        curve_table[column] = curve_table[column].astype(np.int64)
    return thresholds, curve_table


def _calibrate_source(
    p: np.ndarray, v: np.ndarray, target_db: float, target_fraction: float, min_windows: int, curve_points: int
) -> tuple[dict, pd.DataFrame]:
    """Statistics of every distinct threshold of one source, the chosen one and its curve."""
    n_total = p.size
    order = np.argsort(-p, kind="stable")  # descending probability
    p_sorted, v_sorted = p[order], v[order]
    silent_cum = np.cumsum(v_sorted <= target_db)
    # Last position of each group of equal probabilities: selecting P >= p takes whole groups.
    last = np.flatnonzero(np.append(p_sorted[1:] != p_sorted[:-1], True)) if n_total else np.zeros(0, np.int64)
    candidates = p_sorted[last]  # distinct values, descending
    n_above = last + 1
    silent_above = silent_cum[last]
    fraction = silent_above / np.maximum(n_above, 1)
    n_silent = int(silent_cum[-1]) if n_total else 0
    coverage = silent_above / n_silent if n_silent else np.full(candidates.shape, np.nan)

    admissible = (fraction >= target_fraction - _FRACTION_TOLERANCE) & (n_above >= min_windows)
    chosen = int(np.flatnonzero(admissible)[-1]) if admissible.any() else None  # lowest admissible
    if chosen is None:
        row = {"calibratable": False, "threshold": np.nan, "n_windows_above": 0, "achieved_fraction": np.nan,
               "v95_db": np.nan, "n_windows_total": n_total, "coverage": np.nan}
    else:
        row = {"calibratable": True, "threshold": float(candidates[chosen]), "n_windows_above": int(n_above[chosen]),
               "achieved_fraction": float(fraction[chosen]),
               "v95_db": inverted_cdf_quantile(v_sorted[: n_above[chosen]], 0.95),
               "n_windows_total": n_total, "coverage": float(coverage[chosen])}

    keep = np.arange(candidates.size)
    if candidates.size > curve_points:
        spread = curve_points - (chosen is not None)  # leave room for the chosen point
        keep = np.unique(np.round(np.linspace(0, candidates.size - 1, spread)).astype(np.int64))
        if chosen is not None:
            keep = np.union1d(keep, [chosen])
    keep = keep[::-1]  # ascending threshold
    curve = pd.DataFrame({"threshold": candidates[keep], "n_above": n_above[keep].astype(np.int64),
                          "fraction_silent": fraction[keep], "coverage": coverage[keep]})
    return row, curve


@dataclass(frozen=True)
class ExcerptCalibration:
    """Rule ``excerpts``: ``thresholds`` one row per source (:data:`EXCERPT_COLUMNS`; ``extracted_s``
    is the held-out audio the excerpts at ``p_i`` hold, seconds), ``curves`` every candidate
    (:data:`EXCERPT_CURVE_COLUMNS`, thresholds ascending)."""

    thresholds: pd.DataFrame
    curves: pd.DataFrame


def track_breaks(track_ids: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Bool ``(n,)``: row ``k`` starts a new stretch (another track, or a frame that does not
    follow the previous row's).  Rows must be sorted by track, then frame."""
    track_ids = np.asarray(track_ids)
    frames = np.asarray(frames, dtype=np.int64)
    if track_ids.size == 0:
        return np.zeros(0, dtype=bool)
    return np.append(True, (track_ids[1:] != track_ids[:-1]) | (frames[1:] != frames[:-1] + 1))


def excerpt_statistics(p: np.ndarray, silent: np.ndarray, breaks: np.ndarray, threshold: float,
                       run_rule: RunRule = PAPER_RUN_RULE) -> tuple[int, int, int, float, np.ndarray]:
    """What extraction at ``threshold`` would cut from held-out windows of one source.

    ``p``: ``(n,)`` P_i; ``silent``: ``(n,)`` bool ``V_i <= target``; ``breaks``: ``(n,)`` from
    :func:`track_breaks`.  Returns ``(n_excerpts, n_windows_inside, n_silent_inside,
    extracted_s, inside)`` with ``inside`` the bool ``(n,)`` mask of the excerpts' windows.
    Stretches are cut apart by ``run_rule.max_gap + 1`` False frames, so no run crosses a track.
    """
    starts = np.flatnonzero(breaks)
    pad = run_rule.max_gap + 1
    positions = np.arange(p.size) + pad * np.cumsum(breaks)  # each stretch shifted past its pads
    mask = np.zeros(p.size + pad * (starts.size + 1), dtype=bool)
    mask[positions] = p >= threshold
    runs, _ = run_rule.select(mask, math.inf)
    # A labelled window ends inside its track, so the unclipped span is the excerpt's span.
    spans = run_spans(runs, math.inf)
    cover = np.zeros(mask.size + 1, dtype=np.int64)
    np.add.at(cover, runs[:, 0], 1)
    np.add.at(cover, runs[:, 1], -1)
    inside = np.cumsum(cover[:-1])[positions] > 0
    return (int(runs.shape[0]), int(inside.sum()), int((inside & silent).sum()),
            float((spans[:, 1] - spans[:, 0]).sum()), inside)


def _excerpt_candidates(p: np.ndarray, limit: int) -> np.ndarray:
    """The distinct values of ``p`` at ``limit`` evenly spaced ranks of all ``p.size`` values: a
    rank's value moves only as much as ``p`` does, so float noise that makes two values equal
    (or apart) does not shift the grid, as ranks among the distinct values would."""
    values = np.sort(p)
    if values.size > limit:
        values = values[np.round(np.linspace(0, values.size - 1, limit)).astype(np.int64)]
    return np.unique(values)


def calibrate_excerpts(
    probs: np.ndarray,
    volumes: np.ndarray,
    breaks: np.ndarray,
    target_db: float = TARGET_DB,
    target_fraction: float = TARGET_FRACTION,
    min_windows: int = MIN_WINDOWS,
    run_rule: RunRule = PAPER_RUN_RULE,
    candidates: int = EXCERPT_CANDIDATES,
) -> ExcerptCalibration:
    """Rule ``excerpts`` (module docstring) on ``probs`` and ``volumes`` ``(n, 4)`` whose rows are
    sorted by track and frame, ``breaks`` ``(n,)`` marking where a track (or a gap) starts."""
    probs = np.asarray(probs, dtype=np.float64)
    volumes = np.asarray(volumes, dtype=np.float64)
    breaks = np.asarray(breaks, dtype=bool)
    if probs.size == 0 and volumes.size == 0:
        probs = probs.reshape(0, len(SOURCES))
        volumes = volumes.reshape(0, len(SOURCES))
    if (probs.ndim != 2 or probs.shape[1] != len(SOURCES) or probs.shape != volumes.shape
            or breaks.shape != probs.shape[:1]):
        raise ValueError(f"probs and volumes must both be (n, {len(SOURCES)}) and breaks (n,); got {probs.shape}, "
                         f"{volumes.shape} and {breaks.shape}")
    if np.isnan(probs).any() or np.isnan(volumes).any():
        raise ValueError("probs and volumes must not contain NaN (a silent mixture is V = -inf)")
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must lie in (0, 1], got {target_fraction}")
    if min_windows < 1 or candidates < 2:
        raise ValueError(f"min_windows >= 1 and candidates >= 2 are required, got {min_windows} and {candidates}")
    if breaks.size:
        breaks = breaks.copy()
        breaks[0] = True
    rows, curves = [], []
    for index, source in enumerate(SOURCES):
        p, v = probs[:, index], volumes[:, index]
        silent = v <= target_db
        stats = []
        for threshold in _excerpt_candidates(p, candidates):
            n_excerpts, n_inside, n_silent, seconds, _ = excerpt_statistics(p, silent, breaks, threshold, run_rule)
            stats.append((float(threshold), n_excerpts, n_inside, n_silent / n_inside if n_inside else np.nan, seconds))
        curve = pd.DataFrame(stats, columns=["threshold", "n_excerpts", "n_windows_inside", "fraction_silent",
                                             "extracted_s"])
        admissible = curve[(curve["n_windows_inside"] >= min_windows)
                           & (curve["fraction_silent"] >= target_fraction - _FRACTION_TOLERANCE)]
        if admissible.empty:
            rows.append({"source": source, "calibratable": False, "threshold": np.nan, "n_excerpts": 0,
                         "n_windows_inside": 0, "achieved_fraction": np.nan, "v95_db": np.nan, "extracted_s": 0.0})
        else:
            best = admissible.sort_values(["extracted_s", "fraction_silent", "threshold"], ascending=False,
                                          kind="stable").iloc[0]
            *_, inside = excerpt_statistics(p, silent, breaks, float(best["threshold"]), run_rule)
            rows.append({"source": source, "calibratable": True, "threshold": float(best["threshold"]),
                         "n_excerpts": int(best["n_excerpts"]), "n_windows_inside": int(best["n_windows_inside"]),
                         "achieved_fraction": float(best["fraction_silent"]),
                         "v95_db": inverted_cdf_quantile(v[inside], 0.95), "extracted_s": float(best["extracted_s"])})
        curve.insert(0, "source", source)
        curves.append(curve)
    counted = ("n_excerpts", "n_windows_inside")
    return ExcerptCalibration(*_typed_tables(rows, EXCERPT_COLUMNS, counted, curves, EXCERPT_CURVE_COLUMNS, counted))


def calibration_table(probabilities: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``track_id, frame, p_*, V_*`` of every (track_id, frame == window) in both tables, sorted by
    track and frame (see :func:`calibration_arrays`, which takes its arrays from it)."""
    p_cols = [f"p_{name}" for name in SOURCES]
    v_cols = [f"V_{name}" for name in SOURCES]
    left = probabilities[["track_id", "frame", *p_cols]]
    right = labels[["track_id", "window", *v_cols]].rename(columns={"window": "frame"})
    left = left.astype({"frame": np.int64})
    right = right.astype({"frame": np.int64})
    try:
        joined = left.merge(right, on=["track_id", "frame"], how="inner", validate="one_to_one")
    except pd.errors.MergeError as err:
        raise ValueError(f"a (track_id, frame) is repeated in the probabilities or the labels: {err}") from err
    if joined.empty and len(probabilities) and len(labels):
        raise ValueError("no (track_id, frame) of the probabilities matches a labelled window")
    return joined.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)


def calibration_arrays(probabilities: pd.DataFrame, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Align a probability table with a labels table into ``(probs, volumes)``, both ``(n, 4)``.

    ``probabilities`` follows ``PROBABILITY_SCHEMA`` (track_id, frame, p_*); ``labels`` follows
    ``pipeline.corpora.labels.labels_frame`` (track_id, window, V_*).  Rows are matched on
    ``(track_id, frame == window)`` (inner join: a frame present in only one table, e.g. the
    last one when two sample rates round differently, is dropped).  Raises ``ValueError`` when
    both tables have rows but none match, or when a (track_id, frame) is repeated.
    """
    joined = calibration_table(probabilities, labels)
    return (joined[[f"p_{name}" for name in SOURCES]].to_numpy(np.float64),
            joined[[f"V_{name}" for name in SOURCES]].to_numpy(np.float64))


def plot_curves(calibration: Calibration, path: str | os.PathLike) -> None:
    """Write a PNG: per source, silent fraction and coverage vs threshold, target and p_i marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True, sharey=True).ravel()
    chosen = calibration.thresholds.set_index("source")
    for ax, source in zip(axes, SOURCES):
        curve = calibration.curves[calibration.curves["source"] == source]
        ax.plot(curve["threshold"], curve["fraction_silent"], label=f"fraction V <= {calibration.target_db:g} dB")
        ax.plot(curve["threshold"], curve["coverage"], label="coverage of silent windows")
        ax.axhline(calibration.target_fraction, color="grey", linestyle="--", linewidth=1,
                   label=f"target {calibration.target_fraction:g}")
        row = chosen.loc[source]
        if bool(row["calibratable"]):
            ax.axvline(row["threshold"], color="black", linewidth=1, label=f"p = {row['threshold']:.4f}")
            ax.set_title(f"{source}: p = {row['threshold']:.4f}, {int(row['n_windows_above'])} windows")
        else:
            ax.set_title(f"{source}: not calibratable")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes[2:]:
        ax.set_xlabel("threshold on P(silent)")
    for ax in axes[::2]:
        ax.set_ylabel("fraction")
    write_png_atomic(figure, path)


RULE_COLUMNS = ("rule", "threshold_windows", "threshold_excerpts", "heldout_s_windows", "heldout_s_excerpts",
                "excerpt_fraction_windows", "excerpt_fraction_excerpts")


def rules_table(windows: Calibration, excerpts: ExcerptCalibration, table: pd.DataFrame, rule: str,
                run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """The thresholds table of ``rule``: :data:`THRESHOLD_COLUMNS` then :data:`RULE_COLUMNS`.

    ``threshold`` and ``calibratable`` are the chosen rule's.  With ``windows`` the other
    columns are :func:`calibrate`'s; with ``excerpts`` ``n_windows_above``,
    ``achieved_fraction``, ``v95_db`` and ``coverage`` describe the windows inside the held-out
    excerpts.  Both rules' thresholds, the held-out seconds their excerpts hold
    (``heldout_s_*``, the yield) and the share of those excerpts' windows at or below the target
    (``excerpt_fraction_*``) are always given; ``table`` is :func:`calibration_table`'s.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    breaks = track_breaks(table["track_id"].to_numpy(), table["frame"].to_numpy())
    out = windows.thresholds.copy()
    by_source = excerpts.thresholds.set_index("source")
    for column in RULE_COLUMNS:
        out[column] = rule if column == "rule" else np.nan
    for k, source in enumerate(SOURCES):
        p = table[f"p_{source}"].to_numpy(np.float64)
        v = table[f"V_{source}"].to_numpy(np.float64)
        silent = v <= windows.target_db
        for name, value in (("windows", windows.thresholds.loc[k, "threshold"]),
                            ("excerpts", by_source.loc[source, "threshold"])):
            out.loc[k, f"threshold_{name}"] = value
            if np.isfinite(value):
                _, n_inside, n_silent, seconds, inside = excerpt_statistics(p, silent, breaks, value, run_rule)
                out.loc[k, f"heldout_s_{name}"] = seconds
                out.loc[k, f"excerpt_fraction_{name}"] = n_silent / n_inside if n_inside else np.nan
                if rule == name == "excerpts":
                    out.loc[k, "calibratable"] = True
                    out.loc[k, "threshold"] = value
                    out.loc[k, "n_windows_above"] = n_inside
                    out.loc[k, "achieved_fraction"] = n_silent / n_inside if n_inside else np.nan
                    out.loc[k, "v95_db"] = inverted_cdf_quantile(v[inside], 0.95)
                    out.loc[k, "coverage"] = n_silent / silent.sum() if silent.sum() else np.nan
            elif rule == name == "excerpts":
                out.loc[k, ["calibratable", "threshold", "n_windows_above", "achieved_fraction", "v95_db",
                            "coverage"]] = [False, np.nan, 0, np.nan, np.nan, np.nan]
    out["calibratable"] = out["calibratable"].astype(bool)
    out["n_windows_above"] = out["n_windows_above"].astype(np.int64)
    return out[[*THRESHOLD_COLUMNS, *RULE_COLUMNS]]


def build_calibration(probability_files: list[str | os.PathLike], labels_path: str | os.PathLike,
                      out: str | os.PathLike, target_db: float = TARGET_DB,
                      target_fraction: float = TARGET_FRACTION, min_windows: int = MIN_WINDOWS,
                      rule: str = "windows", run_rule: RunRule = PAPER_RUN_RULE) -> StageResult:
    """The calibration stage: thresholds from held-out probabilities and their labels, by ``rule``.

    Writes ``thresholds.parquet`` / ``.csv`` (:func:`rules_table`), ``curves.parquet`` and
    ``curves.png`` (the windows rule's), ``excerpt_curves.parquet`` (the excerpts rule's
    candidates) into ``out``; counts ``windows``, ``calibrated``, ``rule``; one summary line per source.
    """
    from pathlib import Path

    from pipeline.storage.outputs import write_parquet_atomic

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    out = Path(out)
    probabilities = pd.concat([pd.read_parquet(p) for p in probability_files], ignore_index=True)
    table = calibration_table(probabilities, pd.read_parquet(labels_path))
    probs = table[[f"p_{name}" for name in SOURCES]].to_numpy(np.float64)
    volumes = table[[f"V_{name}" for name in SOURCES]].to_numpy(np.float64)
    result = calibrate(probs, volumes, target_db, target_fraction, min_windows)
    excerpts = calibrate_excerpts(probs, volumes, track_breaks(table["track_id"].to_numpy(), table["frame"].to_numpy()),
                                  target_db, target_fraction, min_windows, run_rule)
    thresholds = rules_table(result, excerpts, table, rule, run_rule)
    write_parquet_atomic(thresholds, out / "thresholds.parquet")
    (out / "thresholds.csv").write_text(thresholds.to_csv(index=False))
    write_parquet_atomic(result.curves, out / "curves.parquet")
    write_parquet_atomic(excerpts.curves, out / "excerpt_curves.parquet")
    plot_curves(result, out / "curves.png")

    def rule_text(r, name):
        value = getattr(r, f"threshold_{name}")
        if not np.isfinite(value):
            return f"{name} rule: not calibratable"
        return (f"{name} rule p = {value:.4f}: held-out excerpts {getattr(r, f'heldout_s_{name}'):.0f} s, "
                f"{getattr(r, f'excerpt_fraction_{name}'):.1%} <= {target_db:g} dB")

    lines = [f"{r.source} [{rule}]: " + ("; ".join(rule_text(r, name) for name in RULES))
             for r in thresholds.itertuples()]
    return StageResult({"windows": len(probs), "calibrated": int(thresholds["calibratable"].sum()), "rule": rule},
                       lines)
