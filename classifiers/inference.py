"""Per-frame silence probabilities of one track from its scattering features.

The conv stack is local (output frame ``k`` reads input frames ``4k .. 4k + 36``), so it runs
in time chunks of ``chunk_windows`` output frames whose input starts at multiples of 4 and
overlap by 36 frames: each chunk gives exactly the matching slice of the whole-sequence
output.  The input is read chunk by chunk (a memory-mapped shard view is never copied whole).

The BiLSTM is not local.  A track of at most ``sequence_windows + 2 * context_windows`` frames
(9,216 frames = 9.8 min by default) goes through it in one pass: the result is that of one
full-sequence forward pass, up to float rounding.  A longer track goes through in passes of
``sequence_windows`` frames (8.7 min), each with ``context_windows`` frames (33 s) of real
neighbouring frames on both sides that are dropped afterwards, so working memory is that of
one pass whatever the length.  The detector is trained on 5 s crops (78 frames): 33 s of
context is six crop lengths, and the gates forget long before that: with the demo's trained
detector on 23 minutes of test-split features, passes of 1,000 frames differ from one whole
pass by at most 1.2e-7 in probability with 512 frames of context (4.6e-6 with 128, 0.016 with
32, 0.30 with none); ``tests/test_detector.py`` checks passes against one whole pass.  What
still grows with length is the output, 16 bytes per 64 ms frame.  Peak RSS of the whole
detection stage: ``benchmarks/memory.py``.

**Numeric paths** (:data:`NUMERIC_PATHS`, :func:`for_numeric_path`).  ``float32`` is the
reference above.  ``fast`` is float32 too, but a track of at least ``PASS_MIN_FRAMES`` frames
(2.2 min) goes through the BiLSTM in parallel passes (:func:`pass_keep`, :func:`pass_bounds`):
split into ``PASS_BATCH`` passes that each keep an equal share of the frames (at most
``PASS_MAX_KEEP``; longer tracks take several batches of passes), each with ``PASS_CONTEXT``
frames of real context on each side, run as one batch.  The recurrence then takes ``keep + 2
* PASS_CONTEXT`` steps instead of one per frame, and each step is a matrix product instead of
a matrix-vector one that only reads the weights.  A step of a batch of sequences costs more than
one of a single sequence, so passes pay only on long tracks; shorter tracks take the one pass of
``float32`` (speed of both paths: ``benchmarks/detect.py``, docs/performance.md).
On the demo's trained detector and its test split's features end to end (10,794 frames),
passes differ from one pass by 2e-7 in probability.  On random features, which it never saw,
they differed by 0.03, and by 0.024 even with 512 frames of context: its BiLSTM then does not
forget.  So the fast path checks its seams: the two frames around each boundary are scored
by both neighbouring passes (one keeps them, the other has them in its context), and if any
probability there differs by more than ``PASS_SEAM_TOLERANCE`` the track is scored again in
one pass, as ``float32`` does; the detection stages count such tracks.

bfloat16 was measured and rejected: the conv stack in bfloat16 moves that detector's
probabilities by 0.068, the BiLSTM in bfloat16 moves a randomly initialised one with logits of
+-4 by 5e-3.  ``tests/test_inference.py`` holds ``fast`` within 1e-3 of ``float32``;
``benchmarks/detect.py`` measures both side by side.  :func:`default_numeric_path` is
``fast``; the detection stages record the path they used in their counts.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from classifiers.detector import SilentSourceDetector, n_output_frames
from pipeline.mining.schema import PROBABILITY_SCHEMA
from pipeline.sources import FRAMES_PER_HOP, FRAMES_PER_WINDOW, HOP_S, SOURCES

CHUNK_WINDOWS = 512  # output frames per conv-stack chunk (33 s of audio)
SEQUENCE_WINDOWS = 8192  # output frames per BiLSTM pass of a long track (8.7 min)
CONTEXT_WINDOWS = 512  # frames of context on each side of a BiLSTM pass (33 s)
NUMERIC_PATHS = ("float32", "fast")
PASS_MIN_FRAMES = 2048  # shortest track (output frames, 2.2 min) the fast path splits into passes
PASS_BATCH = 12  # parallel BiLSTM passes run as one batch (the fastest per frame on 2 cores)
PASS_MAX_KEEP = 768  # most frames one pass keeps (49 s; bounds the memory: 12 x 1024 frames)
PASS_CONTEXT = 128  # frames of context on each side of a parallel pass (8 s)
PASS_SEAM_TOLERANCE = 1e-4  # largest probability disagreement of neighbouring passes kept


def default_numeric_path() -> str:
    """The path the detection stages use: ``fast`` (float32 everywhere, see the module docstring)."""
    return "fast"


def numeric_path_of(model: SilentSourceDetector) -> str:
    """The numeric path a model was prepared for (:func:`for_numeric_path`); ``float32`` if none."""
    return getattr(model, "numeric_path", "float32")


def for_numeric_path(model: SilentSourceDetector, numeric_path: str) -> SilentSourceDetector:
    """The model to run for ``numeric_path``: ``model`` itself for ``float32``; for ``fast`` a
    shallow eval-mode copy (the same weights) marked so that :func:`predict` runs the
    BiLSTM in parallel passes."""
    if numeric_path not in NUMERIC_PATHS:
        raise ValueError(f"numeric_path must be one of {NUMERIC_PATHS}, got {numeric_path!r}")
    if numeric_path == "float32":
        return model
    fast = copy.copy(model).eval()  # shares parameters and buffers; only the marker differs
    fast.numeric_path = numeric_path
    return fast


def pass_keep(total: int) -> int | None:
    """Frames each parallel pass of the fast path keeps for a track of ``total`` frames, or
    None for one whole pass (tracks under ``PASS_MIN_FRAMES``): ``total`` split into
    ``PASS_BATCH`` equal shares, at most ``PASS_MAX_KEEP`` each."""
    if total < PASS_MIN_FRAMES:
        return None
    return min(PASS_MAX_KEEP, -(-total // PASS_BATCH))


def pass_bounds(total: int, keep: int, context: int) -> list[tuple[int, int, int, int]]:
    """``(first, stop, lo, hi)`` of the parallel passes over ``total`` frames: each keeps frames
    ``first .. stop - 1`` and runs over ``lo .. hi - 1``, all of one length ``min(total, keep +
    2 context)``, with at least ``context`` real frames (or the track's edge) on each side."""
    length = min(total, keep + 2 * context)
    bounds = []
    for first in range(0, total, keep):
        stop = min(first + keep, total)
        lo = max(0, first - context)
        hi = min(total, lo + length)
        lo = hi - length
        bounds.append((first, stop, lo, hi))
    return bounds


def _parallel_sequence(model: SilentSourceDetector, x, total: int, keep: int,
                       chunk_windows: int) -> tuple[torch.Tensor, float]:
    """Logits ``(4, total)`` with the BiLSTM in batched passes of ``keep`` frames
    (:func:`pass_bounds`), and how far neighbouring passes disagree at their seams: the largest
    probability difference, over the two frames around each boundary, between the pass that
    keeps a frame and its neighbour, which sees it with ``PASS_CONTEXT`` frames of warm-up in the
    other direction."""
    bounds = pass_bounds(total, keep, PASS_CONTEXT)
    logits = torch.empty(len(SOURCES), total)
    seams = []  # (frame, that frame's logits in the neighbouring pass)
    for group in range(0, len(bounds), PASS_BATCH):
        batch = bounds[group : group + PASS_BATCH]
        lo, hi = batch[0][2], batch[-1][3]
        embedded = _embed(model, x, lo, hi, chunk_windows)  # (1, D, hi - lo)
        stacked = torch.cat([embedded[..., a - lo : b - lo] for _, _, a, b in batch])  # (B, D, length)
        out = model.sequence(stacked).cpu()
        for row, (first, stop, a, b) in zip(out, batch):
            logits[:, first:stop] = row[:, first - a : stop - a]
            seams += [(frame, row[:, frame - a]) for frame in (first - 1, stop) if 0 < frame < total and a <= frame < b]
    disagreement = max((float((torch.sigmoid(seen) - torch.sigmoid(logits[:, frame])).abs().max())
                        for frame, seen in seams), default=0.0)
    return logits, disagreement


def _whole_sequence(model: SilentSourceDetector, x, total: int, chunk_windows: int, sequence_windows: int,
                    context_windows: int) -> torch.Tensor:
    """Logits ``(4, total)`` of the ``float32`` path: one BiLSTM pass, or passes of
    ``sequence_windows`` with ``context_windows`` of context for a longer track."""
    if total <= sequence_windows + 2 * context_windows:
        return model.sequence(_embed(model, x, 0, total, chunk_windows))[0].cpu()
    logits = torch.empty(len(SOURCES), total)
    for first in range(0, total, sequence_windows):
        stop = min(first + sequence_windows, total)
        lo, hi = max(0, first - context_windows), min(total, stop + context_windows)
        window = model.sequence(_embed(model, x, lo, hi, chunk_windows))[0].cpu()
        logits[:, first:stop] = window[:, first - lo : stop - lo]
    return logits


def _embed(model: SilentSourceDetector, x, first: int, stop: int, chunk_windows: int) -> torch.Tensor:
    """Conv-stack output ``(1, 1024w, stop - first)`` for output frames ``first .. stop - 1``."""
    device = model.feature_mean.device
    embedded = None
    for lo in range(first, stop, chunk_windows):
        count = min(chunk_windows, stop - lo)
        start = lo * FRAMES_PER_HOP
        piece = x[:, :, start : start + FRAMES_PER_WINDOW + FRAMES_PER_HOP * (count - 1)]
        piece = (
            piece.float() if torch.is_tensor(piece) else torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32))
        )
        out = model.embed(piece[None].to(device))[..., :count]
        if embedded is None:
            embedded = out.new_empty(out.shape[:-1] + (stop - first,))
        embedded[..., lo - first : lo - first + count] = out
    return embedded


@torch.inference_mode()
def predict(
    model: SilentSourceDetector,
    features: np.ndarray | torch.Tensor,
    chunk_windows: int = CHUNK_WINDOWS,
    sequence_windows: int = SEQUENCE_WINDOWS,
    context_windows: int = CONTEXT_WINDOWS,
    schedule: dict | None = None,
) -> np.ndarray:
    """Probabilities that each source is silent, float32 ``(n_frames, 4)`` in [0, 1], for
    features ``(7, 54, T)`` (see the module docstring).

    ``schedule``, if given, receives what the fast path did with a track it split: ``passes``,
    ``seam`` (the passes' largest disagreement) and ``fell_back`` (True: scored again in one pass).

    Frame ``k`` is grid window ``k`` (starts at ``k * 0.064`` s); columns follow ``SOURCES``.
    ``features`` may be any array-like with numpy slicing in time, e.g. the reader of
    :meth:`pipeline.features.store.FeatureShard.reader`: only one chunk of input frames is read
    and converted to float32 at a time.
    """
    if chunk_windows < 1 or sequence_windows < 1 or context_windows < 0:
        raise ValueError("chunk_windows and sequence_windows must be >= 1, context_windows >= 0")
    model.eval()
    # tensors, arrays, memory maps and FeatureShard readers are sliced as they are (no copy)
    x = features if torch.is_tensor(features) or hasattr(features, "shape") else np.asarray(features)
    if x.ndim != 3:
        raise ValueError(f"features must be (C, F, T), got {tuple(x.shape)}")
    total = n_output_frames(x.shape[-1])
    if total == 0:
        raise ValueError("features have no frames")
    keep = pass_keep(total) if numeric_path_of(model) == "fast" else None
    logits = None
    if keep is not None:
        logits, disagreement = _parallel_sequence(model, x, total, keep, chunk_windows)  # (4, n_frames)
        if disagreement > PASS_SEAM_TOLERANCE:  # the passes have not forgotten their start
            logits = None
        if schedule is not None:
            schedule.update(passes=len(pass_bounds(total, keep, PASS_CONTEXT)), seam=disagreement,
                            fell_back=logits is None)
    if logits is None:
        logits = _whole_sequence(model, x, total, chunk_windows, sequence_windows, context_windows)
    return torch.sigmoid(logits).T.contiguous().numpy().astype(np.float32)


def probabilities_frame(track_id: str, probs: np.ndarray) -> pd.DataFrame:
    """Rows ``track_id, frame, start_s, p_drums .. p_vocals`` (``PROBABILITY_SCHEMA``)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(SOURCES):
        raise ValueError(f"probs must be (n_frames, {len(SOURCES)}), got {probs.shape}")
    count = probs.shape[0]
    frame = pd.DataFrame(
        {
            "track_id": pd.Series([track_id] * count, dtype=object),
            "frame": np.arange(count, dtype=np.int32),
            "start_s": np.arange(count, dtype=np.float64) * HOP_S,
        }
    )
    for index, name in enumerate(SOURCES):
        frame[f"p_{name}"] = probs[:, index]
    return frame[[f.name for f in PROBABILITY_SCHEMA]]
