"""Scattering features of the 16 kHz mono mixture, laid out as ``(C, F, T)`` for the detector.

Order-2 1D scattering (Kymatio 0.3.0, torch frontend) with ``J=8, Q=8, T=256`` (paper appendix A):
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
plus the signal and the output when a whole signal is given (10 minutes: 0.67 GB, of which
0.1 GB signal and features).

Streaming: :meth:`FeatureExtractor.stream` takes the signal as consecutive blocks (e.g. from
``pipeline.audio.io.stream``) and yields the features as ``(C, F, t)`` pieces; it runs the very
same chunks, batches and Kymatio calls as the whole-signal call, so the result is bit-identical
(not merely within :data:`CHUNK_TOLERANCE`), including the last frames and tracks shorter
than one chunk.  The frame count ``n_feature_frames(N)`` needs the total length ``N``: chunks
are computed as soon as their samples (with context) have arrived, frames are released once
``n_feature_frames`` of the samples so far proves they exist, and the last chunk(s) are
computed zero-extended when the stream ends.  Tracks shorter than one chunk (about 15.5 s)
are buffered until the end, since their Kymatio object size depends on the length.  Memory:
one chunk of signal, one batch of chunks and one batch of features.  Results depend on
torch's intra-op thread count at float-rounding level (up to 1.4e-3 log1p units on
near-silent frames between 1 and 2 threads), so compare runs with equal ``num_threads``.

Packing: a track shorter than one chunk still costs a whole Kymatio input (an 8 s track,
500 frames plus context, needs the 2**18-point object, as long as 16 s).
:meth:`FeatureExtractor.packed` computes several whole signals as one stream: each placed
at a frame boundary, :data:`PACK_GAP_FRAMES` (= :data:`CONTEXT_FRAMES`) frames of zeros
after the farther of its last frame and its last sample, and the stream chunked as a
long track; each signal's frames are cut back out.  What a frame of a signal sees within
the context is that signal and zeros, as when it is transformed alone, so the features are
its solo features up to float32 rounding: measured on music-like signals of 0.7 to 40 s,
the raw coefficients differ by at most 3.2e-7 of the signal's largest coefficient
(``tests/test_features.py`` asserts 1e-5), which is up to 6e-3 log1p units on near-silent
coefficients (as between 1 and 2 threads, above).

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
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from pipeline import rejects
from pipeline.audio.io import AudioError
from pipeline.sources import FEATURE_FRAME_SAMPLES, FEATURE_RATE, FRAMES_PER_HOP, FRAMES_PER_WINDOW, n_windows

SCATTERING: dict[str, int] = dict(J=8, Q=8, T=FEATURE_FRAME_SAMPLES)
FRAME_SAMPLES: int = FEATURE_FRAME_SAMPLES  # samples per scattering frame at 16 kHz (16 ms)
LOG_EPS: float = 1e-6  # log1p(S / LOG_EPS); see module docstring
CONTEXT_FRAMES: int = 12  # context per side for chunking (see CHUNK_TOLERANCE)
CHUNK_TOLERANCE: float = 1e-2  # max |chunked - whole| in log1p units at CONTEXT_FRAMES
# Kymatio pads its input by 3x the low-pass support (3783 samples at T=256) on each side to
# the next power of two; chunks of 2**k - 2 * 15 * 256 samples use exactly 2**k.
_KYMATIO_PAD_FRAMES: int = 15
_CHUNK_LOG2: tuple[int, ...] = (15, 16, 17, 18)  # padded FFT sizes of the cached objects
MAX_SEGMENT_FRAMES: int = (2 ** _CHUNK_LOG2[-1]) // FRAME_SAMPLES - 2 * _KYMATIO_PAD_FRAMES  # 994
PACK_GAP_FRAMES: int = CONTEXT_FRAMES  # zeros between packed signals, frames (see "Packing")


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


def check_signal(mono16k: np.ndarray) -> np.ndarray:
    """A whole signal as float32 ``(n,)``, n >= 1; raises :class:`AudioError` otherwise."""
    signal = check_block(mono16k)
    if signal.shape[0] == 0:
        raise AudioError("audio has no samples", kind=rejects.NO_SAMPLES)
    return signal


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

    def _plan(self, n_frames: int) -> tuple[int, int]:
        """``(segment, step)``: frames per Kymatio input and frames kept per chunk for a track of ``n_frames``."""
        segment = self._segment_frames(n_frames)
        return segment, min(self.chunk_frames, segment - 2 * self.context_frames)

    def scattering(self, mono16k: np.ndarray, n_frames: int | None = None) -> np.ndarray:
        """Raw (un-logged) coefficients in layout ``(C, F, n_frames)``, float32.

        ``n_frames`` defaults to :func:`n_feature_frames` of the signal length.
        """
        return self._run(mono16k, n_frames, compress=False)

    def __call__(self, mono16k: np.ndarray) -> np.ndarray:
        """Log-compressed features ``(7, 54, n_feature_frames(len(mono16k)))`` float32."""
        return self._run(mono16k, None, compress=True)

    def stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Features of a 16 kHz mono signal given as consecutive blocks, as ``(7, 54, t)`` pieces.

        ``blocks`` are float32 ``(n,)`` or ``(1, n)`` arrays of any sizes; the pieces, in time
        order, concatenate to exactly ``self(np.concatenate(blocks))`` (bit for bit: the same
        chunks, batches and Kymatio calls).  Working memory: one batch of chunks plus one
        chunk of signal and of features, whatever the length.  Raises :class:`AudioError`
        for an empty signal or non-finite samples (the latter when the block arrives).
        """
        return self._pieces(blocks, None, compress=True)

    def packed(self, signals: Sequence[np.ndarray], compress: bool = True) -> list[np.ndarray]:
        """Log-compressed features of several whole 16 kHz mono signals computed in shared
        chunks (module docstring, "Packing"): one ``(7, 54, n_feature_frames(len(x)))`` float32
        array per signal, equal to ``self(x)`` up to float32 rounding (bit for bit for a single
        signal); raw coefficients (as :meth:`scattering`) with ``compress=False``.  Raises
        :class:`AudioError` for an empty or non-finite signal."""
        checked = [check_signal(x) for x in signals]
        if not checked:
            return []
        starts, total = pack_layout([x.shape[0] for x in checked])
        last = checked[-1].shape[0]
        stream = np.zeros(max(starts[-1] * FRAME_SAMPLES + last, total * FRAME_SAMPLES), np.float32)
        for start, x in zip(starts, checked):
            stream[start * FRAME_SAMPLES:start * FRAME_SAMPLES + x.shape[0]] = x
        features = self._run(stream, total, compress=compress)
        return [features[..., start:start + n_feature_frames(x.shape[0])].copy() for start, x in zip(starts, checked)]

    def _run(self, mono16k: np.ndarray, n_frames: int | None, compress: bool) -> np.ndarray:
        signal = check_signal(mono16k)
        total = n_feature_frames(signal.shape[0]) if n_frames is None else n_frames
        layout = scattering_layout()
        out = np.empty((layout.channels, layout.freqs, total), dtype=np.float32)
        done = 0
        for piece in self._pieces([signal], n_frames, compress):
            out[..., done:done + piece.shape[-1]] = piece
            done += piece.shape[-1]
        return out

    def _pieces(self, blocks: Iterable[np.ndarray], n_frames: int | None, compress: bool) -> Iterator[np.ndarray]:
        """The chunked transform over a stream of signal blocks (see :meth:`stream`).

        Chunk ``s`` (frames ``[s, s + step)``) reads samples ``[(s - ctx) * 256, (s - ctx +
        segment) * 256)``; it is computed as soon as those samples have arrived (or at the
        end of the stream, zero-extended), in consecutive batches of ``batch`` chunks.  The
        plan ``(segment, step)`` depends on the total frame count only below one chunk, so
        it is fixed once ``n_feature_frames(samples so far) >= chunk_frames`` or at the end.
        Frames are yielded once they are known to exist (below ``n_feature_frames`` of the
        samples so far); the last ones when the stream ends.
        """
        ctx, hop = self.context_frames, FRAME_SAMPLES
        plan = self._plan(n_frames) if n_frames is not None else None
        buffer, buffer_start, seen = np.zeros(0, np.float32), 0, 0  # buffer = samples [buffer_start, seen)
        next_start, emitted = 0, 0
        group: list[tuple[int, np.ndarray]] = []
        held: list[np.ndarray] = []  # computed frames [emitted, ...) not yet yielded

        def take(start: int, segment: int) -> None:
            group.append((start, _window(buffer, buffer_start, (start - ctx) * hop, segment * hop)))

        def flush(step: int, limit: int | None) -> None:
            for start, piece in zip((s for s, _ in group), self._scatter([x for _, x in group])):
                count = step if limit is None else min(step, limit - start)
                piece = raw_to_layout(piece[:, ctx:ctx + count])
                held.append(log_compress(piece, self.eps) if compress else piece)
            group.clear()

        def release(bound: int) -> Iterator[np.ndarray]:
            nonlocal emitted, held
            if not held or bound <= emitted:
                return
            frames = held[0] if len(held) == 1 else np.concatenate(held, axis=-1)
            count = min(bound - emitted, frames.shape[-1])
            yield frames[..., :count]
            emitted += count
            held = [frames[..., count:]] if count < frames.shape[-1] else []

        for block in blocks:
            block = check_block(block)
            if block.size == 0:
                continue
            buffer = np.concatenate([buffer, block]) if buffer.size else block
            seen += block.size
            if plan is None and n_feature_frames(seen) >= self.chunk_frames:
                plan = self._plan(self.chunk_frames)  # the plan of every track of >= chunk_frames
            if plan is None:
                continue
            segment, step = plan
            bound = n_frames if n_frames is not None else n_feature_frames(seen)
            while next_start < bound and (next_start - ctx + segment) * hop <= seen:
                take(next_start, segment)
                next_start += step
                if len(group) == self.batch:
                    flush(step, n_frames)
                    yield from release(bound)
            keep_from = max(0, (next_start - ctx) * hop)
            if keep_from > buffer_start:
                buffer = buffer[keep_from - buffer_start:].copy()
                buffer_start = keep_from
        if seen == 0:
            raise AudioError("audio has no samples", kind=rejects.NO_SAMPLES)
        total = n_frames if n_frames is not None else n_feature_frames(seen)
        segment, step = plan if plan is not None else self._plan(total)
        while next_start < total:
            take(next_start, segment)
            next_start += step
            if len(group) == self.batch:
                flush(step, total)
        if group:
            flush(step, total)
        yield from release(total)

    def _scatter(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Kymatio on a batch of equal-length inputs: ``(B, 234, segment)`` float32."""
        scat = _scattering(inputs[0].shape[0])
        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                return scat(torch.from_numpy(np.stack(inputs))).numpy()
        finally:
            torch.set_num_threads(previous)


def pack_span(length: int, gap_frames: int = PACK_GAP_FRAMES) -> int:
    """Frames from the start of a packed signal of ``length`` samples to the start of the next:
    the farther of its last frame and its last sample, then ``gap_frames`` of zeros."""
    return max(n_feature_frames(length), -(-int(length) // FRAME_SAMPLES)) + gap_frames


def pack_layout(lengths: Sequence[int], gap_frames: int = PACK_GAP_FRAMES) -> tuple[list[int], int]:
    """Where :meth:`FeatureExtractor.packed` puts signals of ``lengths`` samples: the first
    frame of each in the packed stream (see :func:`pack_span`), and the stream's frame count
    (through the last signal's last frame)."""
    starts, position = [], 0
    for length in lengths:
        starts.append(position)
        position += pack_span(length, gap_frames)
    total = starts[-1] + n_feature_frames(lengths[-1]) if starts else 0
    return starts, total


def check_block(block: np.ndarray) -> np.ndarray:
    """A stream block as float32 ``(n,)``; raises :class:`AudioError` for bad shapes or values."""
    block = np.asarray(block)
    if block.ndim == 2 and block.shape[0] == 1:
        block = block[0]
    if block.ndim != 1:
        raise AudioError(f"expected mono audio of shape (samples,) or (1, samples), got {block.shape}",
                         kind=rejects.OTHER)
    if not np.isfinite(block).all():
        raise AudioError("audio contains NaN or Inf samples", kind=rejects.NOT_FINITE)
    return block.astype(np.float32, copy=False)


def _window(buffer: np.ndarray, buffer_start: int, start: int, length: int) -> np.ndarray:
    """Samples ``[start, start + length)`` of a signal of which ``buffer`` holds ``[buffer_start, ...)``,
    with zeros outside the buffer (before the track, or after the samples seen so far)."""
    out = np.zeros(length, dtype=np.float32)
    first, last = max(start, buffer_start), min(start + length, buffer_start + buffer.shape[0])
    if start < buffer_start and buffer_start > 0:
        raise RuntimeError("chunk reads samples already dropped from the stream buffer")
    if last > first:
        out[first - start : last - start] = buffer[first - buffer_start : last - buffer_start]
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
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std < min_std, 1.0, std)
    return mean[..., None].astype(np.float32), std[..., None].astype(np.float32)
