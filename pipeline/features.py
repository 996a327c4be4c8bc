"""Scattering features of the 16 kHz mono mixture, laid out as ``(C, F, T)`` for the detector.

Order-2 1D scattering (Kymatio 0.3.0, torch frontend) with ``J=8, Q=8, T=256`` (SPEC.md):
one frame every 256 samples = 16 ms.  Frame ``j`` is centred on sample ``j * 256`` of the
signal, which is taken as zero outside ``[0, n_samples)`` (silence before and after the
track).  Layout (Appendix A of the paper):

- channel 0: the 54 order-1 coefficients, row ``n1`` = first-order filter ``n1``
  (``n1 = 0`` is the highest frequency, about 7 kHz; ``n1 = 53`` the lowest, about 16 Hz);
- channels 1..6: order-2 coefficients of second-order filter ``n2 = 3..8`` (channel
  ``n2 - 2``), each at row ``n1`` of its first-order parent; zeros where the path
  ``(n1, n2)`` does not exist (Kymatio only keeps paths with ``j2 > j1``).

The order-0 coefficient (the low-passed waveform) is dropped.  Values are log-compressed,
``log1p(S / LOG_EPS)``.  ``LOG_EPS = 1e-6`` is about the order-1 coefficient of 16-bit
quantisation noise (-90 dBFS), so digital silence maps to 0 and anything audible is on a
log scale (about 2.3 units per 10x in amplitude).

Frame count: a signal of ``N`` samples gives ``n_feature_frames(N) = 40 + 4 * (W - 1)``
frames with ``W = pipeline.sources.n_windows(N, 16000)``, i.e. exactly the frames needed
for grid window ``k`` (samples ``[1024 k, 1024 k + 10240)``) to own frames ``4k .. 4k + 39``;
the detector (``classifiers.detector``) then outputs exactly ``W`` frames.

Long signals are cut into chunks of ``chunk_frames`` frames, each transformed with
``context_frames`` of real neighbouring signal (or zeros) on each side, which are dropped
afterwards; chunk boundaries are multiples of 256 samples.  Measured on 40 s of music-like
audio in chunks of 200 frames, the largest error against the whole-signal transform of the
zero-extended signal is, by context per side: 0 frames 5.1 log1p units, 4: 3.3, 6: 0.86,
8: 0.09 (4.7e-6 of the largest raw coefficient), 10 and more: 0.005, the float32 rounding
floor (3.6e-7 relative).  The default :data:`CONTEXT_FRAMES` = 12 therefore meets
:data:`CHUNK_TOLERANCE` = 0.01 (``tests/test_features.py`` checks it).  Working memory is
one batch of chunks whatever the length: measured peak of the whole process about 0.5 GB
plus the signal and the output (10 minutes: 0.67 GB, of which 0.1 GB signal and features).

Speed (2 cores): Kymatio's torch frontend in float32 runs about 4x faster than its numpy
frontend (float64); chunks of 994 frames (a 2**18-point FFT, where Kymatio's own padding
fits exactly) batched 4 at a time run as fast as or faster than one whole-signal call.  One
Kymatio object per chunk length (2**15 .. 2**18 points; short tracks use the smallest that
holds them) is built once per process and cached.

Normalisation: :func:`fit_normalisation` returns a per-``(C, F)`` mean and std fitted on the
training features; the detector stores them as buffers inside its checkpoint
(``classifiers.detector``), so features on disk are stored un-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np
import torch

from pipeline.audio import AudioError
from pipeline.sources import FEATURE_RATE, n_windows

SCATTERING: dict[str, int] = dict(J=8, Q=8, T=256)
FRAME_SAMPLES: int = 256  # samples per scattering frame at 16 kHz (16 ms)
FRAMES_PER_WINDOW: int = 40  # 0.64 s grid window = 40 frames
FRAMES_PER_HOP: int = 4  # 64 ms grid hop = 4 frames
LOG_EPS: float = 1e-6  # log1p(S / LOG_EPS); see module docstring
CONTEXT_FRAMES: int = 12  # context per side for chunking (see CHUNK_TOLERANCE)
CHUNK_TOLERANCE: float = 1e-2  # max |chunked - whole| in log1p units at CONTEXT_FRAMES
# Kymatio pads its input by 3x the low-pass support (3783 samples at T=256) on each side to
# the next power of two; chunks of 2**k - 2 * 15 * 256 samples use exactly 2**k.
_KYMATIO_PAD_FRAMES: int = 15
_CHUNK_LOG2: tuple[int, ...] = (15, 16, 17, 18)  # padded FFT sizes of the cached objects
MAX_SEGMENT_FRAMES: int = (2 ** _CHUNK_LOG2[-1]) // FRAME_SAMPLES - 2 * _KYMATIO_PAD_FRAMES  # 994


@dataclass(frozen=True)
class ScatteringLayout:
    """Where Kymatio's coefficient rows go in the ``(C, F, T)`` tensor.

    ``rows[c, f]`` is the Kymatio output row (index into ``meta()['key']``) stored at
    channel ``c``, frequency row ``f``, or -1 where the path does not exist.
    ``keys[c][f]`` is the Kymatio key ``(n1,)`` or ``(n1, n2)`` there, or ``None``.
    """

    channels: int  # C = 7
    freqs: int  # F = 54 (number of order-1 filters)
    rows: np.ndarray  # (C, F) int64
    keys: tuple[tuple[tuple[int, ...] | None, ...], ...]
    order2_filters: tuple[int, ...]  # n2 of channels 1..C-1
    xi1_hz: np.ndarray  # (F,) centre frequency of first-order filter n1, Hz

    @property
    def present(self) -> np.ndarray:
        """``(C, F)`` bool: True where a coefficient exists."""
        return self.rows >= 0


@lru_cache(maxsize=None)
def _scattering(length: int):
    """The cached Kymatio torch Scattering1D for inputs of ``length`` samples."""
    from kymatio.torch import Scattering1D

    scat = Scattering1D(J=SCATTERING["J"], shape=length, Q=SCATTERING["Q"], T=SCATTERING["T"])
    if scat.pad_left % FRAME_SAMPLES:
        raise RuntimeError(f"Kymatio left padding {scat.pad_left} is not a multiple of {FRAME_SAMPLES}: "
                           "frames would not be centred on multiples of 256 samples")
    return scat


@lru_cache(maxsize=1)
def scattering_layout() -> ScatteringLayout:
    """The ``(C, F)`` layout derived from Kymatio's ``meta()`` for ``SCATTERING``."""
    from kymatio.scattering1d.utils import compute_meta_scattering

    meta = compute_meta_scattering(SCATTERING["J"], (SCATTERING["Q"], 1), SCATTERING["T"], 2,
                                   math.sqrt(0.5), 0.1, 5.0)
    keys = [tuple(int(i) for i in k) for k in meta["key"]]
    order1 = [k for k in keys if len(k) == 1]
    n2_values = sorted({k[1] for k in keys if len(k) == 2})
    freqs, channels = len(order1), 1 + len(n2_values)
    rows = np.full((channels, freqs), -1, dtype=np.int64)
    table: list[list[tuple[int, ...] | None]] = [[None] * freqs for _ in range(channels)]
    for row, key in enumerate(keys):
        if len(key) == 1:
            channel, freq = 0, key[0]
        elif len(key) == 2:
            channel, freq = 1 + n2_values.index(key[1]), key[0]
        else:
            continue  # order 0 is dropped
        rows[channel, freq] = row
        table[channel][freq] = key
    xi1 = np.array([meta["xi"][keys.index((n1,)), 0] for n1 in range(freqs)]) * FEATURE_RATE
    return ScatteringLayout(channels, freqs, rows, tuple(tuple(r) for r in table), tuple(n2_values), xi1)


def n_feature_frames(n_samples: int) -> int:
    """Scattering frames for a 16 kHz signal of ``n_samples``: ``40 + 4 * (n_windows - 1)``."""
    windows = n_windows(n_samples, FEATURE_RATE)
    if windows == 0:
        return 0
    return FRAMES_PER_WINDOW + FRAMES_PER_HOP * (windows - 1)


def raw_to_layout(raw: np.ndarray) -> np.ndarray:
    """Kymatio rows ``(..., 234, T)`` -> ``(..., C, F, T)`` with zeros for missing paths."""
    layout = scattering_layout()
    out = np.zeros(raw.shape[:-2] + (layout.channels, layout.freqs, raw.shape[-1]), dtype=raw.dtype)
    mask = layout.present
    out[..., mask, :] = raw[..., layout.rows[mask], :]
    return out


def log_compress(scattering: np.ndarray, eps: float = LOG_EPS) -> np.ndarray:
    """``log1p(max(S, 0) / eps)`` as float32 (Kymatio can return tiny negative values)."""
    return np.log1p(np.maximum(scattering, 0.0) / eps).astype(np.float32, copy=False)


def _check_signal(mono16k: np.ndarray) -> np.ndarray:
    signal = np.asarray(mono16k)
    if signal.ndim == 2 and signal.shape[0] == 1:
        signal = signal[0]
    if signal.ndim != 1:
        raise AudioError(f"expected mono audio of shape (samples,) or (1, samples), got {signal.shape}")
    if signal.shape[0] == 0:
        raise AudioError("audio has no samples")
    if not np.isfinite(signal).all():
        raise AudioError("audio contains NaN or Inf samples")
    return signal.astype(np.float32, copy=False)


def _zero_extended(signal: np.ndarray, start: int, length: int) -> np.ndarray:
    """``signal[start:start + length]`` with zeros where it runs outside the signal."""
    out = np.zeros(length, dtype=np.float32)
    first, last = max(start, 0), min(start + length, signal.shape[0])
    if last > first:
        out[first - start:last - start] = signal[first:last]
    return out


class FeatureExtractor:
    """Chunked scattering features: ``__call__(mono16k (samples,)) -> float32 (7, 54, T)``.

    ``chunk_frames`` frames are kept per chunk, each computed with ``context_frames`` of
    neighbouring signal per side (``chunk_frames + 2 * context_frames <= 994``, the largest
    cached Kymatio object, 2**18 padded samples).  A track shorter than one chunk uses the
    smallest cached object that holds it (zero-padded into it).  ``batch`` chunks go
    through Kymatio at once (working memory grows with ``batch``, not with the signal).
    ``num_threads`` sets torch's intra-op threads during the call (None: leave as is).
    """

    def __init__(self, chunk_frames: int | None = None, context_frames: int = CONTEXT_FRAMES,
                 batch: int = 4, num_threads: int | None = None, eps: float = LOG_EPS):
        if context_frames < 0:
            raise ValueError("context_frames must be >= 0")
        if chunk_frames is None:
            chunk_frames = MAX_SEGMENT_FRAMES - 2 * context_frames
        if chunk_frames < 1 or chunk_frames + 2 * context_frames > MAX_SEGMENT_FRAMES:
            raise ValueError(f"need 1 <= chunk_frames and chunk_frames + 2 * context_frames <= "
                             f"{MAX_SEGMENT_FRAMES}, got {chunk_frames} and {context_frames}")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.batch = batch
        self.num_threads = num_threads
        self.eps = eps

    def _segment_frames(self, n_frames: int) -> int:
        """Frames per Kymatio input: the smallest cached size holding one chunk with context."""
        need = min(n_frames, self.chunk_frames) + 2 * self.context_frames
        for log2 in _CHUNK_LOG2:
            size = 2 ** log2 // FRAME_SAMPLES - 2 * _KYMATIO_PAD_FRAMES
            if size >= need:
                return size
        return MAX_SEGMENT_FRAMES

    def scattering(self, mono16k: np.ndarray, n_frames: int | None = None) -> np.ndarray:
        """Raw (un-logged) coefficients in layout ``(C, F, n_frames)``, float32.

        ``n_frames`` defaults to :func:`n_feature_frames` of the signal length.
        """
        return self._run(mono16k, n_frames, compress=False)

    def __call__(self, mono16k: np.ndarray) -> np.ndarray:
        """Log-compressed features ``(7, 54, n_feature_frames(len(mono16k)))`` float32."""
        return self._run(mono16k, None, compress=True)

    def _run(self, mono16k: np.ndarray, n_frames: int | None, compress: bool) -> np.ndarray:
        signal = _check_signal(mono16k)
        if n_frames is None:
            n_frames = n_feature_frames(signal.shape[0])
        segment = self._segment_frames(n_frames)
        keep = segment - 2 * self.context_frames  # frames kept per segment (>= one chunk)
        step = min(self.chunk_frames, keep)
        starts = list(range(0, n_frames, step))
        ctx, hop = self.context_frames, FRAME_SAMPLES
        scat = _scattering(segment * hop)
        layout = scattering_layout()
        out = np.empty((layout.channels, layout.freqs, n_frames), dtype=np.float32)
        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                for first in range(0, len(starts), self.batch):
                    group = starts[first:first + self.batch]
                    batch = np.stack([_zero_extended(signal, (s - ctx) * hop, segment * hop) for s in group])
                    raw = scat(torch.from_numpy(batch)).numpy()  # (B, 234, segment)
                    for b, start in enumerate(group):
                        count = min(step, n_frames - start)
                        piece = raw_to_layout(raw[b, :, ctx:ctx + count])
                        out[..., start:start + count] = log_compress(piece, self.eps) if compress else piece
        finally:
            torch.set_num_threads(previous)
        return out


@lru_cache(maxsize=1)
def _default_extractor() -> FeatureExtractor:
    return FeatureExtractor()


def extract_features(mono16k: np.ndarray) -> np.ndarray:
    """Features ``(7, 54, T)`` float32 of a 16 kHz mono signal with the default extractor."""
    return _default_extractor()(mono16k)


def fit_normalisation(feature_iter: Iterable[np.ndarray], min_std: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Per-``(C, F)`` mean and std over all frames of ``feature_iter`` (arrays ``(C, F, T)``).

    Returns float32 arrays of shape ``(C, F, 1)``.  Rows that never vary (the missing
    order-2 paths, always 0) get std 1 so that they stay 0 after normalisation.  The result
    is stored inside the detector checkpoint (``classifiers.detector``).
    """
    total = squares = None
    count = 0
    for feats in feature_iter:
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 3:
            raise ValueError(f"features must be (C, F, T), got {feats.shape}")
        if total is None:
            total = np.zeros(feats.shape[:2])
            squares = np.zeros(feats.shape[:2])
        total += feats.sum(axis=-1)
        squares += np.square(feats).sum(axis=-1)
        count += feats.shape[-1]
    if total is None or count == 0:
        raise ValueError("fit_normalisation needs at least one frame of features")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    std = np.where(std < min_std, 1.0, std)
    return mean[..., None].astype(np.float32), std[..., None].astype(np.float32)
