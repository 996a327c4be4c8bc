"""Scattering features of a shard of tracks in one ``.npy`` plus a Parquet index.

Layout: ``<name>.npy`` holds every track's features concatenated along time, time-major
``(total_frames, C, F)`` (so one track is one contiguous block), float16 by default;
``<name>.index.parquet`` has one row per track: ``track_id``, ``offset`` (first frame in the
``.npy``) and ``n_frames``.  Features are the un-normalised log1p scattering values of
``pipeline.features.scattering`` (0 .. about 14), for which float16's spacing (at most 2**-7 = 0.008 at
8..16) gives an absolute error of at most 0.004, i.e. < 1 % of a feature's std.

The writer streams tracks to a hidden temporary ``.npy`` (its header reserves room for the
final shape and is rewritten at the end), then renames it and the index into place with
:func:`pipeline.storage.outputs.atomic_path`; the index is renamed last.  The reader memory-maps the
``.npy``; :meth:`FeatureShard.get` returns one track as float32 ``(C, F, T)`` (a copy),
:meth:`FeatureShard.view` the same frames as a view of the memory map (nothing read until
sliced).  :meth:`FeatureShardWriter.add_pieces` takes a track as a stream of ``(C, F, t)``
pieces (from :meth:`pipeline.features.scattering.FeatureExtractor.stream`), so neither side ever holds a
whole long track.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.storage.outputs import atomic_path, write_parquet_atomic

INDEX_SUFFIX = ".index.parquet"
_HEADER_BYTES = 128  # fixed .npy (version 1.0) header size, so the shape can be rewritten
_MAGIC = b"\x93NUMPY\x01\x00"

FEATURE_INDEX_SCHEMA = pa.schema([
    ("track_id", pa.string()),
    ("offset", pa.int64()),  # first frame of the track in the .npy (axis 0)
    ("n_frames", pa.int64()),  # number of 16 ms frames
])


def index_path_for(npy_path: str | os.PathLike) -> Path:
    """``shard.npy`` -> ``shard.index.parquet`` (same folder)."""
    npy_path = Path(npy_path)
    return npy_path.with_name(npy_path.name.removesuffix(".npy") + INDEX_SUFFIX)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header of exactly ``_HEADER_BYTES`` bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body_len = _HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit in the reserved .npy header")
    return _MAGIC + struct.pack("<H", body_len) + (text.ljust(body_len - 1) + "\n").encode("latin1")


class FeatureShardWriter:
    """Stream tracks' features ``(C, F, T)`` into one shard; use as a context manager.

    ``add(track_id, feats)`` appends; leaving the ``with`` block without an exception
    publishes ``npy_path`` and its index atomically; an exception leaves nothing behind.
    """

    def __init__(self, npy_path: str | os.PathLike, dtype: np.dtype | type = np.float16,
                 index_path: str | os.PathLike | None = None):
        self.npy_path = Path(npy_path)
        self.index_path = Path(index_path) if index_path is not None else index_path_for(npy_path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype}")
        self._rows: list[tuple[str, int, int]] = []
        self._seen: set[str] = set()
        self._frame_shape: tuple[int, int] | None = None
        self._frames = 0
        self._stack = contextlib.ExitStack()
        self._fh = None

    def __enter__(self) -> "FeatureShardWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.npy_path))
        self._fh = open(self._tmp, "wb")
        self._fh.write(b"\0" * _HEADER_BYTES)
        return self

    def add(self, track_id: str, feats: np.ndarray) -> None:
        """Append one track's features ``(C, F, T)``."""
        self.add_pieces(track_id, [feats])

    def add_pieces(self, track_id: str, pieces: Iterable[np.ndarray]) -> int:
        """Append one track given as consecutive ``(C, F, t)`` pieces; return its frame count.

        Each piece is written as it arrives, so memory holds one piece, not the track.  If
        the iterable raises (e.g. :class:`pipeline.audio.io.AudioError` from a decoder) or a
        piece is bad, the track's frames are cut off the temporary file again and the
        exception propagates: the shard stays valid without this track.
        """
        if self._fh is None:
            raise RuntimeError("FeatureShardWriter.add called outside its with block")
        if track_id in self._seen:
            raise ValueError(f"track {track_id!r} is already in this shard")
        position = self._fh.tell()
        frame_shape = self._frame_shape
        count = 0
        try:
            for feats in pieces:
                feats = np.asarray(feats)
                if feats.ndim != 3:
                    raise ValueError(f"features must be (C, F, T), got shape {feats.shape}")
                if frame_shape is None:
                    frame_shape = feats.shape[:2]
                elif feats.shape[:2] != frame_shape:
                    raise ValueError(f"features {feats.shape[:2]} do not match the shard's {frame_shape}")
                if not np.isfinite(feats).all():
                    raise ValueError(f"features of {track_id!r} contain NaN or Inf")
                block = np.ascontiguousarray(np.moveaxis(feats, -1, 0), dtype=self.dtype)  # (t, C, F)
                self._fh.write(block.tobytes())
                count += feats.shape[-1]
        except BaseException:
            self._fh.seek(position)
            self._fh.truncate()
            raise
        self._frame_shape = frame_shape
        self._rows.append((track_id, self._frames, count))
        self._seen.add(track_id)
        self._frames += count
        return count

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                shape = (self._frames, *(self._frame_shape or (0, 0)))
                self._fh.seek(0)
                self._fh.write(_npy_header(self.dtype, shape))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        if exc_type is None:
            write_parquet_atomic(self.index_frame(), self.index_path)

    def index_frame(self) -> pd.DataFrame:
        """The index rows written so far: ``track_id, offset, n_frames``."""
        frame = pd.DataFrame(self._rows, columns=["track_id", "offset", "n_frames"])
        return pa.Table.from_pandas(frame.astype({"offset": "int64", "n_frames": "int64"}),
                                    schema=FEATURE_INDEX_SCHEMA, preserve_index=False).to_pandas()


def write_feature_shard(npy_path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray]],
                        dtype: np.dtype | type = np.float16,
                        index_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Write ``(track_id, features (C, F, T))`` pairs as one shard; return its index."""
    with FeatureShardWriter(npy_path, dtype=dtype, index_path=index_path) as writer:
        for track_id, feats in items:
            writer.add(track_id, feats)
    return writer.index_frame()


class FeatureShard:
    """Read a shard written by :class:`FeatureShardWriter` (memory-mapped).

    ``shard[track_id]`` / ``shard.get(track_id)`` -> float32 ``(C, F, T)``;
    iterating yields ``(track_id, features)`` in write order.
    """

    def __init__(self, npy_path: str | os.PathLike, index_path: str | os.PathLike | None = None):
        self.npy_path = Path(npy_path)
        self.index_path = Path(index_path) if index_path is not None else index_path_for(npy_path)
        self.index = pd.read_parquet(self.index_path)
        self.data = np.load(self.npy_path, mmap_mode="r")  # (total_frames, C, F)
        self._rows = {tid: (int(o), int(n)) for tid, o, n in
                      zip(self.index["track_id"], self.index["offset"], self.index["n_frames"])}
        expected = int((self.index["offset"] + self.index["n_frames"]).max()) if len(self.index) else 0
        if self.data.shape[0] != expected:
            raise ValueError(f"{self.npy_path} holds {self.data.shape[0]} frames, its index expects {expected}")

    @property
    def track_ids(self) -> list[str]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._rows

    def n_frames(self, track_id: str) -> int:
        return self._rows[track_id][1]

    def get(self, track_id: str) -> np.ndarray:
        """Features of ``track_id`` as float32 ``(C, F, T)`` (a copy)."""
        try:
            offset, count = self._rows[track_id]
        except KeyError:
            raise KeyError(f"track {track_id!r} is not in {self.npy_path}") from None
        block = self.data[offset:offset + count]  # (T, C, F)
        return np.ascontiguousarray(np.moveaxis(block, 0, -1), dtype=np.float32)

    __getitem__ = get

    def view(self, track_id: str) -> np.ndarray:
        """Features of ``track_id`` as a read-only ``(C, F, T)`` view of the memory map (stored
        dtype, no copy: slice it in time to read only part of the track)."""
        try:
            offset, count = self._rows[track_id]
        except KeyError:
            raise KeyError(f"track {track_id!r} is not in {self.npy_path}") from None
        return np.moveaxis(self.data[offset:offset + count], 0, -1)

    def reader(self, track_id: str) -> "TrackFrames":
        """Features of ``track_id`` as a ``(C, F, T)`` array-like that reads the file only for
        the time slice asked (``reader[:, :, a:b]``), without mapping it: what a long track's
        reader holds in memory is the slices it is given, not the pages it has read."""
        try:
            offset, count = self._rows[track_id]
        except KeyError:
            raise KeyError(f"track {track_id!r} is not in {self.npy_path}") from None
        return TrackFrames(self.npy_path, self.data.offset, self.data.dtype, self.data.shape[1:], offset, count)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for track_id in self._rows:
            yield track_id, self.get(track_id)



class TrackFrames:
    """One track's frames of a shard ``.npy``, read by time slice: ``frames[:, :, a:b]`` ->
    ``(C, F, b - a)`` array of the stored dtype, read with one ``np.fromfile`` call."""

    ndim = 3

    def __init__(self, npy_path: Path, data_offset: int, dtype: np.dtype, row_shape: tuple[int, ...],
                 first_frame: int, n_frames: int):
        self.npy_path, self.data_offset, self.dtype = npy_path, data_offset, np.dtype(dtype)
        self.row_shape, self.first_frame, self.n_frames = tuple(row_shape), first_frame, n_frames

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.row_shape, self.n_frames)

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None) and key[1] == slice(None)
                and isinstance(key[2], slice) and key[2].step in (None, 1)):
            raise IndexError("TrackFrames supports [:, :, start:stop] only")
        start, stop, _ = key[2].indices(self.n_frames)
        count = max(stop - start, 0)
        row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape))
        rows = np.fromfile(self.npy_path, dtype=self.dtype, count=count * int(np.prod(self.row_shape)),
                           offset=self.data_offset + (self.first_frame + start) * row_bytes)
        return np.moveaxis(rows.reshape(count, *self.row_shape), 0, -1)
