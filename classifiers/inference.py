"""Per-frame silence probabilities of one track from its scattering features.

:func:`predict` runs the conv stack in time chunks and the BiLSTM over the whole sequence,
which gives the same result as one full-sequence forward pass (up to float rounding): the
conv stack is local (output frame ``k`` reads input frames ``4k .. 4k + 36``), so chunks of
input frames starting at multiples of 4, overlapping by 36 frames, produce exactly the
matching slices of its output.  The input is read chunk by chunk (a memory-mapped shard view
is never copied whole), and only the conv stack's activations (the large ones: 128w channels
x 50 frequencies per frame) are chunked.

What still grows with the track's length: the conv stack's output (``1024w`` floats per
64 ms frame), the BiLSTM's input projections (computed for the whole sequence at once by
torch's CPU LSTM), its outputs (``2048w``) and the head's hidden layer (``1024w``).  Measured
by ``benchmarks/memory.py`` (whole detection stage, w = 0.125): peak RSS 467 MiB for a
10-minute track, 991 MiB for 60 minutes, i.e. about 10.5 MiB per minute of audio (about
19 x 1024w floats per frame) above a fixed ~0.36 GB; if it scales with w, the paper's
width (w = 1) needs about 5 GB for one hour.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from classifiers.detector import FRAMES_PER_HOP, FRAMES_PER_WINDOW, SilentSourceDetector, n_output_frames
from pipeline.dataset_index import PROBABILITY_SCHEMA
from pipeline.sources import HOP_S, SOURCES

CHUNK_WINDOWS = 512  # output frames per conv-stack chunk (33 s of audio)


@torch.inference_mode()
def predict_logits(model: SilentSourceDetector, features: np.ndarray | torch.Tensor,
                   chunk_windows: int = CHUNK_WINDOWS) -> torch.Tensor:
    """Logits ``(4, n_frames)`` for features ``(7, 54, T)``, conv stack chunked in time.

    ``features`` may be any array-like with numpy slicing, e.g. the memory-mapped float16
    view of :meth:`pipeline.feature_store.FeatureShard.view`: only one chunk of input
    frames is read and converted to float32 at a time.
    """
    if chunk_windows < 1:
        raise ValueError("chunk_windows must be >= 1")
    model.eval()
    x = features if torch.is_tensor(features) else np.asarray(features)  # no copy for arrays and memmaps
    if x.ndim != 3:
        raise ValueError(f"features must be (C, F, T), got {tuple(x.shape)}")
    device = model.feature_mean.device
    total = n_output_frames(x.shape[-1])
    if total == 0:
        raise ValueError("features have no frames")
    span = FRAMES_PER_WINDOW + FRAMES_PER_HOP * (chunk_windows - 1)  # input frames per chunk
    embedded = None
    for first in range(0, total, chunk_windows):
        start = first * FRAMES_PER_HOP
        piece = x[:, :, start:start + span]
        piece = piece.float() if torch.is_tensor(piece) else torch.from_numpy(
            np.ascontiguousarray(piece, dtype=np.float32))
        out = model.embed(piece[None].to(device))[..., :min(chunk_windows, total - first)]
        if embedded is None:
            embedded = out.new_empty(out.shape[:-1] + (total,))
        embedded[..., first:first + out.shape[-1]] = out
    return model.sequence(embedded)[0].cpu()


def predict(model: SilentSourceDetector, features: np.ndarray | torch.Tensor,
            chunk_windows: int = CHUNK_WINDOWS) -> np.ndarray:
    """Probabilities that each source is silent, float32 ``(n_frames, 4)`` in [0, 1].

    Frame ``k`` is grid window ``k`` (starts at ``k * 0.064`` s); columns follow ``SOURCES``.
    """
    logits = predict_logits(model, features, chunk_windows)
    return torch.sigmoid(logits).T.contiguous().numpy().astype(np.float32)


def probabilities_frame(track_id: str, probs: np.ndarray) -> pd.DataFrame:
    """Rows ``track_id, frame, start_s, p_drums .. p_vocals`` (``PROBABILITY_SCHEMA``)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(SOURCES):
        raise ValueError(f"probs must be (n_frames, {len(SOURCES)}), got {probs.shape}")
    count = probs.shape[0]
    frame = pd.DataFrame({
        "track_id": pd.Series([track_id] * count, dtype=object),
        "frame": np.arange(count, dtype=np.int32),
        "start_s": np.arange(count, dtype=np.float64) * HOP_S,
    })
    for index, name in enumerate(SOURCES):
        frame[f"p_{name}"] = probs[:, index]
    return frame[[f.name for f in PROBABILITY_SCHEMA]]
