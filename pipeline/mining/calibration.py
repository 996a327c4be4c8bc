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
the candidates.  Nothing admissible: not calibratable, as above.

**Rules ``bound`` and ``catalog``** (:mod:`pipeline.mining.purity`: song-level statistics of
the same candidates).  Rule ``bound`` is rule ``excerpts`` with the held-out share replaced by
its lower confidence bound over song-level bootstrap resamples (``confidence``, ``resamples``):
false positives come in whole songs, so a share reached thanks to a few songs does not pass.
Rule ``catalog`` estimates the purity of the excerpts each candidate would cut from the
catalog itself (:class:`CatalogWindows`: the catalog's detector probabilities), through the
isotonic map of a window's entry threshold to silence fitted on the held-out songs, and takes
the candidate whose lower bound reaches the target and that cuts the most catalog audio.

The held-out rules (``windows``, ``excerpts``, ``bound``) are always computed and reported,
rule ``catalog`` when the catalog's windows are given; ``rule`` says which one extraction uses.
Every reported threshold comes with its held-out yield, share and song-level bound
(:func:`rules_table`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule
from pipeline.mining.purity import (
    CONFIDENCE,
    RESAMPLES,
    SongExcerpts,
    bootstrap_bound,
    bootstrap_weights,
    estimate_catalog,
    excerpt_candidates,
    song_excerpts,
    song_numbers,
    track_breaks,
)
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
RULES = ("windows", "excerpts", "bound", "catalog")  # the paper's (the default) and three excerpt-level rules
EXCERPT_RULES = ("excerpts", "bound", "catalog")
CATALOG_RULES = ("catalog",)  # rules that read the catalog's detector probabilities
DRIVERS = 3  # songs named as driving a bound
_FRACTION_TOLERANCE = 1e-12  # so that 19 silent of 20 reaches 0.95 despite rounding

THRESHOLD_COLUMNS = ("source", "calibratable", "threshold", "n_windows_above", "achieved_fraction",
                     "v95_db", "n_windows_total", "coverage")
CURVE_COLUMNS = ("source", "threshold", "n_above", "fraction_silent", "coverage")
EXCERPT_COLUMNS = ("source", "calibratable", "threshold", "n_excerpts", "n_windows_inside", "achieved_fraction",
                   "v95_db", "extracted_s", "estimate", "bound", "songs", "drivers", "blockers", "catalog_s",
                   "crossfit_fraction")
EXCERPT_CURVE_COLUMNS = ("source", "threshold", "n_excerpts", "n_windows_inside", "fraction_silent", "extracted_s",
                         "songs", "bound", "catalog_windows", "catalog_s", "catalog_estimate", "catalog_bound",
                         "crossfit_fraction")


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
class CatalogWindows:
    """The catalog's windows for rule ``catalog``: ``probs`` ``(n, 4)`` detector probabilities,
    ``breaks`` ``(n,)`` (:func:`track_breaks`) and ``track_ids`` ``(n,)``, rows sorted by track
    and frame (:func:`catalog_windows`)."""

    probs: np.ndarray
    breaks: np.ndarray
    track_ids: np.ndarray


@dataclass(frozen=True)
class ExcerptCalibration:
    """The excerpt rules, one table of one row per source each (:data:`EXCERPT_COLUMNS`):
    ``thresholds`` rule ``excerpts``, ``bound`` rule ``bound``, ``catalog`` rule ``catalog``
    (None without catalog windows); ``curves`` every candidate (:data:`EXCERPT_CURVE_COLUMNS`,
    thresholds ascending).  ``extracted_s`` is the held-out audio the excerpts at ``p_i``
    hold, seconds; ``estimate`` the purity the rule's choice rests on and ``bound`` its lower
    confidence bound at ``confidence``."""

    thresholds: pd.DataFrame
    curves: pd.DataFrame
    bound: pd.DataFrame | None = None
    catalog: pd.DataFrame | None = None
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = 0

    def rule(self, name: str) -> pd.DataFrame | None:
        """The rows of rule ``name`` (``excerpts``, ``bound`` or ``catalog``)."""
        return {"excerpts": self.thresholds, "bound": self.bound, "catalog": self.catalog}[name]


def calibrate_excerpts(
    probs: np.ndarray,
    volumes: np.ndarray,
    breaks: np.ndarray,
    target_db: float = TARGET_DB,
    target_fraction: float = TARGET_FRACTION,
    min_windows: int = MIN_WINDOWS,
    run_rule: RunRule = PAPER_RUN_RULE,
    candidates: int = EXCERPT_CANDIDATES,
    songs: np.ndarray | None = None,
    song_names: list[str] | None = None,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
    catalog: CatalogWindows | None = None,
) -> ExcerptCalibration:
    """Rules ``excerpts``, ``bound`` and (with ``catalog``) ``catalog`` (module docstring) on
    ``probs`` and ``volumes`` ``(n, 4)`` whose rows are sorted by track and frame, ``breaks``
    ``(n,)`` marking where a track (or a gap) starts.  ``songs`` ``(n,)``: the track id of each
    row (the unit the bounds resample; default: each stretch between breaks), ``song_names``
    the name shown for each song in order of appearance (default: the ids)."""
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
    if min_windows < 1 or candidates < 2 or resamples < 1:
        raise ValueError(f"min_windows >= 1, candidates >= 2 and resamples >= 1 are required, got "
                         f"{min_windows}, {candidates} and {resamples}")
    if breaks.size:
        breaks = breaks.copy()
        breaks[0] = True
    if songs is None:
        songs = np.cumsum(breaks).astype(str)
    song, ids = song_numbers(songs)
    names = list(song_names) if song_names is not None else ids
    if len(names) != len(ids):
        raise ValueError(f"song_names must name each of the {len(ids)} songs, got {len(names)}")
    weights = bootstrap_weights(max(1, len(ids)), resamples, seed)[:, :len(ids)]
    if catalog is not None:
        catalog_song, _ = song_numbers(catalog.track_ids)
        catalog_breaks = np.asarray(catalog.breaks, dtype=bool)
    rules = {name: [] for name in EXCERPT_RULES}
    curves = []
    for index, source in enumerate(SOURCES):
        p, v = probs[:, index], volumes[:, index]
        grid = excerpt_candidates(p, candidates)
        labelled = song_excerpts(p, v <= target_db, breaks, song, len(ids), grid, run_rule)
        inside, silent = labelled.inside.sum(axis=0), labelled.silent.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(inside > 0, silent / np.maximum(inside, 1), np.nan)
        curve = pd.DataFrame({"threshold": grid, "n_excerpts": labelled.excerpts.sum(axis=0),
                              "n_windows_inside": inside, "fraction_silent": fraction,
                              "extracted_s": labelled.seconds().sum(axis=0),
                              "songs": (labelled.inside > 0).sum(axis=0),
                              "bound": bootstrap_bound(labelled.inside, labelled.silent, weights, confidence)
                              if len(ids) else np.full(grid.size, np.nan)})
        for column in ("catalog_windows", "catalog_s", "catalog_estimate", "catalog_bound", "crossfit_fraction"):
            curve[column] = np.nan
        if catalog is not None and len(ids):
            on_catalog = song_excerpts(catalog.probs[:, index], None, catalog_breaks, catalog_song,
                                       int(catalog_song.max()) + 1 if catalog_song.size else 0, grid, run_rule)
            estimate = estimate_catalog(labelled, on_catalog, weights, names, confidence)
            curve["catalog_windows"] = on_catalog.inside.sum(axis=0)
            curve["catalog_s"] = on_catalog.seconds().sum(axis=0)
            curve["catalog_estimate"] = estimate.estimate
            curve["catalog_bound"] = estimate.bound
            curve["crossfit_fraction"] = estimate.crossfit
        enough = curve["n_windows_inside"] >= min_windows
        reached = curve[["fraction_silent", "bound", "catalog_bound"]] >= target_fraction - _FRACTION_TOLERANCE
        choices = {"excerpts": (enough & reached["fraction_silent"], ["extracted_s", "fraction_silent"]),
                   "bound": (enough & reached["bound"], ["extracted_s", "bound"])}
        if catalog is not None:
            choices["catalog"] = (enough & (curve["catalog_windows"] > 0) & reached["catalog_bound"],
                                  ["catalog_s", "catalog_bound"])
        for rule, (admissible, order) in choices.items():
            rules[rule].append(_excerpt_rule_row(source, rule, curve, admissible, order, labelled, v, names))
        curve.insert(0, "source", source)
        curves.append(curve)
    counted = ("n_excerpts", "n_windows_inside", "songs")
    tables = {rule: _typed_tables(rows, EXCERPT_COLUMNS, counted, curves, EXCERPT_CURVE_COLUMNS, counted)
              for rule, rows in rules.items() if rows}
    curve_table = tables["excerpts"][1]
    return ExcerptCalibration(tables["excerpts"][0], curve_table, tables["bound"][0],
                              tables["catalog"][0] if "catalog" in tables else None, float(confidence),
                              int(resamples), int(seed))


def _song_list(names: list[str], impure: np.ndarray, inside: np.ndarray, most: int = DRIVERS) -> str:
    """``name impure/inside`` of the ``most`` songs with the most impure windows (none: empty)."""
    order = [k for k in np.argsort(-impure, kind="stable")[:most] if impure[k] > 0]
    return ", ".join(f"{names[k]} {int(impure[k])}/{int(inside[k])}" for k in order)


def _excerpt_rule_row(source: str, rule: str, curve: pd.DataFrame, admissible: pd.Series, order: list[str],
                      labelled: SongExcerpts, volumes: np.ndarray, names: list[str]) -> dict:
    """One source's row of an excerpt rule: the admissible candidate first by ``order`` then by
    threshold (all descending), or not calibratable."""
    if not admissible.any():
        return {"source": source, "calibratable": False, "threshold": np.nan, "n_excerpts": 0, "n_windows_inside": 0,
                "achieved_fraction": np.nan, "v95_db": np.nan, "extracted_s": 0.0, "estimate": np.nan,
                "bound": np.nan, "songs": 0, "drivers": "", "blockers": "", "catalog_s": np.nan,
                "crossfit_fraction": np.nan}
    best = curve[admissible].sort_values([*order, "threshold"], ascending=False, kind="stable").index[0]
    row = curve.loc[best]
    impure = labelled.inside - labelled.silent
    below = best - 1  # the next lower candidate: what keeps the threshold from going lower
    estimate, bound = ((row["catalog_estimate"], row["catalog_bound"]) if rule == "catalog"
                       else (row["fraction_silent"], row["bound"]))
    return {"source": source, "calibratable": True, "threshold": float(row["threshold"]),
            "n_excerpts": int(row["n_excerpts"]), "n_windows_inside": int(row["n_windows_inside"]),
            "achieved_fraction": float(row["fraction_silent"]),
            "v95_db": inverted_cdf_quantile(volumes[labelled.entry >= best], 0.95),
            "extracted_s": float(row["extracted_s"]), "estimate": float(estimate), "bound": float(bound),
            "songs": int(row["songs"]), "drivers": _song_list(names, impure[:, best], labelled.inside[:, best]),
            "blockers": _song_list(names, impure[:, below], labelled.inside[:, below]) if below >= 0 else "",
            "catalog_s": float(row["catalog_s"]), "crossfit_fraction": float(row["crossfit_fraction"])}


def calibration_table(probabilities: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``track_id, frame, [name,] p_*, V_*`` of every (track_id, frame == window) in both tables
    (``name`` when the labels have it), sorted by track and frame (see :func:`calibration_arrays`,
    which takes its arrays from it)."""
    p_cols = [f"p_{name}" for name in SOURCES]
    v_cols = [f"V_{name}" for name in SOURCES]
    left = probabilities[["track_id", "frame", *p_cols]]
    names = ["name"] if "name" in labels.columns else []
    right = labels[["track_id", "window", *names, *v_cols]].rename(columns={"window": "frame"})
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


RULE_COLUMNS = ("rule", "confidence", "estimate", "bound", "songs", "drivers", "blockers",
                *(f"{what}_{rule}" for rule in RULES
                  for what in ("threshold", "heldout_s", "excerpt_fraction", "bound")))


def rules_table(windows: Calibration, excerpts: ExcerptCalibration, table: pd.DataFrame, rule: str,
                run_rule: RunRule = PAPER_RUN_RULE) -> pd.DataFrame:
    """The thresholds table of ``rule``: :data:`THRESHOLD_COLUMNS` then :data:`RULE_COLUMNS`.

    ``threshold`` and ``calibratable`` are the chosen rule's.  With ``windows`` the other
    columns of :data:`THRESHOLD_COLUMNS` are :func:`calibrate`'s; with an excerpt rule
    ``n_windows_above``, ``achieved_fraction``, ``v95_db`` and ``coverage`` describe the windows
    inside the held-out excerpts.  ``estimate`` is the excerpt purity the chosen rule predicts
    (held out; rule ``catalog``: the catalog's estimated purity), ``bound`` its lower bound at
    ``confidence``, ``songs`` the held-out songs with excerpts at ``p_i``, ``drivers`` the songs
    with the most windows above -20 dB in them (``name impure/inside``) and ``blockers`` those
    of the next lower candidate (what keeps an excerpt rule from going lower).  For every rule
    computed: its threshold, the held-out seconds its excerpts hold (``heldout_s_*``, the
    yield), their share of windows at or below the target (``excerpt_fraction_*``) and the
    song-level bound of that share (``bound_*``; rule ``catalog``: of its catalog estimate).
    ``table`` is :func:`calibration_table`'s (``track_id`` gives the songs).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule != "windows" and excerpts.rule(rule) is None:
        raise ValueError(f"rule {rule!r} was not computed (rule 'catalog' needs the catalog's windows)")
    breaks = track_breaks(table["track_id"].to_numpy(), table["frame"].to_numpy())
    song, ids = song_numbers(table["track_id"].to_numpy())
    names = _song_names(table, ids)
    weights = bootstrap_weights(max(1, len(ids)), excerpts.resamples, excerpts.seed)[:, :len(ids)]
    out = windows.thresholds.copy()
    for column in RULE_COLUMNS:
        out[column] = np.nan
    out["rule"], out["confidence"] = rule, excerpts.confidence
    out["drivers"], out["blockers"] = "", ""
    rows = {name: excerpts.rule(name).set_index("source") for name in EXCERPT_RULES if excerpts.rule(name) is not None}
    for k, source in enumerate(SOURCES):
        p = table[f"p_{source}"].to_numpy(np.float64)
        v = table[f"V_{source}"].to_numpy(np.float64)
        silent = v <= windows.target_db
        thresholds = {"windows": windows.thresholds.loc[k, "threshold"],
                      **{name: r.loc[source, "threshold"] for name, r in rows.items()}}
        for name, value in thresholds.items():
            out.loc[k, f"threshold_{name}"] = value
            if not np.isfinite(value):
                continue
            at = song_excerpts(p, silent, breaks, song, len(ids), np.array([value]), run_rule)
            n_inside, n_silent = int(at.inside.sum()), int(at.silent.sum())
            fraction = n_silent / n_inside if n_inside else np.nan
            bound = (float(bootstrap_bound(at.inside, at.silent, weights, excerpts.confidence)[0]) if len(ids)
                     else np.nan)
            out.loc[k, f"heldout_s_{name}"] = float(at.seconds().sum())
            out.loc[k, f"excerpt_fraction_{name}"] = fraction
            out.loc[k, f"bound_{name}"] = rows[name].loc[source, "bound"] if name == "catalog" else bound
            if name != rule:
                continue
            if name == "windows":
                out.loc[k, ["estimate", "bound", "songs"]] = [fraction, bound, int((at.inside[:, 0] > 0).sum())]
                out.loc[k, "drivers"] = _song_list(names, at.inside[:, 0] - at.silent[:, 0], at.inside[:, 0])
                continue
            chosen = rows[name].loc[source]
            out.loc[k, ["n_windows_above", "achieved_fraction", "v95_db", "coverage"]] = [
                n_inside, fraction, inverted_cdf_quantile(v[at.entry >= 0], 0.95),
                n_silent / silent.sum() if silent.sum() else np.nan]
            for column in ("estimate", "bound", "songs", "drivers", "blockers"):
                out.loc[k, column] = chosen[column]
        if rule != "windows" and not np.isfinite(thresholds.get(rule, np.nan)):
            out.loc[k, ["calibratable", "threshold", "n_windows_above", "achieved_fraction", "v95_db",
                        "coverage"]] = [False, np.nan, 0, np.nan, np.nan, np.nan]
        elif rule != "windows":
            out.loc[k, ["calibratable", "threshold"]] = [True, thresholds[rule]]
    out["calibratable"] = out["calibratable"].astype(bool)
    out["n_windows_above"] = out["n_windows_above"].astype(np.int64)
    out["songs"] = out["songs"].fillna(0).astype(np.int64)
    return out[[*THRESHOLD_COLUMNS, *RULE_COLUMNS]]


def _song_names(table: pd.DataFrame, ids: list[str]) -> list[str]:
    """The name of each song (``table``'s ``name`` column where it has one, else its track id)."""
    if "name" not in table.columns:
        return list(ids)
    first = table.drop_duplicates("track_id").set_index("track_id")["name"].astype(str)
    return [first.get(track, track) for track in ids]


def catalog_windows(probability_files: list[str | os.PathLike], max_songs: int = 0) -> CatalogWindows:
    """The catalog's windows from detection shards (``PROBABILITY_SCHEMA`` files), for rule
    ``catalog``.  ``max_songs`` > 0 keeps that many tracks, those of smallest SHA-256 of their
    id (a sample that does not depend on the shards' order); 0 keeps every track."""
    import hashlib

    columns = ["track_id", "frame", *(f"p_{name}" for name in SOURCES)]
    frames = [pd.read_parquet(path, columns=columns) for path in probability_files]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if max_songs > 0:
        tracks = sorted(table["track_id"].astype(str).unique(), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        table = table[table["track_id"].astype(str).isin(tracks[:max_songs])]
    table = table.astype({"frame": np.int64}).sort_values(["track_id", "frame"], kind="stable")
    track_ids = table["track_id"].astype(str).to_numpy()
    return CatalogWindows(table[[f"p_{name}" for name in SOURCES]].to_numpy(np.float64),
                          track_breaks(track_ids, table["frame"].to_numpy()), track_ids)


def build_calibration(probability_files: list[str | os.PathLike], labels_path: str | os.PathLike,
                      out: str | os.PathLike, target_db: float = TARGET_DB,
                      target_fraction: float = TARGET_FRACTION, min_windows: int = MIN_WINDOWS,
                      rule: str = "windows", run_rule: RunRule = PAPER_RUN_RULE,
                      confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0,
                      catalog_files: list[str | os.PathLike] | None = None, catalog_songs: int = 0) -> StageResult:
    """The calibration stage: thresholds from held-out probabilities and their labels, by ``rule``.

    ``catalog_files``: the catalog's detection shards, read (at most ``catalog_songs`` tracks,
    :func:`catalog_windows`) when ``rule`` is ``catalog``.  Writes ``thresholds.parquet`` /
    ``.csv`` (:func:`rules_table`), ``curves.parquet`` and ``curves.png`` (the windows rule's),
    ``excerpt_curves.parquet`` (every candidate of the excerpt rules) into ``out``; counts
    ``windows``, ``songs`` (held-out), ``calibrated``, ``rule``, ``catalog_songs`` (rule
    ``catalog``); per source a line for the chosen rule and a line for every rule computed.
    """
    from pathlib import Path

    from pipeline.storage.outputs import write_parquet_atomic

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule in CATALOG_RULES and not catalog_files:
        raise ValueError(f"rule {rule!r} estimates the catalog's purity: it needs the catalog's probabilities")
    out = Path(out)
    probabilities = pd.concat([pd.read_parquet(p) for p in probability_files], ignore_index=True)
    table = calibration_table(probabilities, pd.read_parquet(labels_path))
    probs = table[[f"p_{name}" for name in SOURCES]].to_numpy(np.float64)
    volumes = table[[f"V_{name}" for name in SOURCES]].to_numpy(np.float64)
    catalog = catalog_windows(catalog_files, catalog_songs) if rule in CATALOG_RULES else None
    result = calibrate(probs, volumes, target_db, target_fraction, min_windows)
    track_ids = table["track_id"].to_numpy()
    excerpts = calibrate_excerpts(probs, volumes, track_breaks(track_ids, table["frame"].to_numpy()),
                                  target_db, target_fraction, min_windows, run_rule,
                                  songs=track_ids, song_names=_song_names(table, song_numbers(track_ids)[1]),
                                  confidence=confidence, resamples=resamples, seed=seed, catalog=catalog)
    thresholds = rules_table(result, excerpts, table, rule, run_rule)
    write_parquet_atomic(thresholds, out / "thresholds.parquet")
    (out / "thresholds.csv").write_text(thresholds.to_csv(index=False))
    write_parquet_atomic(result.curves, out / "curves.parquet")
    write_parquet_atomic(excerpts.curves, out / "excerpt_curves.parquet")
    plot_curves(result, out / "curves.png")
    counts = {"windows": len(probs), "songs": int(table["track_id"].nunique()),
              "calibrated": int(thresholds["calibratable"].sum()), "rule": rule}
    if catalog is not None:
        counts["catalog_songs"] = int(np.unique(catalog.track_ids).size)
    lines = [line for r in thresholds.itertuples() for line in threshold_lines(r, target_db)]
    return StageResult(counts, lines)


def threshold_lines(row, target_db: float = TARGET_DB) -> list[str]:
    """Two summary lines of one source's row of a thresholds table: the chosen rule's threshold
    with the purity it predicts, its bound and the songs behind it; then every rule computed."""
    rule, source = row.rule, row.source
    if not row.calibratable:
        head = f"{source} [{rule}]: not calibratable"
    else:
        where = "catalog" if rule in CATALOG_RULES else "held-out"
        head = (f"{source} [{rule}]: p = {row.threshold:.4f}, {where} excerpts {row.estimate:.1%} <= {target_db:g} dB "
                f"(>= {row.bound:.1%} at {row.confidence:.0%} confidence; {row.songs} held-out songs with excerpts)")
        if row.drivers:
            head += f"; impure: {row.drivers}"
        if row.blockers:
            head += f"; below p: {row.blockers}"
    parts = []
    for name in RULES:
        value = getattr(row, f"threshold_{name}")
        if name in CATALOG_RULES and rule not in CATALOG_RULES:
            continue
        if not np.isfinite(value):
            parts.append(f"{name} none")
            continue
        bound = getattr(row, f"bound_{name}")
        parts.append(f"{name} {value:.3f} ({getattr(row, f'heldout_s_{name}'):.0f} s, "
                     f"{getattr(row, f'excerpt_fraction_{name}'):.1%}, bound {bound:.1%})")
    return [head, f"    {source} rules (held-out s, purity, bound): " + "; ".join(parts)]
