"""Per-source probability thresholds ``p_i`` from labelled windows (paper section 4.2, SPEC.md).

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.sources import SOURCES
from pipeline.storage.outputs import atomic_path

TARGET_DB = -20.0  # dB: a selected window counts as silent when V_i <= this
TARGET_FRACTION = 0.95  # fraction of selected windows that must be silent
MIN_WINDOWS = 100  # windows a threshold must select to be admissible
CURVE_POINTS = 200  # most thresholds per source kept in the curves table
_FRACTION_TOLERANCE = 1e-12  # so that 19 silent of 20 reaches 0.95 despite rounding

THRESHOLD_COLUMNS = ("source", "calibratable", "threshold", "n_windows_above", "achieved_fraction",
                     "v95_db", "n_windows_total", "coverage")
CURVE_COLUMNS = ("source", "threshold", "n_above", "fraction_silent", "coverage")


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
    thresholds = pd.DataFrame(rows, columns=list(THRESHOLD_COLUMNS))
    thresholds["calibratable"] = thresholds["calibratable"].astype(bool)
    for column in ("n_windows_above", "n_windows_total"):
        thresholds[column] = thresholds[column].astype(np.int64)
    curve_table = pd.concat(curves, ignore_index=True)[list(CURVE_COLUMNS)]
    return Calibration(thresholds, curve_table, float(target_db), float(target_fraction), int(min_windows))


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


def calibration_arrays(probabilities: pd.DataFrame, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Align a probability table with a labels table into ``(probs, volumes)``, both ``(n, 4)``.

    ``probabilities`` follows ``PROBABILITY_SCHEMA`` (track_id, frame, p_*); ``labels`` follows
    ``pipeline.corpora.labels.labels_frame`` (track_id, window, V_*).  Rows are matched on
    ``(track_id, frame == window)`` (inner join: a frame present in only one table, e.g. the
    last one when two sample rates round differently, is dropped).  Raises ``ValueError`` when
    both tables have rows but none match, or when a (track_id, frame) is repeated.
    """
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
    joined = joined.sort_values(["track_id", "frame"], kind="stable")
    return joined[p_cols].to_numpy(np.float64), joined[v_cols].to_numpy(np.float64)


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
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def calibrate_stage(probability_files: list[str | os.PathLike], labels_path: str | os.PathLike,
                    out: str | os.PathLike, target_db: float = TARGET_DB,
                    target_fraction: float = TARGET_FRACTION, min_windows: int = MIN_WINDOWS) -> dict:
    """The Calibrate stage: thresholds from held-out probabilities and their labels.

    Writes ``thresholds.parquet``, ``thresholds.csv``, ``curves.parquet`` and ``curves.png``
    into ``out``; returns counts and one summary line per source for the manifest.
    """
    from pathlib import Path

    from pipeline.storage.outputs import write_parquet_atomic

    out = Path(out)
    probabilities = pd.concat([pd.read_parquet(p) for p in probability_files], ignore_index=True)
    probs, volumes = calibration_arrays(probabilities, pd.read_parquet(labels_path))
    result = calibrate(probs, volumes, target_db, target_fraction, min_windows)
    write_parquet_atomic(result.thresholds, out / "thresholds.parquet")
    (out / "thresholds.csv").write_text(result.thresholds.to_csv(index=False))
    write_parquet_atomic(result.curves, out / "curves.parquet")
    plot_curves(result, out / "curves.png")
    lines = [f"{r.source}: p = {r.threshold:.4f}, {r.n_windows_above} windows, {r.achieved_fraction:.1%} <= "
             f"{target_db:g} dB, V95 {r.v95_db:.1f} dB" if r.calibratable else f"{r.source}: not calibratable"
             for r in result.thresholds.itertuples()]
    return {"windows": len(probs), "calibrated": int(result.thresholds["calibratable"].sum()), "summary": lines}
