"""Cut the excerpts of D_i from catalog tracks where the detector says source i is silent.

**Runs.**  Frame ``k`` of the shared grid is the window ``[k * HOP_S, k * HOP_S + WINDOW_S)``
seconds (64 ms hop, 0.64 s window; ``pipeline.sources``).  For a calibrated source i, a *run*
is a maximal stretch of consecutive frames ``a .. b-1`` with ``P_i >= p_i``.

**The duration rule.**  A run covers the union of its windows, ``[a * HOP_S, (b-1) * HOP_S +
WINDOW_S)`` seconds, clipped to the track's length; it is kept when that span is at least
``min_seconds`` (5 s; a 1e-9 s tolerance absorbs float rounding).  Unclipped, ``m`` frames span
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
deleted.  If decoding fails anywhere (NaN/Inf samples, a corrupt block, ffmpeg's error), every
temporary of the track is deleted: no excerpt of a rejected track becomes visible.  Writing a
FLAC in blocks gives the same bytes as writing it at once.  An excerpt whose samples are all
0 after quantisation (digital silence: a dead file, the gap before a hidden track) is not
written: it holds nothing for the remix step to learn from.  Sample offsets are
``start_sample = round(start_s * sr)`` and ``end_sample = min(round(end_s * sr), n_samples)``;
``start_s``/``end_s`` in the index are the grid times of the rule above.  Each excerpt is a FLAC
file at ``<run_dir>/audio/<source>/<track_id[:2]>/<excerpt_id>.flac``:

* sources stored as PCM of 16 bits or fewer (soundfile subtype PCM_16, PCM_S8, PCM_U8) are
  written as PCM_16, which is lossless: the decoded value ``k / 32768`` is written back as ``k``;
* everything else (24/32-bit PCM, float, MP3, AAC, ...) is written as PCM_24: samples are
  rounded to the nearest multiple of 2**-23 (error <= 2**-24, lossless for 24-bit sources) and
  clipped to [-1, 1 - 2**-23], so a float source that exceeds full scale is clipped.

Quantisation is done here (not by libsndfile), so the bytes are a function of the inputs only
and re-running a shard rewrites identical files.

**Index and rejects.**  One index row per excerpt (``pipeline.mining.schema.INDEX_SCHEMA``),
written as hive partitions ``<run_dir>/index/source=<source>/part-<shard_key>.parquet`` (the
partition column is not stored in the files); rejected tracks go to
``<run_dir>/rejects/part-<shard_key>.parquet`` (``REJECTS_SCHEMA``, stage ``"extract"``).
A track is rejected when it cannot be decoded, is shorter than ``min_seconds``, changed since it
was scanned (checksum), or has missing, non-contiguous, NaN or Inf probabilities.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import soundfile as sf

from pipeline.audio.io import BLOCK_FRAMES, AudioError, file_checksum, open_stream, probe
from pipeline.mining.schema import INDEX_SCHEMA, REJECTS_SCHEMA
from pipeline.sources import HOP_S, SOURCES, WINDOW_S
from pipeline.storage.outputs import atomic_path, tmp_name, write_parquet_atomic

MIN_SECONDS = 5.0  # shortest excerpt kept, seconds
STAGE = "extract"
_SPAN_TOLERANCE_S = 1e-9
_LOSSLESS_16 = {"PCM_16", "PCM_S8", "PCM_U8"}  # source subtypes written as PCM_16 without loss
_FLAC_MAX_CHANNELS = 8
PART_SCHEMA = pa.schema([field for field in INDEX_SCHEMA if field.name != "source"])


class ExtractionError(Exception):
    """A track that cannot be extracted for a reason other than decoding; ``str`` is the reason."""


@dataclass(frozen=True)
class ShardResult:
    """What one shard produced: ``index`` (INDEX_SCHEMA columns) and ``rejects`` (REJECTS_SCHEMA)."""

    index: pd.DataFrame
    rejects: pd.DataFrame


def min_frames_for(min_seconds: float, hop_s: float = HOP_S, window_s: float = WINDOW_S) -> int:
    """Fewest consecutive frames whose unclipped span ``(m-1) * hop_s + window_s`` is >= ``min_seconds``."""
    needed = (min_seconds - window_s - _SPAN_TOLERANCE_S) / hop_s
    return max(1, math.ceil(needed) + 1)


def find_runs(mask: np.ndarray, min_frames: int = 1) -> np.ndarray:
    """Runs of consecutive True in ``mask`` ``(n_frames,)`` lasting >= ``min_frames`` frames.

    Returns int64 ``(k, 2)`` rows ``[start_frame, end_frame)`` (end exclusive), in order.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D (n_frames,), got shape {mask.shape}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    runs = edges.reshape(-1, 2).astype(np.int64)
    return runs[runs[:, 1] - runs[:, 0] >= min_frames]


def run_spans(runs: np.ndarray, duration_s: float, hop_s: float = HOP_S, window_s: float = WINDOW_S) -> np.ndarray:
    """Seconds ``(k, 2)`` ``[start_s, end_s)`` covered by frame runs ``(k, 2)``, clipped to ``duration_s``."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    start = runs[:, 0] * hop_s
    end = np.minimum((runs[:, 1] - 1) * hop_s + window_s, duration_s)
    return np.stack([start, np.maximum(end, start)], axis=1)


def select_runs(mask: np.ndarray, duration_s: float, min_seconds: float = MIN_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Frame runs of ``mask`` kept by the duration rule, and their clipped spans in seconds."""
    runs = find_runs(mask, min_frames_for(min_seconds))
    spans = run_spans(runs, duration_s)
    keep = spans[:, 1] - spans[:, 0] >= min_seconds - _SPAN_TOLERANCE_S
    return runs[keep], spans[keep]


def probability_matrix(frames: pd.DataFrame) -> np.ndarray:
    """``(n_frames, 4)`` float32 P_i of one track from its PROBABILITY_SCHEMA rows.

    Raises :class:`ExtractionError` unless the frames are exactly ``0 .. n-1``.
    """
    if frames.empty:
        raise ExtractionError("no detector probabilities for this track")
    frames = frames.sort_values("frame", kind="stable")
    index = frames["frame"].to_numpy(np.int64)
    if not np.array_equal(index, np.arange(index.size)):
        raise ExtractionError(f"detector frames are not exactly 0..{index.size - 1} (missing or repeated frames)")
    return frames[[f"p_{name}" for name in SOURCES]].to_numpy(np.float32)


def excerpt_subtype(path: str | os.PathLike) -> str:
    """FLAC subtype for excerpts of ``path``: PCM_16 for 16-bit-or-less PCM sources, else PCM_24."""
    try:
        subtype = sf.info(str(path)).subtype
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return "PCM_24"  # decoded by ffmpeg (compressed formats): no integer resolution to keep
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


def excerpt_relpath(source: str, track_id: str, excerpt_id: str) -> str:
    """Posix path of an excerpt file relative to the extraction folder."""
    return f"audio/{source}/{track_id[:2]}/{excerpt_id}.flac"


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


def _write_excerpts(path: Path, excerpts: list[_Excerpt], subtype: str,
                    block_frames: int) -> tuple[int, int, int]:
    """Decode ``path`` once, in blocks, writing each excerpt's samples to its temporary FLAC.

    Returns ``(sample_rate, channels, n_samples)``.  Every writer is closed on return or on
    an exception; the temporaries are left to the caller.
    """
    position = 0
    try:
        with open_stream(path, block_frames=block_frames) as decoded:
            rate, channels = decoded.file_rate, decoded.file_channels
            if channels > _FLAC_MAX_CHANNELS:
                raise ExtractionError(f"{channels} channels: FLAC excerpts hold at most {_FLAC_MAX_CHANNELS}")
            for block in decoded:  # (channels, n) float32 at the file's rate
                stop = position + block.shape[1]
                for excerpt in excerpts:
                    lo, hi = max(excerpt.start_sample, position), min(excerpt.end_sample, stop)
                    if hi <= lo:
                        continue
                    if excerpt.writer is None:
                        excerpt.tmp.parent.mkdir(parents=True, exist_ok=True)
                        excerpt.writer = sf.SoundFile(str(excerpt.tmp), "w", samplerate=rate, channels=channels,
                                                      format="FLAC", subtype=subtype)
                    samples = quantise(block[:, lo - position:hi - position], subtype)
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
    min_seconds: float,
    run_dir: str | os.PathLike,
    detector_key: str,
    calibration_key: str,
    block_frames: int = BLOCK_FRAMES,
) -> list[dict]:
    """Write the excerpts of one track and return their index rows (INDEX_SCHEMA keys).

    ``probs``: ``(n_frames, 4)`` P_i on the shared grid; ``thresholds``: ``{source: p_i}``, a
    missing, ``None`` or NaN ``p_i`` skips the source.  When ``checksum`` is given the file must
    still have it; the index records the file's SHA-256 read now.  Decodes the file (once, as a
    stream of ``block_frames`` samples) only when some run can qualify; excerpts appear under
    their final names only after the whole file decoded cleanly.  Raises
    :class:`pipeline.audio.io.AudioError` (undecodable) or :class:`ExtractionError` (any other reason).
    """
    path = Path(path)
    run_dir = Path(run_dir)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(SOURCES):
        raise ExtractionError(f"probabilities must be (n_frames, {len(SOURCES)}), got {probs.shape}")
    if probs.shape[0] == 0:
        raise ExtractionError("no detector probabilities for this track")
    if not np.isfinite(probs).all():
        raise ExtractionError("detector probabilities contain NaN or Inf")
    info = probe(path)
    if info.duration_s < min_seconds - _SPAN_TOLERANCE_S:
        raise ExtractionError(_too_short(info.duration_s, min_seconds))

    calibrated = {s: float(t) for s, t in thresholds.items() if t is not None and np.isfinite(t)}
    unknown = set(calibrated) - set(SOURCES)
    if unknown:
        raise ValueError(f"thresholds name unknown sources: {sorted(unknown)}")
    min_frames = min_frames_for(min_seconds)
    candidates = {s: find_runs(probs[:, SOURCES.index(s)] >= p, min_frames) for s, p in calibrated.items()}
    if not any(len(runs) for runs in candidates.values()):
        return []

    catalog_checksum = file_checksum(path)
    if checksum and catalog_checksum != checksum:
        raise ExtractionError("file changed since it was scanned (SHA-256 differs from the catalog's)")
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
            excerpts.append(_Excerpt(source, first, stop, start_sample, int(round(end_s * rate)), final,
                                     tmp_name(final)))
    try:
        decoded_rate, channels, n_samples = _write_excerpts(path, excerpts, subtype, block_frames)
        if decoded_rate != rate:
            raise ExtractionError(f"the decoder's rate {decoded_rate} Hz differs from the probed {rate} Hz")
        duration_s = n_samples / rate
        if duration_s < min_seconds - _SPAN_TOLERANCE_S:
            raise ExtractionError(_too_short(duration_s, min_seconds))
        rows = []
        for source in SOURCES:
            if source not in calibrated:
                continue
            column = probs[:, SOURCES.index(source)]
            written = {(e.first, e.stop): e for e in excerpts if e.source == source}
            runs, spans = select_runs(column >= calibrated[source], duration_s, min_seconds)
            for (first, stop), (start_s, end_s) in zip(runs.tolist(), spans.tolist()):
                excerpt = written[(first, stop)]
                if not excerpt.audible:
                    continue  # digital silence throughout: nothing for the remix step to learn
                start_sample = int(round(start_s * rate))
                end_sample = min(int(round(end_s * rate)), n_samples)
                if (start_sample, end_sample) != (excerpt.start_sample, excerpt.start_sample + excerpt.written):
                    raise RuntimeError(f"excerpt {excerpt.final.name} holds samples [{excerpt.start_sample}, "
                                       f"{excerpt.start_sample + excerpt.written}), expected "
                                       f"[{start_sample}, {end_sample})")
                with atomic_path(excerpt.final) as tmp:
                    os.replace(excerpt.tmp, tmp)
                frame_probs = column[first:stop].astype(np.float64)
                excerpt_id = f"{track_id}-{source}-{start_sample}"
                relpath = excerpt_relpath(source, track_id, excerpt_id)
                rows.append({
                    "excerpt_id": excerpt_id, "source": source, "catalog_path": catalog_path,
                    "catalog_checksum": catalog_checksum, "track_id": track_id,
                    "start_s": float(start_s), "end_s": float(end_s),
                    "start_sample": start_sample, "end_sample": end_sample, "duration_s": float(end_s - start_s),
                    "sample_rate": int(rate), "channels": int(channels), "threshold": calibrated[source],
                    "prob_mean": float(frame_probs.mean()), "prob_min": float(frame_probs.min()),
                    "n_frames": int(stop - first), "detector_key": detector_key,
                    "calibration_key": calibration_key, "audio_path": relpath, "audio_format": f"FLAC/{subtype}",
                    "audio_checksum": file_checksum(excerpt.final),
                })
        return rows
    finally:
        for excerpt in excerpts:  # runs dropped by the duration rule, or everything after an error
            excerpt.tmp.unlink(missing_ok=True)


def extract_shard(
    tracks: pd.DataFrame,
    probabilities: pd.DataFrame,
    thresholds: dict[str, float | None],
    min_seconds: float,
    run_dir: str | os.PathLike,
    shard_key: str,
    detector_key: str,
    calibration_key: str,
) -> ShardResult:
    """Extract every track of a shard and write its index parts and rejects (see module docstring).

    ``tracks``: columns ``track_id, path, checksum``; ``probabilities``: PROBABILITY_SCHEMA rows
    of (at least) these tracks.  A bad track becomes a reject row and the shard goes on.
    """
    missing = {"track_id", "path", "checksum"} - set(tracks.columns)
    if missing:
        raise ValueError(f"tracks table lacks columns {sorted(missing)}")
    run_dir = Path(run_dir)
    positions = probabilities.groupby("track_id", sort=False).indices if len(probabilities) else {}
    rows: list[dict] = []
    rejects: list[dict] = []
    for track in tracks.itertuples(index=False):
        track_id, path = str(track.track_id), str(track.path)
        checksum = track.checksum if isinstance(track.checksum, str) and track.checksum else None
        try:
            if track_id not in positions:
                raise ExtractionError("no detector probabilities for this track")
            probs = probability_matrix(probabilities.iloc[positions[track_id]])
            rows.extend(extract_track(path, track_id, checksum, probs, thresholds, min_seconds, run_dir,
                                      detector_key, calibration_key))
        except (AudioError, ExtractionError) as err:
            rejects.append({"path": path, "track_id": track_id, "stage": STAGE, "reason": str(err)})

    index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    reject_table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
    write_index_parts(index, run_dir / "index", shard_key)
    write_parquet_atomic(reject_table, run_dir / "rejects" / f"part-{shard_key}.parquet")
    return ShardResult(index.to_pandas(), reject_table.to_pandas())


def write_index_parts(index: pa.Table, index_dir: str | os.PathLike, shard_key: str) -> None:
    """Write ``index`` (INDEX_SCHEMA) as ``source=<s>/part-<shard_key>.parquet``, one file per source.

    A source without rows has its part of this shard removed, so a re-run leaves no stale part.
    """
    index_dir = Path(index_dir)
    source_column = index.column("source").to_numpy(zero_copy_only=False)
    for source in SOURCES:
        final = index_dir / f"source={source}" / f"part-{shard_key}.parquet"
        selected = np.flatnonzero(source_column == source)
        if selected.size == 0:
            final.unlink(missing_ok=True)
            continue
        part = index.take(pa.array(selected)).drop_columns(["source"]).cast(PART_SCHEMA)
        write_parquet_atomic(part, final)


def extract_stage_shard(tracks: pd.DataFrame, probabilities_path: str | os.PathLike,
                        thresholds: dict[str, float | None], min_seconds: float, run_dir: str | os.PathLike,
                        shard_key: str, detector_key: str, calibration_key: str) -> dict:
    """The Extract stage for one shard: tracks that have probabilities are extracted (the
    others were rejected, with their reason, by the features stage); returns counts."""
    probabilities = pd.read_parquet(probabilities_path)
    tracks = tracks[tracks["track_id"].isin(set(probabilities["track_id"]))]
    result = extract_shard(tracks, probabilities, thresholds, min_seconds, run_dir, shard_key,
                           detector_key, calibration_key)
    counts = {"tracks": len(tracks), "excerpts": len(result.index), "rejects": len(result.rejects)}
    counts.update({f"excerpts_{s}": int((result.index["source"] == s).sum()) for s in SOURCES})
    return counts
