"""Does a run beat another?  Paired statistics of separator runs scored on the same tracks.

Input: the per-track table of :func:`pipeline.separation.evaluation.build_evaluate`, one row
per (run, seed, track, source) with the per-track value of a metric (``sdr`` or ``si_snr``, dB:
the median over 1 s frames).  A run trained under several seeds has one value per seed; the
track stays the unit of the tests, the seed is the unit of training noise.

- The paper's statistic (:func:`run_statistics`): the median over tracks of the per-track
  values (each run's seeds averaged per track, :func:`track_values`), per source, and ``all``
  = the median over every (track, source) value; the mean beside it.  Runs with several seeds
  also get the spread of that statistic across seeds (``seed_sd``).
- Paired differences (:func:`paired_comparison`), ``run - baseline``, on the tracks both were
  scored on: per track, the difference of the two runs' seed means (for one source), or the
  mean of those differences over the sources both runs have there (``all``; a silent
  reference, NaN, drops out of that track's mean only).  Reported: the median over tracks of
  these per-track differences with its 95 % interval (below), their mean, and a Wilcoxon
  signed-rank p-value on them (``scipy.stats.wilcoxon``, two-sided, zero differences dropped):
  one value per track, for ``all`` too, since the sources of one song are not independent.
- The interval (:func:`two_level_interval`, :data:`INTERVAL_METHOD`) holds both sources of
  noise: which tracks were drawn, and which training runs (seeds) each row happened to get.
  A seed shifts a run's values on every track at once, so resampling tracks alone cannot see
  it (two runs of equal skill whose seeds differ by 0.17 dB got a "significant" difference
  in most trials).  Its standard error comes from a two-level bootstrap: the variance of the
  statistic when the tracks are resampled with replacement (the runs' seed means fixed; times
  ``T / (T - 1)``, the bootstrap's divisor-T bias), plus, for each run with ``S > 1`` seeds, its
  variance when that run's seeds are resampled with replacement (the tracks fixed; each
  seed's deviation from the per-track seed mean scaled by ``sqrt(S / (S - 1))``, so that the
  resampled mean has the unbiased variance).  The interval is ``median +- t * se`` with
  Student's t at the Welch-Satterthwaite degrees of freedom of those variance components
  (``T - 1`` for tracks, ``S - 1`` per run): with 3 seeds a run's training noise is known from
  2 degrees of freedom, and a normal or percentile interval would be far too short.  On
  simulated runs of equal skill (8 tracks, 3 seeds, seed offsets of 0.17-0.3 dB) it holds 0
  in 94-98 % of trials (tests/test_comparison.py); with 1 seed per run the training noise
  cannot be estimated, and :func:`too_small_warning` says so.
- :func:`box_plot`: per source, one box of per-track values per run (the paper's appendix B).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

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


def _draw_counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """``(resamples, n)`` counts of ``n`` draws with replacement among ``n`` items, per resample."""
    counts = np.zeros((resamples, n), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], rng.integers(n, size=(resamples, n))), 1)
    return counts


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` along ``axis``, NaN where every value is NaN, without its warning."""
    present = ~np.isnan(values)
    count = present.sum(axis=axis)
    total = np.where(present, values, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def _seed_means(values: np.ndarray) -> np.ndarray:
    """Per-track mean over seeds of ``values`` ``(S, T)``, NaN seeds left out: ``(T,)``."""
    return _nanmean(values, axis=0)


def _resampled_seed_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, T)`` per-track seed means of ``values`` ``(S, T)`` (``S > 1``) when its seeds are
    drawn with replacement; each seed's deviation from the per-track mean is scaled by
    ``sqrt(S / (S - 1))`` first (a missing value, NaN, counts as the mean)."""
    seeds = values.shape[0]
    mean = _seed_means(values)
    scaled = mean + math.sqrt(seeds / (seeds - 1)) * np.where(np.isnan(values), 0.0, values - mean)
    return _draw_counts(rng, resamples, seeds) @ scaled / seeds


@dataclass(frozen=True)
class Interval:
    """A two-level interval of the median over tracks of paired differences (dB):
    ``low``/``high``, its standard error ``se``, degrees of freedom ``df`` and the variance
    components ``track_var`` and ``seed_var`` (both runs' seeds together)."""

    low: float
    high: float
    se: float
    df: float
    track_var: float
    seed_var: float


def two_level_interval(run: np.ndarray, baseline: np.ndarray, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The interval of ``median_t(mean_s run[s, t] - mean_s baseline[s, t])`` (module docstring).

    ``run`` ``(S_run, T)`` and ``baseline`` ``(S_baseline, T)``: per seed and track, the values
    of the same ``T`` tracks (NaN: that seed has no value there; every track needs one per
    run).  A run with one seed adds no seed variance (its training noise is unknown).  Fewer
    than 2 tracks give a NaN interval.
    """
    if not 0 < confidence < 1 or resamples < 2:
        raise ValueError("need 0 < confidence < 1 and resamples >= 2")
    run, baseline = np.atleast_2d(np.asarray(run, np.float64)), np.atleast_2d(np.asarray(baseline, np.float64))
    if run.shape[1] != baseline.shape[1]:
        raise ValueError(f"run and baseline hold {run.shape[1]} and {baseline.shape[1]} tracks")
    differences = _seed_means(run) - _seed_means(baseline)
    if np.isnan(differences).any():
        raise ValueError("every track needs a value of each run (drop the tracks without one first)")
    tracks = differences.size
    point = float(np.median(differences)) if tracks else math.nan
    if tracks < 2:
        return Interval(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = _weighted_statistic(differences, _draw_counts(rng, resamples, tracks), "median")
    components = [(float(np.var(boot, ddof=1)) * tracks / (tracks - 1), tracks - 1)]
    for values, sign in ((run, 1.0), (baseline, -1.0)):
        if values.shape[0] > 1:
            other = _seed_means(baseline if sign > 0 else run)
            shifted = sign * (_resampled_seed_means(values, resamples, rng) - other)
            components.append((float(np.var(np.median(shifted, axis=1), ddof=1)), values.shape[0] - 1))
    variance = sum(v for v, _ in components)
    if variance <= 0:
        return Interval(point, point, 0.0, float(tracks - 1), 0.0, 0.0)
    df = variance ** 2 / sum(v * v / d for v, d in components if v > 0)
    se = math.sqrt(variance)
    from scipy import stats  # here: scipy.stats costs every stage's start 0.4 s

    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Interval(point - half, point + half, se, float(df), components[0][0],
                    float(sum(v for v, _ in components[1:])))


def interval_method(confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> str:
    """The one line that says how :func:`paired_comparison`'s intervals were made."""
    return (f"interval: {confidence:.0%} two-level bootstrap t (median over tracks +- t x se; se from "
            f"{resamples:,} resamples of the tracks and of each run's seeds, Welch-Satterthwaite df), "
            "so training noise between seeds is in it; p: Wilcoxon signed-rank on the per-track differences")


INTERVAL_METHOD = interval_method()
INTERVAL_NAME = "two-level bootstrap t"  # in Evaluate's key: another method, another output
MIN_TRACKS = 8  # fewer test tracks than this: no conclusion is safe
MIN_SEEDS = 3  # fewer seeds per trained run than this: training noise is barely known


def too_small_warning(tracks: int, seeds: int) -> str | None:
    """The warning for a comparison on ``tracks`` test tracks with ``seeds`` seeds per trained run
    (the fewest of the runs compared), or None when both reach :data:`MIN_TRACKS` / :data:`MIN_SEEDS`."""
    problems = []
    if tracks < MIN_TRACKS:
        problems.append(f"{tracks} test track{'s' * (tracks != 1)} (< {MIN_TRACKS})")
    if seeds < MIN_SEEDS:
        problems.append(f"{seeds} seed{'s' * (seeds != 1)} per run (< {MIN_SEEDS}"
                        + (": the training noise is not in the interval)" if seeds == 1 else ")"))
    if not problems:
        return None
    return "warning: too small to conclude anything: " + " and ".join(problems)


def _run_array(per_track: pd.DataFrame, run: str, metric: str, tracks: list) -> np.ndarray:
    """``(S, T, sources)`` values of ``run``: per seed (sorted), track (``tracks``' order) and source."""
    rows = per_track[per_track["run"] == run]
    seeds = rows["seed"] if "seed" in rows else pd.Series(0.0, index=rows.index)
    rows = rows.assign(seed=seeds.fillna(-1.0))
    cube = rows.pivot_table(index=["seed", "track"], columns="source", values=metric, aggfunc="mean", dropna=False)
    cube = cube.reindex(columns=list(SOURCES))
    order = sorted(set(rows["seed"]))
    full = pd.MultiIndex.from_product([order, tracks], names=["seed", "track"])
    return cube.reindex(full).to_numpy(np.float64).reshape(len(order), len(tracks), len(SOURCES))


def _scope_arrays(run: np.ndarray, baseline: np.ndarray, scope: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(S, T')`` per-seed per-track values of each run for ``scope`` on the tracks where both have
    one, and the kept tracks' mask ``(T,)``.  ``all``: per track, the mean over the sources both
    runs' seed means have."""
    both = ~np.isnan(_nanmean(run, axis=0)) & ~np.isnan(_nanmean(baseline, axis=0))  # (T, sources)
    if scope == "all":
        def reduce(values):
            return _nanmean(np.where(both[None], values, np.nan), axis=2)
        keep = both.any(axis=1)
        return reduce(run)[:, keep], reduce(baseline)[:, keep], keep
    j = SOURCES.index(scope)
    keep = both[:, j]
    return run[:, keep, j], baseline[:, keep, j], keep


def paired_comparison(per_track: pd.DataFrame, run: str, baseline: str, metric: str = "sdr",
                      confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """``run - baseline`` on the tracks both were scored on, one row per scope (each source, ``all``):
    ``tracks`` (paired tracks), ``pairs`` (paired (track, source) values), ``seeds_run`` /
    ``seeds_baseline``, ``median_diff`` (median over tracks of the per-track differences) with
    ``ci_low`` / ``ci_high`` (:func:`two_level_interval`) and its ``df``, ``mean_diff``,
    ``wilcoxon_p`` (on the per-track differences), and each run's paper statistic on the paired
    values (``median_run``, ``median_baseline``); values in dB."""
    names = list(dict.fromkeys(per_track["run"]))
    for name in (run, baseline):
        if name not in names:
            raise ValueError(f"no run {name!r} in the per-track table; runs: {names}")
    missing = {"run", "track", "source", metric} - set(per_track.columns)
    if missing:
        raise ValueError(f"per-track table lacks columns {sorted(missing)}")
    tracks = list(dict.fromkeys(per_track["track"]))
    cube_run, cube_base = (_run_array(per_track, name, metric, tracks) for name in (run, baseline))
    means_run, means_base = _nanmean(cube_run, axis=0), _nanmean(cube_base, axis=0)  # (T, sources)
    rows = []
    for scope in SCOPES:
        a, b, keep = _scope_arrays(cube_run, cube_base, scope)
        differences = _seed_means(a) - _seed_means(b)
        interval = two_level_interval(a, b, confidence, resamples, seed)
        columns = slice(None) if scope == "all" else [SOURCES.index(scope)]
        paired = ~np.isnan(means_run[:, columns]) & ~np.isnan(means_base[:, columns])
        value_run, value_base = means_run[:, columns][paired], means_base[:, columns][paired]
        rows.append({"scope": scope, "tracks": int(keep.sum()), "pairs": int(paired.sum()),
                     "seeds_run": cube_run.shape[0], "seeds_baseline": cube_base.shape[0],
                     "median_diff": float(np.median(differences)) if differences.size else math.nan,
                     "ci_low": interval.low, "ci_high": interval.high, "df": interval.df,
                     "mean_diff": float(np.mean(differences)) if differences.size else math.nan,
                     "wilcoxon_p": wilcoxon_p(differences),
                     "median_run": float(np.median(value_run)) if value_run.size else math.nan,
                     "median_baseline": float(np.median(value_base)) if value_base.size else math.nan})
    return pd.DataFrame(rows).set_index("scope")


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (NaN dropped, zeros dropped:
    ``zero_method="wilcox"``); 1.0 when every difference is 0, NaN without any difference."""
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[~np.isnan(differences)]
    if not differences.size:
        return math.nan
    if not np.any(differences != 0):
        return 1.0
    from scipy import stats

    return float(stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def default_contrasts(runs: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair ``(later, earlier)`` of ``runs`` in their order: ``run - baseline``."""
    return [(b, a) for a, b in combinations(list(runs), 2)]


def contrast_lines(name: str, table: pd.DataFrame, digits: int = 2) -> list[str]:
    """Lines for people: ``name`` and, per scope, median difference over tracks [interval], mean,
    Wilcoxon p, tracks and seeds (run / baseline)."""
    first = table.iloc[0] if len(table) else None
    seeds = f", seeds {int(first['seeds_run'])} / {int(first['seeds_baseline'])}" if first is not None else ""
    lines = [f"{name} (dB; median over tracks [95 % interval], mean, Wilcoxon p, tracks{seeds}):"]
    for scope, row in table.iterrows():
        interval = ("[no interval]" if math.isnan(row["ci_low"]) else
                    f"[{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]")
        lines.append(f"  {scope:<7} {row['median_diff']:+.{digits}f} {interval}  mean {row['mean_diff']:+.{digits}f}  "
                     f"p {row['wilcoxon_p']:.3g}  tracks {int(row['tracks'])}")
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
