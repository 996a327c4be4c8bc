"""Does a run beat another?  Paired statistics of separator runs scored on the same tracks.

Input: the per-track table of :func:`pipeline.separation.evaluation.build_evaluate`, one row
per (run, seed, track, source) with the per-track value of a metric (``sdr`` or ``si_snr``, dB:
the median over 1 s frames).  A run trained under several seeds is first reduced to one value
per (track, source): the mean over its seeds (:func:`track_values`); the track stays the unit.

- The paper's statistic (:func:`run_statistics`): the median over tracks of the per-track
  values, per source, and ``all`` = the median over every (track, source) value; the mean
  beside it.  Runs with several seeds also get the spread of that statistic across seeds
  (the standard deviation of the per-seed medians, ``seed_sd``).
- Paired differences (:func:`paired_comparison`), ``run - baseline``: per (track, source) where
  both runs have a value (NaN values, e.g. silent references, drop out of the pair only); the
  median difference with a bootstrap 95 % interval, the mean difference and a Wilcoxon
  signed-rank p-value (``scipy.stats.wilcoxon``, two-sided; zero differences dropped,
  ``zero_method="wilcox"``).
- The bootstrap (:func:`bootstrap_interval`) resamples *tracks* with replacement (percentile
  interval, 10 000 resamples, fixed seed): for one source that is the ordinary bootstrap of
  the per-track differences; for ``all`` every source of a drawn track comes along, so the
  interval respects that the sources of one song are not independent.  The ``all`` Wilcoxon
  test pools the (track, source) differences as if independent (it is optimistic; the
  interval is the figure to read).
- :func:`box_plot`: per source, one box of per-track values per run (the paper's appendix B).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.sources import SOURCES

SCOPES = (*SOURCES, "all")
CONFIDENCE = 0.95
RESAMPLES = 10_000


def track_values(per_track: pd.DataFrame, metric: str = "sdr") -> pd.DataFrame:
    """``(track, source)`` x run: each run's per-track ``metric``, averaged over its seeds.

    ``per_track`` has columns ``run, track, source, <metric>`` (and ``seed``: a run's seeds are
    averaged; NaN values are left out of the mean, so a value is NaN only when every seed's is).
    """
    missing = {"run", "track", "source", metric} - set(per_track.columns)
    if missing:
        raise ValueError(f"per-track table lacks columns {sorted(missing)}")
    table = per_track.pivot_table(index=["track", "source"], columns="run", values=metric, aggfunc="mean",
                                  dropna=False, sort=False)
    return table.reindex(columns=list(dict.fromkeys(per_track["run"])))


def _scope(values: pd.DataFrame, scope: str) -> pd.DataFrame:
    return values if scope == "all" else values.xs(scope, level="source", drop_level=False)


def run_statistics(per_track: pd.DataFrame, metric: str = "sdr") -> pd.DataFrame:
    """One row per run; columns ``(statistic, scope)`` with statistic ``median`` (the paper's:
    median over tracks of the per-track value), ``mean`` and ``seed_sd`` (standard deviation
    across seeds of the per-seed median; NaN for a run with one seed), scope each source and ``all``."""
    values = track_values(per_track, metric)
    columns: dict[tuple[str, str], list[float]] = {}
    seeded = per_track.assign(seed=per_track.get("seed", 0))
    for scope in SCOPES:
        part = _scope(values, scope)
        columns[("median", scope)] = [float(part[run].median()) if part[run].notna().any() else math.nan
                                      for run in values.columns]
        columns[("mean", scope)] = [float(part[run].mean()) if part[run].notna().any() else math.nan
                                    for run in values.columns]
        spread = []
        for run in values.columns:
            rows = seeded[seeded["run"] == run]
            rows = rows if scope == "all" else rows[rows["source"] == scope]
            medians = rows.groupby("seed", dropna=False)[metric].median().dropna()
            spread.append(float(medians.std(ddof=1)) if len(medians) > 1 else math.nan)
        columns[("seed_sd", scope)] = spread
    frame = pd.DataFrame(columns, index=pd.Index(values.columns, name="run"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["statistic", "scope"])
    return frame


def _weighted_statistic(values: np.ndarray, weights: np.ndarray, statistic: str) -> np.ndarray:
    """``statistic`` (``median`` or ``mean``) of ``values`` ``(n,)`` repeated ``weights`` ``(B, n)``
    times (non-negative integers), per row: exactly ``np.median`` / ``np.mean`` of the repeated list."""
    if statistic == "mean":
        return (weights * values).sum(axis=1) / weights.sum(axis=1)
    order = np.argsort(values, kind="stable")
    sorted_values, cumulative = values[order], np.cumsum(weights[:, order], axis=1)
    total = cumulative[:, -1]
    low = (cumulative > ((total - 1) // 2)[:, None]).argmax(axis=1)
    high = (cumulative > (total // 2)[:, None]).argmax(axis=1)
    return (sorted_values[low] + sorted_values[high]) / 2


def bootstrap_interval(values: Sequence[float], clusters: Sequence | None = None, statistic: str = "median",
                       confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ``statistic`` (``median`` or ``mean``) of ``values``.

    ``clusters`` (one label per value, e.g. the track): whole clusters are resampled with
    replacement, as many as there are; ``None``: every value is its own cluster.  NaN values
    are dropped first; no value gives ``(nan, nan)``.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("need 0 < confidence < 1 and resamples >= 1")
    values = np.asarray(values, dtype=np.float64)
    clusters = np.arange(len(values)) if clusters is None else np.asarray(clusters)
    if clusters.shape != values.shape:
        raise ValueError(f"{len(clusters)} cluster labels for {len(values)} values")
    keep = ~np.isnan(values)
    values, clusters = values[keep], clusters[keep]
    if not values.size:
        return math.nan, math.nan
    _, inverse = np.unique(clusters, return_inverse=True)
    k = int(inverse.max()) + 1
    draws = np.random.default_rng(seed).integers(k, size=(resamples, k))
    counts = np.zeros((resamples, k), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    boot = _weighted_statistic(values, counts[:, inverse], statistic)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (NaN dropped, zeros dropped:
    ``zero_method="wilcox"``); 1.0 when every difference is 0, NaN without any difference."""
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[~np.isnan(differences)]
    if not differences.size:
        return math.nan
    if not np.any(differences != 0):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(per_track: pd.DataFrame, run: str, baseline: str, metric: str = "sdr",
                      confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """``run - baseline`` on the tracks both were scored on, one row per scope (each source, ``all``):
    ``pairs`` (paired (track, source) values), ``tracks``, ``median_diff`` with ``ci_low`` /
    ``ci_high`` (bootstrap over tracks), ``mean_diff``, ``wilcoxon_p``, and each run's paper
    statistic on those pairs (``median_run``, ``median_baseline``); values in dB."""
    values = track_values(per_track, metric)
    for name in (run, baseline):
        if name not in values.columns:
            raise ValueError(f"no run {name!r} in the per-track table; runs: {list(values.columns)}")
    rows = []
    for scope in SCOPES:
        part = _scope(values, scope)[[run, baseline]].dropna()
        diff = (part[run] - part[baseline]).to_numpy()
        tracks = part.index.get_level_values("track").to_numpy()
        low, high = bootstrap_interval(diff, tracks, "median", confidence, resamples, seed)
        rows.append({"scope": scope, "pairs": int(diff.size), "tracks": len(set(tracks)),
                     "median_diff": float(np.median(diff)) if diff.size else math.nan,
                     "ci_low": low, "ci_high": high,
                     "mean_diff": float(np.mean(diff)) if diff.size else math.nan,
                     "wilcoxon_p": wilcoxon_p(diff),
                     "median_run": float(part[run].median()) if diff.size else math.nan,
                     "median_baseline": float(part[baseline].median()) if diff.size else math.nan})
    return pd.DataFrame(rows).set_index("scope")


def default_contrasts(runs: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair ``(later, earlier)`` of ``runs`` in their order: ``run - baseline``."""
    return [(b, a) for a, b in combinations(list(runs), 2)]


def contrast_lines(name: str, table: pd.DataFrame, digits: int = 2) -> list[str]:
    """Lines for people: ``name`` and, per scope, median difference [interval], mean, p, pairs."""
    lines = [f"{name} (dB; median [95 % bootstrap CI over tracks], mean, Wilcoxon p, pairs):"]
    for scope, row in table.iterrows():
        lines.append(f"  {scope:<7} {row['median_diff']:+.{digits}f} [{row['ci_low']:+.{digits}f}, "
                     f"{row['ci_high']:+.{digits}f}]  mean {row['mean_diff']:+.{digits}f}  "
                     f"p {row['wilcoxon_p']:.3g}  n {int(row['pairs'])}")
    return lines


def box_plot(per_track: pd.DataFrame, path: str | os.PathLike, metric: str = "sdr",
             label: str = "SDR (dB)") -> None:
    """A PNG at ``path``: one panel per source, one box per run of its per-track ``metric``
    (seed-averaged), median line and mean marker, outliers drawn (the paper's appendix B)."""
    from matplotlib.figure import Figure

    from pipeline.storage.outputs import write_png_atomic

    values = track_values(per_track, metric)
    runs = list(values.columns)
    fig = Figure(figsize=(3.2 * len(SOURCES), 0.35 * max(len(max(runs, key=len)), 8) + 2.5))
    axes = fig.subplots(1, len(SOURCES), sharey=True)
    for ax, source in zip(axes, SOURCES):
        part = values.xs(source, level="source")
        data = [part[run].dropna().to_numpy() for run in runs]
        ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showmeans=True)
        ax.set_xticks(range(1, len(runs) + 1), runs, rotation=60, ha="right", fontsize=8)
        ax.set_title(source)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel(label)
    fig.tight_layout()
    write_png_atomic(fig, path)
