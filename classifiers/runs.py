"""The detector's stage bodies over stored features: :func:`build_detector` (train),
:func:`build_detect` (probabilities) and :func:`build_detector_report`.

Inputs are feature shards (:mod:`pipeline.features.store`) and the labels table of the
Labels stage (``track_id, window, V_drums .. V_vocals`` in dB); outputs are files in the
stage's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from classifiers.detector import load_checkpoint, save_checkpoint
from classifiers.inference import default_numeric_path, for_numeric_path, predict, probabilities_frame
from classifiers.remix import RemixConfig, RemixSets, mono_stems
from classifiers.report import detector_report
from classifiers.training import (
    PAPER_BATCH_SIZE,
    PAPER_CROP_STRIDE_S,
    PAPER_LR,
    DetectorTrainConfig,
    train_config_dict,
    train_detector,
)
from pipeline.features.store import FeatureShard
from pipeline.mining.schema import PROBABILITY_SCHEMA
from pipeline.progress import progress_bar
from pipeline.sources import HOP_S, LABEL_SILENT_DB, SOURCES
from pipeline.storage.checkpoints import CHECKPOINT
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, write_json_atomic, write_parquet_atomic

VOLUME_COLUMNS = [f"V_{name}" for name in SOURCES]


def volumes_by_track(labels_path: str | Path) -> dict[str, np.ndarray]:
    """``track_id -> volumes (4, n_windows)`` dB from a labels Parquet file."""
    labels = pd.read_parquet(labels_path, columns=["track_id", "window", *VOLUME_COLUMNS])
    return {track: group.sort_values("window")[VOLUME_COLUMNS].to_numpy(np.float32).T
            for track, group in labels.groupby("track_id", sort=False)}


def labelled_pairs(store: str | Path, volumes: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(features (7, 54, T), volumes (4, n))`` for every track of a feature shard."""
    shard = FeatureShard(store)
    return [(shard.get(track), volumes[track]) for track in shard.track_ids]


def train_stems(stem_root: str | Path) -> list[np.ndarray]:
    """The train split's stems, 16 kHz mono ``(4, samples)`` each (what remixes are made of)."""
    from pipeline.corpora import stemset
    from pipeline.sources import FEATURE_RATE

    return [mono_stems(stemset.load_stems(track, FEATURE_RATE)[0]) for track in stemset.list_tracks(stem_root, "train")]


def build_detector(train_store: Path, valid_store: Path, labels_path: Path, config: DetectorTrainConfig, seed: int,
                   out: Path, remix: RemixConfig | None = None, stem_root: str | Path | None = None) -> StageResult:
    """Train on the train split, stop early on the valid split; write ``detector.pt``,
    ``history.parquet`` and ``history.json`` into ``out`` (and ``checkpoint.pt`` after every
    epoch, from which an interrupted run resumes); counts ``train_tracks``, ``valid_tracks``,
    ``epochs``, ``best_epoch``, ``best_valid_loss`` and, with ``remix`` (remixes of the train
    split's stems under ``stem_root``, :mod:`classifiers.remix`), ``remix_sets`` and
    ``remix_seconds`` (audio featurised for them)."""
    volumes = volumes_by_track(labels_path)
    train_pairs = labelled_pairs(train_store, volumes)
    valid_pairs = labelled_pairs(valid_store, volumes)
    sets = RemixSets(train_stems(stem_root), remix, seed, config.num_threads) if remix is not None else None
    model, history = train_detector(train_pairs, valid_pairs, config, seed, checkpoint=out / CHECKPOINT, extra=sets)
    save_checkpoint(out / "detector.pt", model, model.config,
                    extra={"train": train_config_dict(config), "seed": seed,
                           **({"remix": asdict(remix)} if remix is not None else {}),
                           # without wall-clock seconds, so the checkpoint's bytes depend on inputs only
                           "history": [{k: v for k, v in r.items() if k != "seconds"} for r in history]})
    write_parquet_atomic(pd.DataFrame(history), out / "history.parquet")
    write_json_atomic(out / "history.json", history)
    best = min(history, key=lambda r: r["valid_loss"] if np.isfinite(r["valid_loss"]) else np.inf)
    counts = {"train_tracks": len(train_pairs), "valid_tracks": len(valid_pairs), "epochs": len(history),
              "best_epoch": best["epoch"], "best_valid_loss": round(float(best["valid_loss"]), 5)}
    if sets is not None:  # counted over the epochs, not what this process made: a resumed run made fewer
        made = len({remix.set_number(r["epoch"]) for r in history})
        counts.update(remix_sets=made, remix_seconds=round(made * remix.songs * remix.seconds, 1))
    return StageResult(counts)


def build_detect(checkpoint: Path, store: Path, out: Path, num_threads: int | None = None,
                 progress: Progress | None = None) -> StageResult:
    """Per-frame probabilities for every track of a feature shard, to the Parquet file ``out``.

    ``progress(tracks done, total, track_id)`` is called before each track and once at the end.
    Counts: ``tracks``, ``frames``, ``audio_seconds`` (the seconds the frames cover, frames x 64 ms),
    ``numeric_path`` (:func:`classifiers.inference.default_numeric_path`, the one used),
    ``tracks_in_passes`` / ``tracks_fell_back`` (tracks the fast path split into parallel BiLSTM
    passes; of them, those whose passes disagreed and that were scored again in one pass)."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    model, _, _ = load_checkpoint(checkpoint)
    numeric_path = default_numeric_path()  # recorded in the counts (the stage's manifest)
    model = for_numeric_path(model, numeric_path)
    shard = FeatureShard(store)
    # shard.reader: the track's float16 frames, read from the file by predict one chunk at a time
    frames, in_passes, fell_back = [], 0, 0
    tracks = progress_bar(shard.track_ids, total=len(shard), desc=f"detect {store.stem}", leave=False)
    for done, track in enumerate(tracks):
        if progress:
            progress(done, len(shard), track)
        schedule = {}
        frames.append(probabilities_frame(track, predict(model, shard.reader(track), schedule=schedule)))
        in_passes += bool(schedule)
        fell_back += bool(schedule.get("fell_back"))
    if progress:
        progress(len(frames), len(shard), "")
    table = (pd.concat(frames, ignore_index=True) if frames
             else PROBABILITY_SCHEMA.empty_table().to_pandas())
    write_parquet_atomic(pa.Table.from_pandas(table, schema=PROBABILITY_SCHEMA, preserve_index=False), out)
    return StageResult({"tracks": len(frames), "frames": len(table), "audio_seconds": round(len(table) * HOP_S, 1),
                        "numeric_path": numeric_path, "tracks_in_passes": in_passes, "tracks_fell_back": fell_back})


def build_detector_report(checkpoint: Path, store: Path, labels_path: Path, out: Path) -> StageResult:
    """Quality on held-out tracks: ``quality.parquet`` / ``quality.csv`` and
    ``volume_vs_probability.png``; counts ``tracks`` and ``quality`` (the table's records),
    one summary line per source."""
    model, _, _ = load_checkpoint(checkpoint)
    pairs = labelled_pairs(store, volumes_by_track(labels_path))
    table, _ = detector_report(model, pairs, out / "volume_vs_probability.png")
    write_parquet_atomic(table, out / "quality.parquet")
    (out / "quality.csv").write_text(table.to_csv(index=False))
    lines = [f"{r.source}: ROC AUC {r.auc_13:.3f} (-13 dB), {r.auc_20:.3f} (-20 dB); AP {r.ap_13:.3f}; "
             f"Spearman(P, V) {r.spearman_volume:+.2f}" for r in table.itertuples()]
    return StageResult({"tracks": len(pairs), "quality": json.loads(table.to_json(orient="records"))}, lines)


def train_config(width: float, epochs: int, patience: int, crop_seconds: float, gain_db: float,
                 shift_rows: int, num_threads: int | None, lr: float = PAPER_LR,
                 batch_size: int = PAPER_BATCH_SIZE, silent_db: float = LABEL_SILENT_DB,
                 crop_stride_seconds: float = PAPER_CROP_STRIDE_S) -> DetectorTrainConfig:
    """The paper's recipe (Adam 5e-4, batch 64, -13 dB labels, crops every 0.5 s) at a given
    width and length, with optional augmentations: random gain of ``gain_db`` and pitch shift
    of ``shift_rows`` order-1 rows (0 = off, as in the paper), and optionally another ``lr``,
    ``batch_size``, label threshold ``silent_db`` and crop stride ``crop_stride_seconds``."""
    return replace(DetectorTrainConfig(), width=width, epochs=epochs, patience=patience, crop_seconds=crop_seconds,
                   gain_db=gain_db, shift_rows=shift_rows, num_threads=num_threads, lr=lr, batch_size=batch_size,
                   silent_db=silent_db, crop_stride_seconds=crop_stride_seconds)
