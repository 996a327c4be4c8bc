"""Cut the excerpts of D_i from catalog tracks where the detector says source i is silent.

**Runs.**  Frame ``k`` of the shared grid is the window ``[k * HOP_S, k * HOP_S + WINDOW_S)``
seconds (64 ms hop, 0.64 s window; ``pipeline.sources``).  For a calibrated source i, a *run*
is a maximal stretch of consecutive frames ``a .. b-1`` with ``P_i >= p_i``; with ``max_gap > 0``
(frames) dips below ``p_i`` of at most ``max_gap`` frames between two such stretches stay
inside the run and the excerpt (:func:`find_runs`; 0 is the paper's rule).  The run rule,
``min_seconds`` and ``max_gap``, is one value, :class:`RunRule`, that extraction, calibration
and the measurement against ground truth share.

**Second opinion.**  With a :class:`SecondOpinion` (Extract's ``separator``), each excerpt the
duration rule keeps is separated by a trained separator before it is renamed into place (a
:data:`Scorer`: :class:`pipeline.separation.evaluation.SeparatorScorer` in the pipeline) and the
estimated relative volume of its source per grid window,
``10 log10(||s_i_hat||^2 / ||m||^2)`` (:func:`separator_volumes`), is stored as
``separator_db_mean`` / ``separator_db_max``; an excerpt whose mean is above ``max_db`` is
dropped.

**The duration rule.**  A run covers the union of its windows, ``[a * HOP_S, (b-1) * HOP_S +
WINDOW_S)`` seconds, clipped to the track's length; it is kept when that span is at least
``min_seconds`` (5 s by default; a 1e-9 s tolerance absorbs float rounding).  Unclipped, ``m`` frames span
``(m-1) * HOP_S + WINDOW_S`` seconds, so :func:`min_frames_for` gives the fewest frames that can
qualify (70 frames = 5.056 s for 5 s; 69 frames span 4.992 s), and clipping at the track's end
can only remove runs, never add them.

**Audio.**  Excerpts are cut from the original file at its own rate and channel count in one
streaming pass (``pipeline.audio.io.open_stream``, blocks of ``BLOCK_FRAMES`` samples, float32):
every candidate run (source runs may overlap) gets a FLAC writer under a hidden temporary name
(:func:`pipeline.storage.outputs.tmp_name`) that receives its samples block by block, so memory does
not grow with the track.  The track's length is only known at the end of the pass; runs are
written unclipped up to the end of the stream, then the duration rule below is applied with
the decoded length, the kept excerpts are renamed into place (``atomic_path``) and the others
deleted.  If decoding fails anywhere (NaN/Inf samples, a corrupt block, a decoder error), every
temporary of the track is deleted: no excerpt of a rejected track becomes visible.  Writing a
FLAC in blocks gives the same bytes as writing it at once.  An excerpt whose samples are all
0 after quantisation (digital silence: a dead file, the gap before a hidden track) is not
written: it holds nothing for the remix step to learn from.  Sample offsets are
``start_sample = round(start_s * sr)`` and ``end_sample = min(round(end_s * sr), n_samples)``;
``start_s``/``end_s`` in the index are the grid times of the rule above.  Each excerpt is a FLAC
file at ``<run_dir>/audio/<source>/<track_id[:2]>/<excerpt_id>.flac`` (``run_dir``: the shard
store, :class:`pipeline.mining.datasets.ShardStore`; its ``audio_path`` in the index is relative
to ``audio_base``, the data root in the pipeline, else ``run_dir``):

* sources stored as PCM of 16 bits or fewer (soundfile subtype PCM_16, PCM_S8, PCM_U8) are
  written as PCM_16, which is lossless: the decoded value ``k / 32768`` is written back as ``k``;
* everything else (24/32-bit PCM, float, MP3, AAC, ...) is written as PCM_24: samples are
  rounded to the nearest multiple of 2**-23 (error <= 2**-24, lossless for 24-bit sources) and
  clipped to [-1, 1 - 2**-23], so a float source that exceeds full scale is clipped.

Quantisation is done here (not by libsndfile), so the bytes are a function of the inputs only
and re-running a shard rewrites identical files.

**Index and rejects.**  One index row per excerpt (:class:`pipeline.mining.schema.Excerpt`, whose
fields make ``INDEX_SCHEMA``),
written as hive partitions ``<run_dir>/index/source=<source>/part-<shard_key>.parquet`` (the
files keep the ``source`` column as well as the partition folder); rejected tracks go to
``<run_dir>/rejects/part-<shard_key>.parquet`` (``REJECTS_SCHEMA``, stage ``"extract"``).
A track is rejected when it cannot be decoded, is shorter than ``min_seconds``, changed since it
was scanned (checksum), or has missing, non-contiguous, NaN or Inf probabilities.  A shard's
result lists every file it wrote (``files``: index parts, audio, rejects part, relative to
``run_dir``), for its marker.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import soundfile as sf

from pipeline import rejects
from pipeline.audio.io import BLOCK_FRAMES, AudioError, file_checksum, open_stream, probe
from pipeline.corpora.labels import SILENT_ENERGY, window_energy
from pipeline.mining.datasets import excerpt_relpath, index_part_relpath, rejects_part_relpath
from pipeline.mining.schema import INDEX_SCHEMA, PART_SCHEMA, Excerpt
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.sources import HOP_S, SOURCES, WINDOW_S
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, atomic_path, tmp_name, write_parquet_atomic

STAGE = "extract"
_SPAN_TOLERANCE_S = 1e-9
_LOSSLESS_16 = {"PCM_16", "PCM_S8", "PCM_U8"}  # source subtypes written as PCM_16 without loss
_FLAC_MAX_CHANNELS = 8


# (excerpt audio (channels, samples) float32, its rate in Hz) -> estimated V_i (4, n_windows) dB
Scorer = Callable[[np.ndarray, int], np.ndarray]


class ExtractionError(rejects.Rejected):
    """A track that cannot be extracted for a reason other than decoding; ``str`` is the reason,
    ``kind`` its kind (:mod:`pipeline.rejects`)."""


@dataclass(frozen=True, eq=False)
class ShardResult(StageResult):
    """What one shard produced: the stage result (``counts``: ``tracks``, ``excerpts``,
    ``excerpts_<s>``, ``rejects``, ``audio_seconds``: what the tracks' detector frames cover,
    with a second opinion ``separator_scored`` and ``separator_dropped``; ``files``: ``{"index":
    [...], "audio": [...], "rejects": path}``, relative to the run folder, for the marker), and
    its ``index`` (INDEX_SCHEMA columns) and ``rejects`` (REJECTS_SCHEMA) as tables."""

    index: pd.DataFrame = field(default_factory=pd.DataFrame)
    rejects: pd.DataFrame = field(default_factory=pd.DataFrame)


def min_frames_for(min_seconds: float, hop_s: float = HOP_S, window_s: float = WINDOW_S) -> int:
    """Fewest consecutive frames whose unclipped span ``(m-1) * hop_s + window_s`` is >= ``min_seconds``."""
    needed = (min_seconds - window_s - _SPAN_TOLERANCE_S) / hop_s
    return max(1, math.ceil(needed) + 1)


def find_runs(mask: np.ndarray, min_frames: int = 1, max_gap: int = 0) -> np.ndarray:
    """Runs of ``mask`` ``(n_frames,)`` lasting >= ``min_frames`` frames, dips of <= ``max_gap`` frames bridged.

    A run starts and ends on a True frame; between two stretches of True, a dip of at most
    ``max_gap`` False frames stays inside the run (``max_gap = 0``: the paper's rule, every
    dip ends a run).  The length counted against ``min_frames`` includes the dips.  Returns
    int64 ``(k, 2)`` rows ``[start_frame, end_frame)`` (end exclusive), in order.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D (n_frames,), got shape {mask.shape}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0 frames, got {max_gap}")
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    runs = edges.reshape(-1, 2).astype(np.int64)
    if max_gap and runs.shape[0] > 1:
        opens = np.append(True, runs[1:, 0] - runs[:-1, 1] > max_gap)  # a dip longer than max_gap ends a run
        group = np.cumsum(opens) - 1
        ends = np.zeros(int(group[-1]) + 1, dtype=np.int64)
        np.maximum.at(ends, group, runs[:, 1])
        runs = np.stack([runs[opens, 0], ends], axis=1)
    return runs[runs[:, 1] - runs[:, 0] >= min_frames]


def run_spans(runs: np.ndarray, duration_s: float, hop_s: float = HOP_S, window_s: float = WINDOW_S) -> np.ndarray:
    """Seconds ``(k, 2)`` ``[start_s, end_s)`` covered by frame runs ``(k, 2)``, clipped to ``duration_s``."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    start = runs[:, 0] * hop_s
    end = np.minimum((runs[:, 1] - 1) * hop_s + window_s, duration_s)
    return np.stack([start, np.maximum(end, start)], axis=1)


@dataclass(frozen=True)
class RunRule:
    """Extraction's run rule (module docstring): a run of frames with ``P_i >= p_i``, dips of at
    most ``max_gap`` frames (64 ms each; 0: the paper's rule) bridged, is kept when it spans at
    least ``min_seconds`` seconds.  The defaults are the paper's, and every stage's."""

    min_seconds: float = 5.0  # shortest excerpt kept, seconds
    max_gap: int = 0  # longest dip below p_i inside a run, frames

    def __post_init__(self) -> None:
        if not (isinstance(self.min_seconds, numbers.Real) and math.isfinite(self.min_seconds)
                and self.min_seconds > 0):
            raise ValueError(f"min_seconds must be a positive number of seconds, got {self.min_seconds!r}")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, numbers.Integral) or self.max_gap < 0:
            raise ValueError(f"max_gap must be a whole number of frames >= 0, got {self.max_gap!r}")

    @property
    def min_frames(self) -> int:
        """Fewest frames a run needs to qualify (:func:`min_frames_for`)."""
        return min_frames_for(self.min_seconds)

    @property
    def strict(self) -> "RunRule":
        """The duration rule alone: no dip bridged (runs of truly silent windows)."""
        return RunRule(self.min_seconds)

    def long_enough(self, duration_s: float) -> bool:
        """Whether ``duration_s`` seconds can hold an excerpt."""
        return duration_s >= self.min_seconds - _SPAN_TOLERANCE_S

    def candidates(self, mask: np.ndarray) -> np.ndarray:
        """Frame runs ``(k, 2)`` of ``mask`` ``(n_frames,)`` that can qualify, before the track's length is known."""
        return find_runs(mask, self.min_frames, self.max_gap)

    def select(self, mask: np.ndarray, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame runs ``(k, 2)`` of ``mask`` ``(n_frames,)`` kept by the rule on a track of
        ``duration_s`` seconds, and their clipped spans ``(k, 2)`` in seconds.  The one run rule
        of extraction, of calibration with ``rule = "excerpts"`` and of the measurement's
        simulated extraction."""
        runs = self.candidates(mask)
        spans = run_spans(runs, duration_s)
        keep = spans[:, 1] - spans[:, 0] >= self.min_seconds - _SPAN_TOLERANCE_S
        return runs[keep], spans[keep]


PAPER_RUN_RULE = RunRule()  # 5 s, no dip bridged: what every stage uses unless told otherwise


def separator_volumes(estimates: np.ndarray, mixture: np.ndarray, sample_rate: int) -> np.ndarray:
    """Estimated relative volume per grid window, ``10 log10(||s_i_hat||^2 / ||m||^2)`` dB.

    ``estimates``: ``(4, channels, samples)`` separated sources; ``mixture``: ``(channels,
    samples)`` at the same ``sample_rate``; channels pooled.  Returns float32 ``(4, n_windows)``;
    a window whose mixture is digitally silent (energy below ``SILENT_ENERGY``) gives ``-inf``,
    an estimate of exactly zero energy ``-inf`` too, never NaN.
    """
    estimates = np.asarray(estimates, dtype=np.float32)
    mixture = np.asarray(mixture, dtype=np.float32)
    if estimates.ndim != 3 or estimates.shape[0] != len(SOURCES) or estimates.shape[1:] != mixture.shape:
        raise ValueError(f"estimates must be ({len(SOURCES)}, channels, samples) matching the mixture "
                         f"(channels, samples); got {estimates.shape} and {mixture.shape}")
    source_energy = window_energy(estimates, sample_rate).sum(axis=1)  # (4, n)
    mix_energy = window_energy(mixture, sample_rate).sum(axis=0)  # (n,)
    silent = mix_energy < SILENT_ENERGY
    with np.errstate(divide="ignore"):
        volumes = 10.0 * np.log10(source_energy / np.where(silent, 1.0, mix_energy))
    volumes[:, silent] = -np.inf
    return volumes.astype(np.float32)


@dataclass
class SecondOpinion:
    """The separator check of extraction: every candidate excerpt that the duration rule keeps
    is scored by ``scorer``; with ``max_db`` set, one whose mean estimated volume of its source
    (``separator_db_mean``) is above ``max_db`` dB is dropped (``None``: scored and kept).
    ``scored`` / ``dropped`` count excerpts as extraction goes."""

    scorer: Scorer
    max_db: float | None = None
    scored: int = 0
    dropped: int = 0

    def judge(self, audio: np.ndarray, sample_rate: int, source: str) -> tuple[float, float, bool]:
        """``(separator_db_mean, separator_db_max, keep)`` for one excerpt ``(channels, samples)``."""
        volumes = np.asarray(self.scorer(audio, sample_rate))
        if volumes.ndim != 2 or volumes.shape[0] != len(SOURCES):
            raise ValueError(f"the scorer must return ({len(SOURCES)}, n_windows) dB, got {volumes.shape}")
        db_mean, db_max = excerpt_separator_db(volumes[SOURCES.index(source)])
        keep = self.max_db is None or db_mean <= self.max_db
        self.scored += 1
        self.dropped += not keep
        return db_mean, db_max, keep


def excerpt_separator_db(volumes: np.ndarray) -> tuple[float, float]:
    """``(mean, max)`` in dB of one source's estimated volumes ``(n_windows,)``; windows of a
    digitally silent mixture (``-inf``) are left out of the mean; ``(-inf, -inf)`` if all are."""
    volumes = np.asarray(volumes, dtype=np.float64)
    finite = volumes[np.isfinite(volumes)]
    if finite.size == 0:
        return float("-inf"), float("-inf")
    return float(finite.mean()), float(finite.max())


def probability_matrix(frames: pd.DataFrame) -> np.ndarray:
    """``(n_frames, 4)`` float32 P_i of one track from its PROBABILITY_SCHEMA rows.

    Raises :class:`ExtractionError` unless the frames are exactly ``0 .. n-1``.
    """
    if frames.empty:
        raise ExtractionError("no detector probabilities for this track", kind=rejects.DETECTOR_OUTPUT)
    frames = frames.sort_values("frame", kind="stable")
    index = frames["frame"].to_numpy(np.int64)
    if not np.array_equal(index, np.arange(index.size)):
        raise ExtractionError(f"detector frames are not exactly 0..{index.size - 1} (missing or repeated frames)",
                              kind=rejects.DETECTOR_OUTPUT)
    return frames[[f"p_{name}" for name in SOURCES]].to_numpy(np.float32)


def excerpt_subtype(path: str | os.PathLike) -> str:
    """FLAC subtype for excerpts of ``path``: PCM_16 for 16-bit-or-less PCM sources, else PCM_24."""
    try:
        subtype = sf.info(str(path)).subtype
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return "PCM_24"  # decoded by PyAV (compressed formats): no integer resolution to keep
    return "PCM_16" if subtype in _LOSSLESS_16 else "PCM_24"


def quantise(audio: np.ndarray, subtype: str) -> np.ndarray:
    """Float ``(channels, samples)`` -> integer ``(samples, channels)`` for ``soundfile.write``.

    PCM_16: int16 ``round(x * 2**15)``; PCM_24: int32 ``round(x * 2**23) << 8`` (libsndfile keeps
    the top 24 bits).  Both clip to the format's range.
    """
    scaled = audio.T.astype(np.float64)
    if subtype == "PCM_16":
        return np.clip(np.rint(scaled * 2.0**15), -(2**15), 2**15 - 1).astype(np.int16)
    if subtype == "PCM_24":
        return np.clip(np.rint(scaled * 2.0**23), -(2**23), 2**23 - 1).astype(np.int32) << 8
    raise ValueError(f"unsupported excerpt subtype {subtype!r}")


def _too_short(duration_s: float, min_seconds: float) -> str:
    return f"track lasts {duration_s:.3f} s, shorter than the {min_seconds:g} s minimum excerpt"


@dataclass
class _Excerpt:
    """One candidate run of one source, written while the track streams past."""

    source: str
    first: int  # first frame of the run
    stop: int  # frame after the run
    start_sample: int
    end_sample: int  # unclipped end, round(((stop - 1) * HOP_S + WINDOW_S) * rate); the stream may end first
    final: Path
    tmp: Path
    writer: sf.SoundFile | None = None
    written: int = 0
    audible: bool = False  # some written sample is not 0


def _write_excerpts(path: Path, excerpts: list[_Excerpt], subtype: str, block_frames: int) -> tuple[int, int, int]:
    """Decode ``path`` once, in blocks, writing each excerpt's samples to its temporary FLAC.

    Returns ``(sample_rate, channels, n_samples)``.  Every writer is closed on return or on
    an exception; the temporaries are left to the caller.
    """
    position = 0
    try:
        with open_stream(path, block_frames=block_frames) as decoded:
            rate, channels = decoded.file_rate, decoded.file_channels
            if channels > _FLAC_MAX_CHANNELS:
                raise ExtractionError(
                    f"{channels} channels: FLAC excerpts hold at most {_FLAC_MAX_CHANNELS}",
                    kind=rejects.TOO_MANY_CHANNELS,
                )
            for block in decoded:  # (channels, n) float32 at the file's rate
                stop = position + block.shape[1]
                for excerpt in excerpts:
                    lo, hi = max(excerpt.start_sample, position), min(excerpt.end_sample, stop)
                    if hi <= lo:
                        continue
                    if excerpt.writer is None:
                        excerpt.tmp.parent.mkdir(parents=True, exist_ok=True)
                        excerpt.writer = sf.SoundFile(
                            str(excerpt.tmp), "w", samplerate=rate, channels=channels, format="FLAC", subtype=subtype
                        )
                    samples = quantise(block[:, lo - position : hi - position], subtype)
                    excerpt.audible = excerpt.audible or bool(samples.any())
                    excerpt.writer.write(samples)
                    excerpt.written += hi - lo
                    if hi == excerpt.end_sample:
                        excerpt.writer.close()
                position = stop
    finally:
        for excerpt in excerpts:
            if excerpt.writer is not None:
                excerpt.writer.close()
    return rate, channels, position


def extract_track(
    path: str | os.PathLike,
    track_id: str,
    checksum: str | None,
    probs: np.ndarray,
    thresholds: dict[str, float | None],
    run_rule: RunRule,
    run_dir: str | os.PathLike,
    detector_key: str,
    calibration_key: str,
    block_frames: int = BLOCK_FRAMES,
    audio_base: str | os.PathLike | None = None,
    second_opinion: SecondOpinion | None = None,
) -> list[dict]:
    """Write the excerpts of one track and return their index rows (:class:`pipeline.mining.schema.Excerpt` rows).

    Runs follow ``run_rule`` (:meth:`RunRule.select`).  With
    ``second_opinion``, each excerpt the duration rule keeps is scored (and maybe dropped)
    before it is renamed into place; without, ``separator_db_*`` are NaN.

    ``probs``: ``(n_frames, 4)`` P_i on the shared grid; ``thresholds``: ``{source: p_i}``, a
    missing, ``None`` or NaN ``p_i`` skips the source.  When ``checksum`` is given the file must
    still have it; the index records the file's SHA-256 read now.  Decodes the file (once, as a
    stream of ``block_frames`` samples) only when some run can qualify; excerpts appear under
    their final names only after the whole file decoded cleanly.  Raises
    :class:`pipeline.audio.io.AudioError` (undecodable) or :class:`ExtractionError` (any other reason).
    ``audio_path`` in the rows is relative to ``audio_base`` (default ``run_dir``).
    """
    path = Path(path)
    run_dir = Path(run_dir)
    audio_base = Path(audio_base) if audio_base is not None else run_dir
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(SOURCES):
        raise ExtractionError(
            f"probabilities must be (n_frames, {len(SOURCES)}), got {probs.shape}", kind=rejects.DETECTOR_OUTPUT
        )
    if probs.shape[0] == 0:
        raise ExtractionError("no detector probabilities for this track", kind=rejects.DETECTOR_OUTPUT)
    if not np.isfinite(probs).all():
        raise ExtractionError("detector probabilities contain NaN or Inf", kind=rejects.DETECTOR_OUTPUT)
    info = probe(path)
    if not run_rule.long_enough(info.duration_s):
        raise ExtractionError(_too_short(info.duration_s, run_rule.min_seconds), kind=rejects.TOO_SHORT)

    calibrated = {s: float(t) for s, t in thresholds.items() if t is not None and np.isfinite(t)}
    unknown = set(calibrated) - set(SOURCES)
    if unknown:
        raise ValueError(f"thresholds name unknown sources: {sorted(unknown)}")
    candidates = {s: run_rule.candidates(probs[:, SOURCES.index(s)] >= p) for s, p in calibrated.items()}
    if not any(len(runs) for runs in candidates.values()):
        return []

    catalog_checksum = file_checksum(path)
    if checksum and catalog_checksum != checksum:
        raise ExtractionError(
            "file changed since it was scanned (SHA-256 differs from the catalog's)", kind=rejects.CHANGED
        )
    subtype = excerpt_subtype(path)
    catalog_path = os.path.abspath(path)
    rate = info.sample_rate
    excerpts = []
    for source in SOURCES:  # every candidate run, unclipped: the track's length is known at the end
        if source not in calibrated:
            continue
        runs = candidates[source]
        for (first, stop), (start_s, end_s) in zip(runs.tolist(), run_spans(runs, math.inf).tolist()):
            start_sample = int(round(start_s * rate))
            final = run_dir / excerpt_relpath(source, track_id, f"{track_id}-{source}-{start_sample}")
            excerpts.append(
                _Excerpt(source, first, stop, start_sample, int(round(end_s * rate)), final, tmp_name(final))
            )
    try:
        decoded_rate, channels, n_samples = _write_excerpts(path, excerpts, subtype, block_frames)
        if decoded_rate != rate:
            raise ExtractionError(
                f"the decoder's rate {decoded_rate} Hz differs from the probed {rate} Hz", kind=rejects.CORRUPT
            )
        duration_s = n_samples / rate
        if not run_rule.long_enough(duration_s):
            raise ExtractionError(_too_short(duration_s, run_rule.min_seconds), kind=rejects.TOO_SHORT)
        rows = []
        for source in SOURCES:
            if source not in calibrated:
                continue
            column = probs[:, SOURCES.index(source)]
            written = {(e.first, e.stop): e for e in excerpts if e.source == source}
            runs, spans = run_rule.select(column >= calibrated[source], duration_s)
            for (first, stop), (start_s, end_s) in zip(runs.tolist(), spans.tolist()):
                excerpt = written[(first, stop)]
                if not excerpt.audible:
                    continue  # digital silence throughout: nothing for the remix step to learn
                start_sample = int(round(start_s * rate))
                end_sample = min(int(round(end_s * rate)), n_samples)
                if (start_sample, end_sample) != (excerpt.start_sample, excerpt.start_sample + excerpt.written):
                    raise RuntimeError(
                        f"excerpt {excerpt.final.name} holds samples [{excerpt.start_sample}, "
                        f"{excerpt.start_sample + excerpt.written}), expected "
                        f"[{start_sample}, {end_sample})"
                    )
                db_mean = db_max = float("nan")
                if second_opinion is not None:
                    audio = sf.read(str(excerpt.tmp), dtype="float32", always_2d=True)[0].T
                    db_mean, db_max, keep = second_opinion.judge(audio, rate, source)
                    if not keep:
                        continue  # the separator hears the source: the temporary is removed below
                with atomic_path(excerpt.final) as tmp:
                    os.replace(excerpt.tmp, tmp)
                frame_probs = column[first:stop].astype(np.float64)
                excerpt_id = f"{track_id}-{source}-{start_sample}"
                relpath = Path(os.path.relpath(excerpt.final, audio_base)).as_posix()
                rows.append(Excerpt(
                    excerpt_id=excerpt_id,
                    source=source,
                    catalog_path=catalog_path,
                    catalog_checksum=catalog_checksum,
                    track_id=track_id,
                    start_s=float(start_s),
                    end_s=float(end_s),
                    start_sample=start_sample,
                    end_sample=end_sample,
                    duration_s=float(end_s - start_s),
                    sample_rate=int(rate),
                    channels=int(channels),
                    threshold=calibrated[source],
                    prob_mean=float(frame_probs.mean()),
                    prob_min=float(frame_probs.min()),
                    n_frames=int(stop - first),
                    detector_key=detector_key,
                    calibration_key=calibration_key,
                    audio_path=relpath,
                    audio_format=f"FLAC/{subtype}",
                    audio_checksum=file_checksum(excerpt.final),
                    separator_db_mean=db_mean,
                    separator_db_max=db_max,
                ).row())
        return rows
    finally:
        for excerpt in excerpts:  # runs dropped by the duration rule, or everything after an error
            excerpt.tmp.unlink(missing_ok=True)


def extract_shard(
    tracks: pd.DataFrame,
    probabilities: pd.DataFrame,
    thresholds: dict[str, float | None],
    run_rule: RunRule,
    run_dir: str | os.PathLike,
    shard_key: str,
    detector_key: str,
    calibration_key: str,
    audio_base: str | os.PathLike | None = None,
    second_opinion: SecondOpinion | None = None,
    progress: Progress | None = None,
) -> ShardResult:
    """Extract every track of a shard and write its index parts and rejects (see module docstring).

    ``tracks``: columns ``track_id, path, checksum``; ``probabilities``: PROBABILITY_SCHEMA rows
    of (at least) these tracks.  A bad track becomes a reject row and the shard goes on.
    ``audio_base``: what ``audio_path`` is relative to (default ``run_dir``).
    ``progress(tracks done, total, path)`` is called before each track and once at the end.
    """
    missing = {"track_id", "path", "checksum"} - set(tracks.columns)
    if missing:
        raise ValueError(f"tracks table lacks columns {sorted(missing)}")
    run_dir = Path(run_dir)
    positions = probabilities.groupby("track_id", sort=False).indices if len(probabilities) else {}
    rows: list[dict] = []
    rejected: list[dict] = []
    for done, track in enumerate(tracks.itertuples(index=False)):
        track_id, path = str(track.track_id), str(track.path)
        if progress:
            progress(done, len(tracks), path)
        checksum = track.checksum if isinstance(track.checksum, str) and track.checksum else None
        try:
            if track_id not in positions:
                raise ExtractionError("no detector probabilities for this track", kind=rejects.DETECTOR_OUTPUT)
            probs = probability_matrix(probabilities.iloc[positions[track_id]])
            rows.extend(
                extract_track(
                    path,
                    track_id,
                    checksum,
                    probs,
                    thresholds,
                    run_rule,
                    run_dir,
                    detector_key,
                    calibration_key,
                    audio_base=audio_base,
                    second_opinion=second_opinion,
                )
            )
        except (AudioError, ExtractionError) as err:
            rejected.append({"path": path, "track_id": track_id, "stage": STAGE, "kind": err.kind, "reason": str(err)})
    if progress:
        progress(len(tracks), len(tracks), "")

    index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    reject_table = pa.Table.from_pylist(rejected, schema=REJECTS_SCHEMA)
    index_parts = write_index_parts(index, run_dir, shard_key)
    write_parquet_atomic(reject_table, run_dir / rejects_part_relpath(shard_key))
    audio = sorted(excerpt_relpath(r["source"], r["track_id"], r["excerpt_id"]) for r in rows)
    files = {"index": index_parts, "audio": audio, "rejects": rejects_part_relpath(shard_key)}
    frames = int(probabilities["track_id"].isin(set(tracks["track_id"])).sum()) if len(probabilities) else 0
    counts = {
        "tracks": len(tracks),
        "excerpts": len(rows),
        "rejects": len(rejected),
        "audio_seconds": round(frames * HOP_S, 1),  # catalog audio the detector frames cover, for throughput
    }
    if second_opinion is not None:
        counts.update(separator_scored=second_opinion.scored, separator_dropped=second_opinion.dropped)
    counts.update({f"excerpts_{s}": sum(r["source"] == s for r in rows) for s in SOURCES})
    return ShardResult(counts, files=files, index=index.to_pandas(), rejects=reject_table.to_pandas())


def write_index_parts(index: pa.Table, run_dir: str | os.PathLike, shard_key: str) -> list[str]:
    """Write ``index`` (INDEX_SCHEMA) as ``<run_dir>/index/source=<s>/part-<shard_key>.parquet``, one
    file per source; return their paths relative to ``run_dir``.

    A source without rows has its part of this shard removed, so a re-run of the shard leaves no
    stale part of its own.
    """
    run_dir = Path(run_dir)
    source_column = index.column("source").to_numpy(zero_copy_only=False)
    written = []
    for source in SOURCES:
        relative = index_part_relpath(source, shard_key)
        selected = np.flatnonzero(source_column == source)
        if selected.size == 0:
            (run_dir / relative).unlink(missing_ok=True)
            continue
        part = index.take(pa.array(selected)).cast(PART_SCHEMA)
        write_parquet_atomic(part, run_dir / relative)
        written.append(relative)
    return written


def build_excerpts(tracks: pd.DataFrame, probabilities_path: str | os.PathLike, **options: Any) -> ShardResult:
    """The excerpts stage, one shard into the shard store: :func:`extract_shard` of the tracks
    that have probabilities in ``probabilities_path`` (the others were rejected, with their
    reason, by the features stage); ``options``: :func:`extract_shard`'s arguments after
    ``probabilities``."""
    probabilities = pd.read_parquet(probabilities_path)
    return extract_shard(tracks[tracks["track_id"].isin(set(probabilities["track_id"]))], probabilities, **options)
