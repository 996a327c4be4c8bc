"""Applying a trained separator to audio of any length: chunked overlap-add, whole or streamed,
and the ``silentmine separate`` command's work (files in, one FLAC per source out).

Overlap-add (:func:`overlap_add`): a mixture ``(channels, samples)`` is cut into segments of
``segment`` samples that start every ``segment - overlap`` samples (the last one zero-padded
to full length); each is separated (padded to the model's valid length and trimmed back,
:func:`pipeline.separation.contract.separate`) and the outputs are blended with triangular
weights (:func:`crossfade_weights`, > 0 everywhere) normalised by the summed weights, so a
model that returns its input gives the input back exactly.  :func:`separate_track` does it for
a whole array at the model's rate (Evaluate, the extraction's second opinion);
:class:`StreamingOverlapAdd` does the same on a signal that arrives in blocks, with the same
segments, batches and sums (so the same samples), holding only about ``segment + batch_size
x hop`` samples at a time: memory does not grow with the file's length.

Files (:func:`separate_file`, :func:`separate_files`): any file the catalog reads
(:mod:`pipeline.audio.io`: WAV, FLAC, Ogg, MP3, Opus, AAC/M4A, ...), decoded block by block,
resampled to the model's rate and given its channel count (soxr, streaming); the estimates
go back to the file's rate (soxr, streaming) and channel count (a mono file gets the
channels' mean, a file of more channels than the model's gets each estimate's mean on every
channel), are clipped to [-1, 1] (the clipped samples are counted) and written as 24-bit FLAC,
``<out>/<file name without extension>/<source>.flac``, each exactly as long as the file.  A
file's folder is written under a temporary name and renamed when all its stems are complete,
so a killed run never leaves stems that look finished.  A file that cannot be read is refused
with its reason and the others go on.

The separator (:func:`resolve_run`): a checkpoint file (``best.pt``, ``checkpoint.pt``), a
TrainSeparator output folder, or a TrainSeparator key (its ``best.pt`` under
``<data_root>/separator/<key>/``; a unique prefix of at least 6 characters will do).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from pipeline.audio import io as audio
from pipeline.progress import progress_bar
from pipeline.separation.contract import Separator, separate
from pipeline.separation.registry import load_model
from pipeline.sources import SOURCES
from pipeline.storage.outputs import atomic_path

log = logging.getLogger(__name__)

SEGMENT_S = 8.0  # seconds per segment
OVERLAP_S = 2.0  # seconds shared by consecutive segments
BATCH_SIZE = 4  # segments per forward pass
FLAC_SUBTYPE = "PCM_24"
FLAC_MAX_CHANNELS = 8
TAIL_SAMPLES = 4096  # output samples held back per stem, so its length can be made the file's exactly
MIN_KEY_PREFIX = 6
SEPARATOR_STAGE = "separator"  # TrainSeparator's folder under the data root


class SeparateError(ValueError):
    """The separation cannot start (an unknown run, clashing outputs); ``str(err)`` says why."""


def crossfade_weights(segment: int) -> torch.Tensor:
    """Triangular weights ``(segment,)``, rising from 1 to the centre and back, all > 0."""
    half = segment // 2
    up = torch.arange(1, half + 1, dtype=torch.float32)
    down = torch.arange(segment - half, 0, -1, dtype=torch.float32)
    return torch.cat([up, down])


def _segment_count(length: int, segment: int, hop: int) -> int:
    return 1 + max(0, math.ceil((length - segment) / hop))


def _check_segment(segment: int, overlap: int) -> None:
    if not 0 <= overlap < segment:
        raise ValueError(f"need 0 <= overlap < segment, got overlap={overlap}, segment={segment}")


def overlap_add(fn: Callable[[torch.Tensor], torch.Tensor], mix: torch.Tensor, segment: int, overlap: int,
                batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, segment)`` -> ``(B, ..., C, segment)``) to overlapping segments of
    ``mix`` ``(C, T)`` and blend them: returns ``(..., C, T)``.

    Segments start every ``segment - overlap`` samples; the mixture is zero-padded at its end
    so the last segment is full length, and the result is cut back to ``T``.
    """
    _check_segment(segment, overlap)
    channels, length = mix.shape
    hop = segment - overlap
    count = _segment_count(length, segment, hop)
    padded = torch.nn.functional.pad(mix, (0, (count - 1) * hop + segment - length))
    weights = crossfade_weights(segment).to(mix.device)
    out: torch.Tensor | None = None
    total = torch.zeros(padded.shape[-1], device=mix.device)
    for first in range(0, count, batch_size):
        starts = [k * hop for k in range(first, min(count, first + batch_size))]
        chunks = torch.stack([padded[:, s:s + segment] for s in starts])
        result = fn(chunks)
        if out is None:
            out = torch.zeros(*result.shape[1:-1], padded.shape[-1], dtype=result.dtype, device=mix.device)
        for k, s in enumerate(starts):
            out[..., s:s + segment] += result[k] * weights
            total[s:s + segment] += weights
    return (out / total)[..., :length]


class StreamingOverlapAdd:
    """:func:`overlap_add` of a signal ``(C, T)`` that arrives in blocks ``(C, n)``.

    :meth:`push` a block and get back the output samples ``(..., C, m)`` no later segment can
    change (possibly none); :meth:`finish` at the end of the signal returns the rest, so the
    outputs concatenated are :func:`overlap_add` of the whole signal (same segments, batches
    and sums).  Holds at most about ``segment + batch_size x hop`` input and output samples.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], segment: int, overlap: int,
                 batch_size: int = BATCH_SIZE, device: str | torch.device = "cpu") -> None:
        _check_segment(segment, overlap)
        self.fn, self.segment, self.hop, self.batch_size = fn, segment, segment - overlap, batch_size
        self.device = torch.device(device)
        self.weights = crossfade_weights(segment).to(self.device)
        self.base = 0  # signal index of the first held sample
        self.received = 0  # samples pushed so far
        self.next_segment = 0  # index of the next segment to separate
        self.inputs: torch.Tensor | None = None  # (C, received - base)
        self.out: torch.Tensor | None = None  # (..., C, held) sums of weighted outputs from base
        self.total = torch.zeros(0, device=self.device)  # their summed weights
        self.done = False

    def push(self, block: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """Add ``(C, n)`` samples; the output samples now final, or None."""
        if self.done:
            raise RuntimeError("the signal has ended: push after finish")
        block = torch.as_tensor(np.ascontiguousarray(block, dtype=np.float32)).to(self.device)
        self.inputs = block if self.inputs is None else torch.cat([self.inputs, block], dim=1)
        self.received += block.shape[1]
        return self._advance(end=False)

    def finish(self) -> torch.Tensor | None:
        """End the signal; the output samples not returned yet (None for an empty signal)."""
        if self.done:
            raise RuntimeError("finish was already called")
        if self.received == 0:
            self.done = True
            return None
        out = self._advance(end=True)
        self.done = True
        return out

    def _ready(self, end: bool) -> tuple[list[int], bool]:
        """The next batch of segments to separate (mid-signal only a whole batch; at the end what
        is left), and whether no further segment is needed."""
        ready: list[int] = []
        while len(ready) < self.batch_size:
            k = self.next_segment + len(ready)
            if k > 0 and (k - 1) * self.hop + self.segment >= self.received:  # segment k-1 reaches the end so far
                return (ready, True) if end else ([], False)
            if not end and self.received < k * self.hop + self.segment:
                return [], False
            ready.append(k)
        return ready, False

    def _advance(self, end: bool) -> torch.Tensor | None:
        pieces = []
        while True:
            ready, complete = self._ready(end)
            if ready:
                self._separate(ready)
            if complete:
                pieces.append(self._emit(self.received))
                break
            if not ready:
                break
            # No later segment starts before the next one (at the end, that may lie past the signal).
            pieces.append(self._emit(min(self.next_segment * self.hop, self.received)))
        pieces = [piece for piece in pieces if piece is not None]
        return torch.cat(pieces, dim=-1) if pieces else None

    def _separate(self, segments: list[int]) -> None:
        chunks = []
        for k in segments:
            start = k * self.hop - self.base
            piece = self.inputs[:, start:start + self.segment]
            chunks.append(torch.nn.functional.pad(piece, (0, self.segment - piece.shape[1])))
        result = self.fn(torch.stack(chunks))
        need = segments[-1] * self.hop - self.base + self.segment
        if self.out is None:
            self.out = torch.zeros(*result.shape[1:-1], 0, dtype=result.dtype, device=self.device)
        if self.out.shape[-1] < need:
            self.out = torch.nn.functional.pad(self.out, (0, need - self.out.shape[-1]))
            self.total = torch.nn.functional.pad(self.total, (0, need - self.total.shape[0]))
        for index, k in enumerate(segments):
            start = k * self.hop - self.base
            self.out[..., start:start + self.segment] += result[index] * self.weights
            self.total[start:start + self.segment] += self.weights
        self.next_segment = segments[-1] + 1

    def _emit(self, final: int) -> torch.Tensor | None:
        """The outputs of signal samples ``[base, final)``, dropped from what is held."""
        count = final - self.base
        if count <= 0 or self.out is None:
            return None
        out = self.out[..., :count] / self.total[:count]
        self.out, self.total = self.out[..., count:], self.total[count:]
        self.inputs = self.inputs[:, count:]
        self.base = final
        return out


def _segment_samples(model: Separator, segment_s: float, overlap_s: float,
                     length: int | None = None) -> tuple[int, int]:
    """``(segment, overlap)`` in samples at the model's rate (the segment no longer than ``length``)."""
    rate = model.config.sample_rate
    segment = round(segment_s * rate)
    if length is not None:
        segment = min(segment, length)
    return segment, min(round(overlap_s * rate), segment - 1)


@torch.no_grad()
def separate_track(model: Separator, mix: np.ndarray, segment_s: float = SEGMENT_S, overlap_s: float = OVERLAP_S,
                   device: str | torch.device = "cpu", batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Separate a whole mixture ``(channels, samples)`` at the model's rate: ``(sources, channels, samples)``."""
    model.eval()
    segment, overlap = _segment_samples(model, segment_s, overlap_s, mix.shape[-1])
    x = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32)).to(device)
    estimates = overlap_add(lambda chunk: separate(model, chunk), x, segment, overlap, batch_size)
    return estimates.cpu().numpy()


@torch.no_grad()
def separate_stream(model: Separator, blocks: Iterable[np.ndarray], segment_s: float = SEGMENT_S,
                    overlap_s: float = OVERLAP_S, device: str | torch.device = "cpu",
                    batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
    """:func:`separate_track` of a mixture given as blocks ``(channels, n)`` at the model's rate:
    yields blocks of estimates ``(sources, channels, m)`` whose concatenation is the same
    (a mixture shorter than one segment must be given whole to match it exactly)."""
    model.eval()
    segment, overlap = _segment_samples(model, segment_s, overlap_s)
    stream = StreamingOverlapAdd(lambda chunk: separate(model, chunk), segment, overlap, batch_size, device)
    for block in blocks:
        out = stream.push(block)
        if out is not None:
            yield out.cpu().numpy()
    out = stream.finish()
    if out is not None:
        yield out.cpu().numpy()


# ---------------------------------------------------------------------------- files
def resolve_run(run: str | os.PathLike, data_root: str | os.PathLike = "data") -> Path:
    """The checkpoint ``run`` names (module docstring); :class:`SeparateError` when none."""
    path = Path(run)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        raise SeparateError(f"{path} holds no best.pt: give a checkpoint file or a TrainSeparator output folder")
    stage = Path(data_root) / SEPARATOR_STAGE
    name = str(run)
    if len(name) >= MIN_KEY_PREFIX and stage.is_dir() and "/" not in name:
        found = sorted(p for p in stage.iterdir() if p.name.startswith(name) and (p / "best.pt").is_file())
        if len(found) == 1:
            return found[0] / "best.pt"
        if len(found) > 1:
            raise SeparateError(f"key prefix {name!r} matches {len(found)} separators: "
                                f"{', '.join(p.name for p in found[:5])}")
    raise SeparateError(f"no separator {name!r}: not a checkpoint file, not a folder with best.pt, and no "
                        f"TrainSeparator key under {stage} (with at least {MIN_KEY_PREFIX} characters)")


class _StemWriter:
    """One source's output file: estimates ``(model channels, n)`` at the model's rate in, FLAC at
    the file's rate and channels out; the last :data:`TAIL_SAMPLES` are held back so that
    :meth:`close` can make the stem exactly as long as the file."""

    def __init__(self, path: Path, model_rate: int, file_rate: int, model_channels: int, file_channels: int) -> None:
        self.file = sf.SoundFile(str(path), "w", samplerate=file_rate, channels=file_channels, format="FLAC",
                                 subtype=FLAC_SUBTYPE)
        self.resampler = (soxr.ResampleStream(model_rate, file_rate, model_channels, dtype="float32", quality="HQ")
                          if model_rate != file_rate else None)
        self.model_channels, self.file_channels = model_channels, file_channels
        self.pending = np.zeros((0, file_channels), dtype=np.float32)  # (n, channels): soundfile's layout
        self.written = self.clipped = 0

    def write(self, block: np.ndarray, last: bool = False) -> None:
        """Add ``(model channels, n)`` samples at the model's rate (``last``: the end of the signal)."""
        frames = np.ascontiguousarray(block.T, dtype=np.float32)
        if self.resampler is not None:
            frames = np.asarray(self.resampler.resample_chunk(frames, last=last), dtype=np.float32)
            frames = frames.reshape(-1, self.model_channels)
        frames = audio.match_channels(frames.T, self.file_channels).T
        self.pending = np.concatenate([self.pending, frames])
        if len(self.pending) > TAIL_SAMPLES:
            self._write(self.pending[:-TAIL_SAMPLES])
            self.pending = self.pending[-TAIL_SAMPLES:]

    def _write(self, frames: np.ndarray) -> None:
        self.clipped += int(np.count_nonzero(np.abs(frames) > 1.0))
        self.file.write(np.clip(frames, -1.0, 1.0))
        self.written += len(frames)

    def close(self, frames: int) -> None:
        """Write the rest, cut or zero-padded at its end to ``frames`` samples per channel, and close."""
        if self.resampler is not None:
            self.write(np.zeros((self.model_channels, 0), np.float32), last=True)
        rest = frames - self.written
        if rest < 0:
            raise RuntimeError(f"the stem is already longer ({self.written}) than its file ({frames} samples)")
        tail = self.pending[:rest]
        self._write(np.concatenate([tail, np.zeros((rest - len(tail), self.file_channels), np.float32)]))
        self.file.close()

    def abort(self) -> None:
        self.file.close()


@dataclass
class Separated:
    """One file separated: the ``stems`` written (source -> FLAC path) into ``folder``, its length
    in ``seconds``, and ``clipped`` samples (over every stem and channel) cut to [-1, 1]."""

    path: Path
    folder: Path
    stems: dict[str, Path]
    seconds: float
    clipped: int


@dataclass
class Refused:
    """A file that was not separated, and why."""

    path: Path
    reason: str


@dataclass
class SeparationReport:
    """What :func:`separate_files` did, file by file; :meth:`lines` says it in words, and
    :attr:`exit_status` is 0 when every file was separated, else 1."""

    checkpoint: Path
    separated: list[Separated] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return 1 if self.refused else 0

    def lines(self) -> list[str]:
        out = [f"separated with {self.checkpoint}"]
        for done in self.separated:
            clipped = f", {done.clipped} samples clipped to [-1, 1]" if done.clipped else ""
            out.append(f"{done.path}: {len(done.stems)} stems of {done.seconds:.1f} s in {done.folder}{clipped}")
        out += [f"{refused.path}: refused: {refused.reason}" for refused in self.refused]
        return out


def separate_file(model: Separator, path: str | os.PathLike, folder: str | os.PathLike,
                  segment_s: float = SEGMENT_S, overlap_s: float = OVERLAP_S, device: str | torch.device = "cpu",
                  progress: bool = True) -> Separated:
    """Separate the audio file ``path`` into ``folder/<source>.flac`` (module docstring); raises
    :class:`pipeline.audio.io.AudioError` for a file that cannot be read."""
    path, folder = Path(path), Path(folder)
    info = audio.probe(path)
    if info.channels > FLAC_MAX_CHANNELS:
        raise audio.AudioError(f"the file has {info.channels} channels; FLAC holds at most {FLAC_MAX_CHANNELS}")
    rate, channels = model.config.sample_rate, model.config.audio_channels
    segment, _ = _segment_samples(model, segment_s, overlap_s)
    short = info.frames * rate < 2 * segment * info.sample_rate  # separated whole, as separate_track does
    with audio.open_stream(path, sample_rate=rate) as decoded, atomic_path(folder) as tmp:
        tmp.mkdir()
        file_rate, file_channels = decoded.file_rate, decoded.file_channels
        writers = {name: _StemWriter(tmp / f"{name}.flac", rate, file_rate, channels, file_channels)
                   for name in SOURCES}
        try:
            blocks = (audio.match_channels(block, channels) for block in decoded)
            if short:
                whole = list(blocks)
                if not whole:
                    raise audio.AudioError(f"no samples left at the separator's {rate} Hz")
                outputs: Iterable[np.ndarray] = [separate_track(model, np.concatenate(whole, axis=1), segment_s,
                                                                overlap_s, device)]
            else:
                outputs = separate_stream(model, blocks, segment_s, overlap_s, device)
            with progress_bar(total=round(info.duration_s), unit="s", desc=path.name, disable=not progress,
                              leave=False) as bar:
                done = 0  # samples at the model's rate
                for estimates in outputs:
                    for index, name in enumerate(SOURCES):
                        writers[name].write(estimates[index])
                    done += estimates.shape[-1]
                    bar.update(min(round(done / rate), bar.total) - bar.n)
            for writer in writers.values():
                writer.close(decoded.samples_read)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
    clipped = sum(writer.clipped for writer in writers.values())
    if clipped:
        log.warning("%s: %d samples of the stems were beyond [-1, 1] and clipped", path, clipped)
    return Separated(path, folder, {name: folder / f"{name}.flac" for name in SOURCES},
                     decoded.samples_read / file_rate, clipped)


def output_name(path: Path) -> str:
    """The folder name of ``path``'s stems: its name without the extension (``.stem.mp4`` as one)."""
    return path.name[:-len(".stem.mp4")] if path.name.endswith(".stem.mp4") else path.stem


def separate_files(files: Iterable[str | os.PathLike], run: str | os.PathLike, out: str | os.PathLike,
                   data_root: str | os.PathLike = "data", segment_s: float = SEGMENT_S,
                   overlap_s: float = OVERLAP_S, device: str | torch.device = "cpu",
                   progress: bool = True) -> SeparationReport:
    """``silentmine separate``: each of ``files`` into ``out/<name>/<source>.flac`` with the
    separator ``run`` (:func:`resolve_run`).  A file that cannot be read is refused with its
    reason (:class:`Refused`) and the others go on; :class:`SeparateError` when the run is
    unknown or two files would write the same folder."""
    files = [Path(f) for f in files]
    if not files:
        raise SeparateError("no file to separate")
    folders = [Path(out) / output_name(f) for f in files]
    clash = {str(d) for d in folders if folders.count(d) > 1}
    if clash:
        raise SeparateError(f"several files would write to {sorted(clash)}: separate them into different --out folders")
    checkpoint = resolve_run(run, data_root)
    model = load_model(checkpoint, device)
    log.info("separating with %s (%s at %s Hz)", checkpoint, model.name, model.config.sample_rate)
    report = SeparationReport(checkpoint)
    jobs = list(zip(files, folders))
    for path, folder in progress_bar(jobs, desc="files", unit="file", disable=not progress or len(jobs) < 2):
        try:
            report.separated.append(separate_file(model, path, folder, segment_s, overlap_s, device, progress))
        except audio.AudioError as err:
            report.refused.append(Refused(path, str(err)))
            log.warning("refused %s: %s", path, err)
    return report
