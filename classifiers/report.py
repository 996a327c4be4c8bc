"""Detector quality on held-out labelled tracks: ROC AUC, average precision, volume vs probability.

For each source: ROC AUC and average precision of ``P_i`` against the labels
``V_i <= -13 dB`` and ``V_i <= -20 dB``, the positive rate, and the Spearman correlation
between ``P_i`` and the true relative volume ``V_i`` (negative: the volume falls as the
probability rises, which is what calibration relies on).  A plot shows, per source, the
median and quartiles of ``V_i`` in each probability bin.

The metrics are small numpy functions (rank-based, ties averaged), so no scikit-learn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.sources import SOURCES

THRESHOLDS_DB = (-13.0, -20.0)
PLOT_FLOOR_DB = -60.0  # -inf volumes (silent mixture or exactly silent source) are drawn here


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like ``scipy.stats.rankdata``)."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1], True])
    ranks_sorted = np.empty(values.shape[0], dtype=np.float64)
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        ranks_sorted[start:stop] = 0.5 * (start + 1 + stop)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (P N)); ties count 1/2; NaN without both classes."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds (as sklearn).

    NaN when there is no positive.
    """
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ")
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    true_pos = np.cumsum(sorted_labels)[last_of_group]
    predicted = (np.flatnonzero(last_of_group) + 1)
    precision = true_pos / predicted
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
    return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")


def quality_table(probs: np.ndarray, volumes: np.ndarray,
                  thresholds_db: Iterable[float] = THRESHOLDS_DB) -> pd.DataFrame:
    """One row per source from pooled frames: ``probs`` ``(n, 4)`` and ``volumes`` ``(n, 4)`` in dB.

    Columns: ``source, n_frames, positive_rate_13, auc_13, ap_13, positive_rate_20, auc_20,
    ap_20, spearman_volume, volume_falls`` (threshold suffix = minus the dB value).
    """
    probs = np.asarray(probs, dtype=np.float64)
    volumes = np.asarray(volumes, dtype=np.float64)
    if probs.shape != volumes.shape or probs.ndim != 2 or probs.shape[1] != len(SOURCES):
        raise ValueError(f"probs {probs.shape} and volumes {volumes.shape} must both be (n, 4)")
    if np.isnan(volumes).any():
        raise ValueError("volumes contain NaN")
    rows = []
    for index, name in enumerate(SOURCES):
        row: dict = {"source": name, "n_frames": probs.shape[0]}
        for threshold in thresholds_db:
            labels = volumes[:, index] <= threshold
            suffix = f"{-threshold:g}"
            row[f"positive_rate_{suffix}"] = float(labels.mean()) if labels.size else float("nan")
            row[f"auc_{suffix}"] = roc_auc(labels, probs[:, index])
            row[f"ap_{suffix}"] = average_precision(labels, probs[:, index])
        row["spearman_volume"] = spearman(probs[:, index], np.maximum(volumes[:, index], -1e9))
        row["volume_falls"] = bool(row["spearman_volume"] < 0)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_volume_vs_probability(probs: np.ndarray, volumes: np.ndarray, path: str | os.PathLike,
                               bins: int = 10) -> Path:
    """PNG of median and quartiles of ``V_i`` (dB) per probability bin, one panel per source.

    ``probs`` and ``volumes`` (dB) are ``(n, 4)``, one row per frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.storage.outputs import write_png_atomic

    probs = np.asarray(probs, dtype=np.float64)
    volumes = np.maximum(np.asarray(volumes, dtype=np.float64), PLOT_FLOOR_DB)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, axes = plt.subplots(1, len(SOURCES), figsize=(4 * len(SOURCES), 3.5), sharey=True)
    for index, (ax, name) in enumerate(zip(axes, SOURCES)):
        which = np.clip(np.digitize(probs[:, index], edges[1:-1]), 0, bins - 1)
        stats = np.full((bins, 3), np.nan)
        counts = np.zeros(bins, dtype=int)
        for b in range(bins):
            values = volumes[which == b, index]
            counts[b] = values.size
            if values.size:
                stats[b] = np.percentile(values, [25, 50, 75])
        ax.fill_between(centres, stats[:, 0], stats[:, 2], alpha=0.3, label="quartiles")
        ax.plot(centres, stats[:, 1], marker="o", label="median")
        for threshold, style in zip(THRESHOLDS_DB, ("--", ":")):
            ax.axhline(threshold, color="grey", linestyle=style, linewidth=1, label=f"{threshold:g} dB")
        ax.set_title(f"{name} (n={probs.shape[0]})")
        ax.set_xlabel("predicted P(silent)")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel(f"true relative volume V (dB, floor {PLOT_FLOOR_DB:g})")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    write_png_atomic(fig, path)
    plt.close(fig)
    return path


def detector_report(model, tracks: Iterable[tuple[np.ndarray, np.ndarray]], png_path: str | os.PathLike,
                    chunk_windows: int | None = None) -> tuple[pd.DataFrame, Path]:
    """Evaluate ``model`` on ``(features (7, 54, T), volumes (4, n) dB)`` pairs.

    Frames of all tracks are pooled.  Returns the :func:`quality_table` and the PNG path.
    """
    from classifiers.inference import CHUNK_WINDOWS, predict

    all_probs, all_volumes = [], []
    for feats, volumes in tracks:
        probs = predict(model, feats, chunk_windows or CHUNK_WINDOWS)
        count = min(probs.shape[0], volumes.shape[1])
        if abs(probs.shape[0] - volumes.shape[1]) > 1:
            raise ValueError(f"detector gives {probs.shape[0]} frames but labels have {volumes.shape[1]}")
        all_probs.append(probs[:count])
        all_volumes.append(volumes[:, :count].T)
    if not all_probs:
        raise ValueError("detector_report needs at least one track")
    probs = np.concatenate(all_probs)
    volumes = np.concatenate(all_volumes)
    return quality_table(probs, volumes), plot_volume_vs_probability(probs, volumes, png_path)
