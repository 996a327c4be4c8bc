"""How pure the excerpts cut at a threshold are, and how sure that is: song by song.

A detector's false positives come in whole songs (a kit it never learnt, a part that stays
quiet but present), so every estimate here treats songs, not windows, as the units of
evidence.  Inputs are one source's grid windows, rows sorted by track then frame: ``p`` the
detector probability, ``silent`` the truth ``V_i <= target_db`` (labelled songs only),
``breaks`` (:func:`track_breaks`) and ``songs``, a song number per
row.  Thresholds are a candidate grid, ascending.

* :func:`song_excerpts`: per song and candidate, the windows inside the excerpts extraction
  would cut (:func:`excerpt_statistics`: the same run rule,
  :class:`pipeline.mining.extraction.RunRule`), how many are silent, how many excerpts; and per window its
  *entry*, the highest candidate at which it lies inside an excerpt.  Lowering the threshold
  only adds frames above it, so runs only grow and merge: the windows inside at a candidate
  are exactly those whose entry is at or above it.
* :func:`bootstrap_weights`: resamples of whole songs (each draw takes every window of a
  song), as multiplicities ``(B, K)``.
* :func:`bootstrap_bound`: the lower confidence bound of the pooled purity (silent windows
  inside / windows inside) at each candidate: the ``1 - confidence`` quantile over the
  resamples.  A resample in which no song has an excerpt at a candidate counts as purity 0: it
  holds no evidence, so a threshold reached by one or two songs of many cannot pass.
* :func:`isotonic_map`, :func:`catalog_purity`: the catalog's own purity.  On the labelled
  songs, the probability that a window inside an excerpt is silent, as a non-decreasing
  function of its entry (weighted isotonic regression over the candidate grid); applied to
  the catalog's windows, whose entries come from the catalog's own probabilities, it
  estimates the purity of the excerpts each candidate would cut from the catalog.  The bound
  resamples the labelled songs and fits the map again each time; song-level cross-fitting
  (each fold's songs predicted by a map fitted on the other folds) says how well the map
  predicts songs it did not see.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule, run_spans
from pipeline.sources import HOP_S, WINDOW_S

CONFIDENCE = 0.95  # one-sided confidence of the lower bounds
RESAMPLES = 1000  # song-level bootstrap resamples
FOLDS = 5  # song-level cross-fitting folds of the isotonic map


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


def excerpt_candidates(p: np.ndarray, limit: int) -> np.ndarray:
    """The distinct values of ``p`` at ``limit`` evenly spaced ranks of all ``p.size`` values: a
    rank's value moves only as much as ``p`` does, so float noise that makes two values equal
    (or apart) does not shift the grid, as ranks among the distinct values would."""
    values = np.sort(p)
    if values.size > limit:
        values = values[np.round(np.linspace(0, values.size - 1, limit)).astype(np.int64)]
    return np.unique(values)


@dataclass(frozen=True)
class SongExcerpts:
    """One source's excerpts on a candidate grid, song by song.

    ``thresholds`` ``(C,)`` ascending; ``inside``, ``silent``, ``excerpts`` ``(K, C)`` int64:
    per song and candidate the windows inside excerpts, those of them silent (zeros where the
    truth is unknown) and the number of excerpts; ``entry`` ``(n,)`` int64 per window the index
    of the highest candidate at which it lies inside an excerpt (-1: never); ``song`` ``(n,)``
    the song number of each window; ``window_silent`` ``(n,)`` bool.
    """

    thresholds: np.ndarray
    inside: np.ndarray
    silent: np.ndarray
    excerpts: np.ndarray
    entry: np.ndarray
    song: np.ndarray
    window_silent: np.ndarray

    @property
    def n_songs(self) -> int:
        return int(self.inside.shape[0])

    def seconds(self) -> np.ndarray:
        """``(K, C)`` seconds of audio the excerpts hold: ``(b - a - 1)`` hops plus one window each."""
        return self.inside * HOP_S + self.excerpts * (WINDOW_S - HOP_S)

    def entry_counts(self, silent_only: bool = False) -> np.ndarray:
        """``(K, C)``: per song, the windows whose entry is each candidate (``silent_only``: of them the silent)."""
        keep = self.entry >= 0
        if silent_only:
            keep &= self.window_silent
        counts = np.zeros((self.n_songs, self.thresholds.size), dtype=np.int64)
        np.add.at(counts, (self.song[keep], self.entry[keep]), 1)
        return counts


def song_excerpts(p: np.ndarray, silent: np.ndarray | None, breaks: np.ndarray, song: np.ndarray, n_songs: int,
                  thresholds: np.ndarray, run_rule: RunRule = PAPER_RUN_RULE) -> SongExcerpts:
    """:class:`SongExcerpts` of windows ``p`` ``(n,)`` (``silent`` ``(n,)`` bool or None when the
    truth is unknown, the catalog), ``breaks`` and ``song`` ``(n,)`` (0 .. ``n_songs - 1``)."""
    p = np.asarray(p, dtype=np.float64)
    song = np.asarray(song, dtype=np.int64)
    breaks = np.asarray(breaks, dtype=bool)
    window_silent = np.zeros(p.size, dtype=bool) if silent is None else np.asarray(silent, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if p.shape != song.shape or p.shape != breaks.shape or p.shape != window_silent.shape:
        raise ValueError(f"p, silent, breaks and song must all be (n,); got {p.shape}, {window_silent.shape}, "
                         f"{breaks.shape} and {song.shape}")
    if song.size and (song.min() < 0 or song.max() >= n_songs):
        raise ValueError(f"song numbers must lie in 0 .. {n_songs - 1}")
    if thresholds.ndim != 1 or np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly ascending (C,)")
    shape = (n_songs, thresholds.size)
    inside_counts, silent_counts, excerpt_counts = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    entry = np.full(p.size, -1, dtype=np.int64)
    if breaks.size:
        breaks = breaks.copy()
        breaks[0] = True
    for j, threshold in enumerate(thresholds):
        *_, inside = excerpt_statistics(p, window_silent, breaks, float(threshold), run_rule)
        # an excerpt starts where a window is inside and the one before is not (or a stretch starts)
        starts = inside & (breaks | ~np.concatenate(([False], inside[:-1])))
        inside_counts[:, j] = np.bincount(song[inside], minlength=n_songs)
        silent_counts[:, j] = np.bincount(song[inside & window_silent], minlength=n_songs)
        excerpt_counts[:, j] = np.bincount(song[starts], minlength=n_songs)
        entry[inside] = j
    return SongExcerpts(thresholds, inside_counts, silent_counts, excerpt_counts, entry, song, window_silent)


def song_numbers(track_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``(song (n,), names)``: each row's song number (0 .. K-1, in order of first appearance) and
    the K track ids."""
    codes, names = pd.factorize(np.asarray(track_ids).astype(str), sort=False)
    return codes.astype(np.int64), [str(n) for n in names]


def bootstrap_weights(n_songs: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(B, K)`` int64: how often each of ``n_songs`` songs is drawn in each of ``resamples``
    resamples of ``n_songs`` whole songs with replacement."""
    if n_songs < 1 or resamples < 1:
        raise ValueError(f"need at least one song and one resample, got {n_songs} and {resamples}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_songs, resamples]))
    return rng.multinomial(n_songs, np.full(n_songs, 1.0 / n_songs), size=resamples).astype(np.int64)


def lower_quantile(values: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """The ``1 - confidence`` quantile over axis 0 (inverted CDF: a value that was drawn)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return np.quantile(values, 1.0 - confidence, axis=0, method="inverted_cdf")


def resampled_purity(inside: np.ndarray, silent: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B, C)`` pooled purity ``sum silent / sum inside`` of each song resample, from ``inside``
    and ``silent`` ``(K, C)`` and ``weights`` ``(B, K)``; 0 where a resample has no window inside."""
    drawn_inside = weights @ inside
    drawn_silent = weights @ silent
    return np.where(drawn_inside > 0, drawn_silent / np.maximum(drawn_inside, 1), 0.0)


def bootstrap_bound(inside: np.ndarray, silent: np.ndarray, weights: np.ndarray,
                    confidence: float = CONFIDENCE) -> np.ndarray:
    """``(C,)`` lower confidence bound of the pooled purity at each candidate: the ``1 - confidence``
    quantile of :func:`resampled_purity` (module docstring)."""
    return lower_quantile(resampled_purity(inside, silent, weights), confidence)


def isotonic_map(windows: np.ndarray, silent: np.ndarray) -> np.ndarray:
    """``(C,)`` non-decreasing probability that a window of each entry is silent, fitted by
    weighted isotonic regression to ``silent / windows`` (``(C,)`` counts per entry); entries
    without windows take the fitted value of the nearest entries that have some (ends held)."""
    windows = np.asarray(windows, dtype=np.float64)
    silent = np.asarray(silent, dtype=np.float64)
    seen = windows > 0
    if not seen.any():
        return np.full(windows.shape, np.nan)
    from scipy.optimize import isotonic_regression  # here: scipy.optimize costs every stage's start 0.2 s

    fitted = isotonic_regression(silent[seen] / windows[seen], weights=windows[seen], increasing=True).x
    grid = np.arange(windows.size)
    return np.interp(grid, grid[seen], fitted)


def catalog_purity(catalog_entries: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(windows (C,), estimated purity (C,))`` of the catalog's excerpts at each candidate:
    the windows whose entry is at or above it, and the mean of ``probability`` (``(..., C)``:
    one map, or one per row) over their entries.  ``catalog_entries`` ``(C,)``: the catalog's
    windows per entry."""
    counts = np.asarray(catalog_entries, dtype=np.float64)
    windows = np.cumsum(counts[::-1])[::-1]
    silent = np.cumsum((np.asarray(probability) * counts)[..., ::-1], axis=-1)[..., ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return windows, np.where(windows > 0, silent / np.maximum(windows, 1.0), np.nan)


def song_folds(names: list[str], folds: int = FOLDS) -> np.ndarray:
    """``(K,)`` fold of each song: songs ordered by a hash of their name, dealt round-robin."""
    order = sorted(range(len(names)), key=lambda k: hashlib.sha256(names[k].encode()).hexdigest())
    fold = np.zeros(len(names), dtype=np.int64)
    fold[order] = np.arange(len(names)) % max(1, min(folds, len(names)))
    return fold


@dataclass(frozen=True)
class CatalogEstimate:
    """The catalog's estimated excerpt purity per candidate (``(C,)`` each): ``windows`` inside
    the catalog's excerpts, ``estimate`` (the map fitted on every labelled song), ``bound``
    (its lower confidence bound over song resamples), ``crossfit`` (the labelled songs' own
    purity predicted by maps fitted on the other folds) and ``fitted`` the map ``(C,)``."""

    windows: np.ndarray
    estimate: np.ndarray
    bound: np.ndarray
    crossfit: np.ndarray
    fitted: np.ndarray


def estimate_catalog(labelled: SongExcerpts, catalog: SongExcerpts, weights: np.ndarray, names: list[str],
                     confidence: float = CONFIDENCE, folds: int = FOLDS) -> CatalogEstimate:
    """Purity of the excerpts each candidate would cut from ``catalog`` (same grid), predicted
    from the ``labelled`` songs (``names``: theirs, for the folds) by the isotonic map of entry to
    silence; ``weights`` ``(B, K)`` resample the labelled songs for the bound."""
    if not np.array_equal(labelled.thresholds, catalog.thresholds):
        raise ValueError("the labelled songs and the catalog must share one candidate grid")
    windows_by_song = labelled.entry_counts()
    silent_by_song = labelled.entry_counts(silent_only=True)
    fitted = isotonic_map(windows_by_song.sum(axis=0), silent_by_song.sum(axis=0))
    catalog_entries = catalog.entry_counts().sum(axis=0)
    windows, estimate = catalog_purity(catalog_entries, fitted)
    drawn = np.stack([isotonic_map(w @ windows_by_song, w @ silent_by_song) for w in weights])
    _, resampled = catalog_purity(catalog_entries, np.nan_to_num(drawn, nan=0.0))
    bound = lower_quantile(np.nan_to_num(resampled, nan=0.0), confidence)
    fold = song_folds(names, folds)
    predicted = np.zeros(labelled.thresholds.size)
    for f in np.unique(fold):
        rest = fold != f
        held_map = np.nan_to_num(isotonic_map(windows_by_song[rest].sum(axis=0), silent_by_song[rest].sum(axis=0)))
        held_entries = windows_by_song[~rest].sum(axis=0)
        predicted += np.cumsum((held_map * held_entries)[::-1])[::-1]
    total = labelled.inside.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossfit = np.where(total > 0, predicted / np.maximum(total, 1), np.nan)
    return CatalogEstimate(windows, estimate, bound, crossfit, fitted)
