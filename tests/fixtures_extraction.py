"""A small, realistic D_i (shard store and view) built by hand, for the audit and verify tests.

:func:`make_extraction_run` writes a catalog of short wav files (22.05 kHz mono and 44.1 kHz
stereo, one in a folder whose name needs HTML escaping), cuts FLAC excerpts from them on the
shared 64 ms grid exactly as the extraction contract describes, into a shard store
(``data/excerpts/<K>/``: ``audio/<source>/<xx>/<excerpt_id>.flac``, hive-partitioned index parts,
rejects parts, one marker per shard with its counts and files) and gathers a view of both shards
(``data/datasets/<V>/``, manifest written last) with the library's ``build_datasets``; it also
writes the calibration folder (``thresholds.parquet``, ``curves.parquet``, ``curves.png``) and
the ground-truth table of relative volumes on the grid.  ``other`` is not calibratable and has no excerpts, so every
report and check also meets an empty source.

:func:`write_excerpt_index` writes a bare D_i folder (FLAC excerpts and their index) from
given audio, for the separator training tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from matplotlib.figure import Figure

from pipeline.audio.io import file_checksum
from pipeline.mining.datasets import (
    ShardStore,
    build_datasets,
    excerpt_relpath,
    rejects_part_relpath,
    view_manifest_fields,
)
from pipeline.mining.extraction import RunRule, write_index_parts
from pipeline.mining.schema import INDEX_SCHEMA
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.sources import HOP_S, SOURCES, WINDOW_S, n_windows
from pipeline.storage.outputs import stable_hash, write_json_atomic, write_manifest, write_parquet_atomic

TRACK_SECONDS = 6.0
# (source, first grid frame, frames): each excerpt spans [k * HOP_S, (k + n - 1) * HOP_S + WINDOW_S).
EXCERPT_PLAN = (("drums", 2, 20), ("drums", 45, 25), ("bass", 10, 40), ("vocals", 5, 30))
THRESHOLDS = {"drums": 0.62, "bass": 0.55, "other": None, "vocals": 0.7}
DETECTOR_KEY = "0123456789abcdef"
CALIBRATION_KEY = "fedcba9876543210"

STORE_KEY = "5a0e5a0e5a0e5a0e"
SCAN_KEY = "5ca75ca75ca75ca7"


def _write_catalog(catalog_root: Path, n_tracks: int, rng: np.random.Generator) -> list[Path]:
    """``n_tracks`` wav files of TRACK_SECONDS: even tracks 22.05 kHz mono, odd 44.1 kHz stereo."""
    paths = []
    for i in range(n_tracks):
        rate, channels = (22050, 1) if i % 2 == 0 else (44100, 2)
        folder = catalog_root / ("Artist A & B" if i % 2 == 0 else "artist_c") / f"album{i // 2}"
        folder.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(TRACK_SECONDS * rate)) / rate
        tone = 0.2 * np.sin(2 * np.pi * (110 * (i + 1)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
        audio = tone[None, :] + 0.05 * rng.standard_normal((channels, t.size))
        path = folder / f"song{i}.wav"
        sf.write(path, np.clip(audio, -1, 1).T, rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _write_calibration(calibration_dir: Path, rng: np.random.Generator) -> None:
    calibration_dir.mkdir(parents=True, exist_ok=True)
    grid = np.round(np.linspace(0.0, 1.0, 21), 4)
    total = 5000
    curves, thresholds = [], []
    for j, source in enumerate(SOURCES):
        n_above = np.round(total * (1 - grid) ** (1.5 + j)).astype(int)
        fraction = np.clip(0.4 + 0.6 * grid ** (0.5 + j * 0.3) - (0.3 if source == "other" else 0.0), 0, 1)
        curves.append(pd.DataFrame({"source": source, "threshold": grid, "n_above": n_above,
                                    "fraction_silent": fraction, "coverage": n_above / total}))
        p = THRESHOLDS[source]
        k = int(np.argmin(np.abs(grid - p))) if p is not None else None
        thresholds.append({
            "source": source, "calibratable": p is not None, "threshold": np.nan if p is None else p,
            "n_windows_above": 0 if k is None else int(n_above[k]),
            "achieved_fraction": float(fraction.max()) if k is None else max(0.95, float(fraction[k])),
            "v95_db": float(rng.uniform(-8, -4)) if k is None else float(rng.uniform(-26, -21)),
            "n_windows_total": total, "coverage": 0.0 if k is None else float(n_above[k] / total),
        })
    curves = pd.concat(curves, ignore_index=True)
    write_parquet_atomic(pd.DataFrame(thresholds), calibration_dir / "thresholds.parquet")
    write_parquet_atomic(curves, calibration_dir / "curves.parquet")
    fig = Figure(figsize=(3, 2), dpi=60)
    ax = fig.add_subplot()
    for source, rows in curves.groupby("source", sort=False):
        ax.plot(rows["threshold"], rows["fraction_silent"], label=source)
    ax.legend(fontsize=6)
    fig.savefig(calibration_dir / "curves.png")


def _truth_for_track(rel_file: str, n_samples: int, rate: int, excerpts: list[dict],
                     rng: np.random.Generator) -> pd.DataFrame:
    """Truth windows of one file: loud (-12..-3 dB) outside excerpts, mostly quiet inside them."""
    k = np.arange(n_windows(n_samples, rate))
    starts = k * HOP_S
    table = {"file": rel_file, "window": k.astype(np.int64), "start_s": starts}
    for source in SOURCES:
        volume = rng.uniform(-12.0, -3.0, k.size)
        for row in (e for e in excerpts if e["source"] == source):
            inside = (starts >= row["start_s"] - 1e-6) & (starts + WINDOW_S <= row["end_s"] + 1e-6)
            quiet = rng.uniform(-45.0, -22.0, k.size)
            quiet[rng.random(k.size) < 0.1] = -15.0  # a few windows the detector got wrong
            volume = np.where(inside, quiet, volume)
        table[f"V_{source}"] = volume
    return pd.DataFrame(table)


def make_extraction_run(tmp_path: Path, n_tracks: int = 3) -> tuple[Path, Path, Path, pd.DataFrame]:
    """Build ``(run_dir, calibration_dir, catalog_root, truth_df)`` under ``tmp_path``; ``run_dir``
    is the view (``data/datasets/<V>``), its store is ``data/excerpts/<STORE_KEY>``.

    Each track gets the excerpts of ``EXCERPT_PLAN`` shifted by its number of grid frames
    (4 per track: 2 drums, 1 bass, 1 vocals; none for ``other``).  Tracks alternate between two
    shards; shard 0 also has two rejects (an undecodable file and a too-short track).
    """
    tmp_path = Path(tmp_path)
    rng = np.random.default_rng(1234)
    catalog_root = tmp_path / "catalog"
    data_root = tmp_path / "data"
    store = ShardStore(data_root / "excerpts" / STORE_KEY)
    run_dir = data_root / "datasets" / "a1b2c3d4e5f60718"
    calibration_dir = data_root / "calibrate" / CALIBRATION_KEY
    tracks = _write_catalog(catalog_root, n_tracks, rng)
    _write_calibration(calibration_dir, rng)

    shard_keys = [stable_hash({"shard": s}) for s in range(2)]
    rows_by_shard: dict[str, list[dict]] = {key: [] for key in shard_keys}
    truth = []
    for i, path in enumerate(tracks):
        checksum = file_checksum(path)
        track_id = checksum[:16]
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.T
        excerpts = []
        for source, first, frames in EXCERPT_PLAN:
            start_s = (first + i) * HOP_S
            end_s = min(start_s + (frames - 1) * HOP_S + WINDOW_S, TRACK_SECONDS)
            start_sample, end_sample = int(round(start_s * rate)), min(int(round(end_s * rate)), audio.shape[1])
            excerpt_id = f"{track_id}-{source}-{start_sample}"
            file = store.folder / excerpt_relpath(source, track_id, excerpt_id)
            file.parent.mkdir(parents=True, exist_ok=True)
            sf.write(file, audio[:, start_sample:end_sample].T, rate, format="FLAC", subtype="PCM_16")
            threshold = THRESHOLDS[source]
            prob_min = float(rng.uniform(threshold, threshold + 0.1))
            excerpts.append({
                "excerpt_id": excerpt_id, "source": source, "catalog_path": str(path.resolve()),
                "catalog_checksum": checksum, "track_id": track_id, "start_s": start_s, "end_s": end_s,
                "start_sample": start_sample, "end_sample": end_sample, "duration_s": end_s - start_s,
                "sample_rate": rate, "channels": audio.shape[0], "threshold": threshold,
                "prob_mean": float(rng.uniform(prob_min, 1.0)), "prob_min": prob_min, "n_frames": frames,
                "detector_key": DETECTOR_KEY, "calibration_key": CALIBRATION_KEY,
                "audio_path": file.relative_to(data_root).as_posix(),
                "audio_format": "FLAC/PCM_16", "audio_checksum": file_checksum(file),
            })
        rows_by_shard[shard_keys[i % 2]].extend(excerpts)
        rel_file = path.relative_to(catalog_root).as_posix()
        truth.append(_truth_for_track(rel_file, audio.shape[1], rate, excerpts, rng))


    broken = catalog_root / "artist_c" / "notes.wav"
    broken.write_bytes(b"this is not audio\n")
    short = catalog_root / "artist_c" / "short.wav"
    sf.write(short, np.zeros(22050), 22050, subtype="PCM_16")
    rejects = pd.DataFrame([
        {"path": str(broken.resolve()), "track_id": "", "stage": "extract", "kind": "not audio",
         "reason": "not an audio file (no decoder recognises it, no audio stream)"},
        {"path": str(short.resolve()), "track_id": file_checksum(short)[:16], "stage": "extract", "kind": "too short",
         "reason": "track lasts 1.000 s, shorter than the 5 s minimum excerpt"},
    ])
    for number, (shard_key, rows) in enumerate(rows_by_shard.items()):
        index_parts = write_index_parts(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), store.folder, shard_key)
        shard_rejects = rejects if number == 0 else rejects.iloc[:0]
        write_parquet_atomic(pa.Table.from_pandas(shard_rejects, schema=REJECTS_SCHEMA, preserve_index=False),
                             store.folder / rejects_part_relpath(shard_key))
        counts = {"tracks": len({r["track_id"] for r in rows}), "excerpts": len(rows), "rejects": len(shard_rejects)}
        counts.update({f"excerpts_{s}": sum(r["source"] == s for r in rows) for s in SOURCES})
        audio = sorted(excerpt_relpath(r["source"], r["track_id"], r["excerpt_id"]) for r in rows)
        files = {"index": index_parts, "audio": audio, "rejects": rejects_part_relpath(shard_key)}
        write_json_atomic(store.marker_path(shard_key), {"stage": "excerpts", "key": STORE_KEY, "shard": number,
                                                         "shard_key": shard_key, "counts": counts, "files": files})

    gathered = build_datasets(run_dir, store, shard_keys, pd.DataFrame(columns=REJECTS_SCHEMA.names), {})
    write_manifest(run_dir, stage="datasets", key=run_dir.name, params={"min_seconds": 1.0},
                   inputs={"scan": SCAN_KEY, "detector": DETECTOR_KEY, "calibration": CALIBRATION_KEY,
                           "store": STORE_KEY},
                   counts=gathered.counts,
                   extra={"summary": list(gathered.summary),
                          **view_manifest_fields(store, data_root, STORE_KEY, SCAN_KEY, shard_keys)})
    return run_dir, calibration_dir, catalog_root, pd.concat(truth, ignore_index=True)


def make_empty_view(tmp_path: Path) -> Path:
    """A D_i view of a catalog where nothing is silent: two real wav tracks (a tone and noise, both
    loud throughout), extracted by the library's ``extract_shard`` with every source calibrated
    but no frame above its threshold, gathered by ``build_datasets`` with its manifest.  Returns
    the view folder ``<tmp_path>/data/datasets/<V>``."""
    from pipeline.mining.extraction import extract_shard
    from pipeline.mining.schema import PROBABILITY_SCHEMA

    tmp_path = Path(tmp_path)
    rng = np.random.default_rng(7)
    catalog_root, data_root = tmp_path / "catalog", tmp_path / "data"
    store = ShardStore(data_root / "excerpts" / STORE_KEY)
    view = data_root / "datasets" / "e0e0e0e0e0e0e0e0"
    catalog_root.mkdir(parents=True)
    rate, seconds = 22050, 7.0
    t = np.arange(int(rate * seconds)) / rate
    signals = {"tone.wav": 0.3 * np.sin(2 * np.pi * 220 * t), "noise.wav": 0.2 * rng.standard_normal(t.size)}
    tracks, frames = [], []
    for name, signal in signals.items():
        path = catalog_root / name
        sf.write(path, signal, rate, subtype="PCM_16")
        checksum = file_checksum(path)
        tracks.append({"track_id": checksum[:16], "path": str(path.resolve()), "checksum": checksum})
        n = n_windows(t.size, rate)
        frames.append(pd.DataFrame({"track_id": checksum[:16], "frame": np.arange(n, dtype=np.int32),
                                    "start_s": np.arange(n) * HOP_S,
                                    **{f"p_{s}": rng.uniform(0.0, 0.3, n).astype(np.float32) for s in SOURCES}}))
    probabilities = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=PROBABILITY_SCHEMA,
                                         preserve_index=False).to_pandas()
    shard_key = stable_hash({"shard": 0})
    result = extract_shard(pd.DataFrame(tracks), probabilities, {s: 0.9 for s in SOURCES}, RunRule(), store.folder,
                           shard_key, DETECTOR_KEY, CALIBRATION_KEY, audio_base=data_root)
    write_json_atomic(store.marker_path(shard_key), {"stage": "excerpts", "key": STORE_KEY, "shard": 0,
                                                     "shard_key": shard_key, "counts": result.counts,
                                                     "files": result.files})
    gathered = build_datasets(view, store, [shard_key], pd.DataFrame(columns=REJECTS_SCHEMA.names), {})
    write_manifest(view, stage="datasets", key=view.name, params={}, inputs={"store": STORE_KEY, "scan": SCAN_KEY},
                   counts=gathered.counts,
                   extra={"summary": list(gathered.summary),
                          **view_manifest_fields(store, data_root, STORE_KEY, SCAN_KEY, [shard_key])})
    return view


def write_excerpt_index(run_dir: Path, excerpts: list[tuple[str, np.ndarray, int]]) -> Path:
    """FLAC excerpts and a hive-partitioned index under ``run_dir``, a D_i folder whose rows'
    ``audio_path`` is relative to the data root (``run_dir``'s grandparent, see
    ``pipeline.mining.datasets.DatasetRun``); ``excerpts`` holds ``(source, audio (channels, samples), rate)``."""
    rows: dict[str, list[dict]] = {}
    for n, (source, wav, rate) in enumerate(excerpts):
        file = run_dir / "excerpts" / source / f"x{n:03d}.flac"
        file.parent.mkdir(parents=True, exist_ok=True)
        sf.write(file, wav.T, rate, subtype="PCM_24")
        path = Path(os.path.relpath(file, run_dir.parent.parent)).as_posix()
        frames = wav.shape[1]
        rows.setdefault(source, []).append(dict(
            excerpt_id=f"t{n:03d}-{source}-0", catalog_path=f"/catalog/{n}.mp3", catalog_checksum="0" * 64,
            track_id=f"t{n:03d}", start_s=0.0, end_s=frames / rate, start_sample=0, end_sample=frames,
            duration_s=frames / rate, sample_rate=rate, channels=wav.shape[0], threshold=0.9, prob_mean=0.95,
            prob_min=0.91, n_frames=int(frames / rate / 0.064), detector_key="det", calibration_key="cal",
            audio_path=str(path), audio_format="FLAC/PCM_24", audio_checksum="0" * 64))
    schema = pa.schema([f for f in INDEX_SCHEMA if f.name != "source"])  # source is the partition
    for source, source_rows in rows.items():
        part = run_dir / "index" / f"source={source}" / "part-0.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(source_rows, schema=schema), part)
    return run_dir
