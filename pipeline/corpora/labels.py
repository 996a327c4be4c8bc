"""Relative-volume labels of stem-set tracks on the shared 0.64 s / 64 ms grid (paper section 4.1).

``V_i = 10 log10(||s_i||^2 / ||s||^2)`` in dB per window, with ``s = sum_i s_i``.  A window
whose mixture is digitally silent (energy below :data:`SILENT_ENERGY`) gets ``V_i = -inf``
for every source: nothing is audible, so every source counts as silent; never NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.sources import LABEL_SILENT_DB, SOURCES, n_windows, window_samples, window_starts
from pipeline.storage.outputs import StageResult

SILENT_ENERGY = 1e-10  # sum of squares over a window below which the mixture is silent


def window_energy(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Sum of squares per grid window of ``signal`` ``(..., samples)`` -> ``(..., n_windows)``.

    Uses a cumulative sum, so the cost is one pass whatever the overlap.  Windows past the
    end are zero-padded (a signal shorter than one window gets one window).
    """
    window, _ = window_samples(sample_rate)
    count = n_windows(signal.shape[-1], sample_rate)
    rows = signal.reshape(-1, signal.shape[-1])
    starts = window_starts(count, sample_rate)
    stops = np.minimum(starts + window, signal.shape[-1])
    energy = np.empty((rows.shape[0], count))
    for index, row in enumerate(rows):  # one float64 row at a time bounds the memory
        cumulative = np.concatenate([[0.0], np.cumsum(np.square(row, dtype=np.float64))])
        energy[index] = cumulative[stops] - cumulative[starts]
    return np.maximum(energy, 0.0).reshape(*signal.shape[:-1], count)


def relative_volumes(stems: np.ndarray, sample_rate: int) -> np.ndarray:
    """Relative volume in dB of each source, ``stems`` ``(4, channels, samples)`` -> ``(4, n_windows)``.

    Channels are pooled (energy summed over channels).  Silent-mixture windows give -inf.
    """
    source_energy = window_energy(stems, sample_rate).sum(axis=1)  # (4, n)
    mix_energy = window_energy(stems.sum(axis=0, dtype=np.float32), sample_rate).sum(axis=0)  # (n,)
    silent = mix_energy < SILENT_ENERGY
    with np.errstate(divide="ignore", invalid="ignore"):
        volumes = 10.0 * np.log10(source_energy / np.where(silent, 1.0, mix_energy))
    volumes[:, silent] = -np.inf
    return volumes.astype(np.float32)


def labels_frame(track_id: str, volumes: np.ndarray, hop_s: float) -> pd.DataFrame:
    """One row per window: ``track_id, window, start_s, V_drums .. V_vocals`` (dB)."""
    count = volumes.shape[1]
    frame = pd.DataFrame({"track_id": track_id, "window": np.arange(count, dtype=np.int32),
                          "start_s": (np.arange(count) * hop_s).astype(np.float64)})
    for index, name in enumerate(SOURCES):
        frame[f"V_{name}"] = volumes[index]
    return frame


def silent_labels(volumes: np.ndarray, threshold_db: float = LABEL_SILENT_DB) -> np.ndarray:
    """Binary targets ``(4, n)``: 1 where the source is silent (``V_i <= threshold_db``)."""
    return (volumes <= threshold_db).astype(np.float32)


def build_labels(stem_root, splits: list[str], out) -> StageResult:
    """The labels stage: the labels of every track of ``splits``, to the Parquet file ``out``.

    Columns: ``split, name, track_id, window, start_s, V_drums .. V_vocals`` (dB, float32).
    Counts ``tracks``, ``split_tracks`` (``{split: tracks}``, the calibration split's named
    too), ``windows`` and ``silent_13db_<s>`` (windows at or below -13 dB).
    """
    from pipeline.corpora import stemset
    from pipeline.sources import HOP_S
    from pipeline.storage.outputs import write_parquet_atomic

    frames, split_tracks = [], {}
    for split in splits:
        tracks = stemset.list_tracks(stem_root, split)
        split_tracks[split] = len(tracks)
        for track in tracks:
            stems, rate = stemset.load_stems(track)
            frame = labels_frame(track.track_id, relative_volumes(stems, rate), HOP_S)
            frame.insert(0, "name", track.name)
            frame.insert(0, "split", split)
            frames.append(frame)
    if not frames:
        raise ValueError(f"stem set {stem_root} has no tracks in splits {splits}")
    table = pd.concat(frames, ignore_index=True)
    write_parquet_atomic(table, out)
    return StageResult({"tracks": len(frames), "split_tracks": split_tracks, "windows": len(table),
                        **{f"silent_13db_{name}": int((table[f"V_{name}"] <= LABEL_SILENT_DB).sum())
                           for name in SOURCES}})
