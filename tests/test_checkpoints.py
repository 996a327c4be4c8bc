"""Checkpoints: one module writes and reads the files of every model (detector, separators,
encoder) and refuses a missing, damaged or foreign one with its reason; one epoch loop resumes
every trainer, the detector's too, bit-identically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fixtures_separation import killed_after_epoch
from torch import nn

from classifiers.detector import DetectorConfig, SilentSourceDetector, load_checkpoint, n_output_frames, save_checkpoint
from classifiers.training import DetectorTrainConfig, train_detector
from pipeline.separation.registry import build_model, checkpoint_fields, load_model
from pipeline.storage import checkpoints
from pipeline.storage.checkpoints import CheckpointError


def test_read_refuses_missing_damaged_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        checkpoints.read(tmp_path / "nothing.pt")
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 half of a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoints.read(tmp_path / "damaged.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: weights_only refuses to run it
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoints.read(tmp_path / "module.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        checkpoints.read(tmp_path / "list.pt")

    config = DetectorConfig(width=0.0625)
    save_checkpoint(tmp_path / "detector.pt", SilentSourceDetector(config), config)
    with pytest.raises(CheckpointError, match="not a separator checkpoint"):
        load_model(tmp_path / "detector.pt")
    torch.save(checkpoint_fields(build_model("demucs", dict(channels=4, depth=2, lstm_layers=1))),
               tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="not a detector checkpoint"):
        load_checkpoint(tmp_path / "best.pt")


def test_the_detector_file_keeps_its_layout(tmp_path):
    torch.manual_seed(0)
    config = DetectorConfig(width=0.0625)
    model = SilentSourceDetector(config)
    save_checkpoint(tmp_path / "detector.pt", model, config, {"seed": 3})
    payload = torch.load(tmp_path / "detector.pt", weights_only=True)
    assert list(payload) == ["format", "config", "state_dict", "extra"] and payload["format"] == 1
    assert payload["config"] == dataclasses.asdict(config) and payload["extra"] == {"seed": 3}
    state = model.state_dict()
    assert list(payload["state_dict"]) == list(state)
    assert all(torch.equal(payload["state_dict"][k], state[k]) for k in state)
    loaded, loaded_config, extra = load_checkpoint(tmp_path / "detector.pt")
    assert loaded_config == config and extra == {"seed": 3} and not loaded.training


def _pairs(seed: int, count: int, frames: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` tracks of random features ``(7, 54, frames)`` (1.6 s) and volumes in dB: the
    detector trains on them like on scattering features, without computing any."""
    rng = np.random.default_rng(seed)
    return [(rng.random((7, 54, frames), dtype=np.float32),
             rng.uniform(-40, 0, (4, n_output_frames(frames))).astype(np.float32)) for _ in range(count)]


def test_detector_training_resumes_bit_identically(tmp_path, monkeypatch):
    train, valid = _pairs(0, 2), _pairs(1, 1)
    config = DetectorTrainConfig(epochs=3, batch_size=8, crop_seconds=1.0, width=0.0625, patience=5, gain_db=6.0,
                                 shift_rows=1)
    model, full = train_detector(train, valid, config, seed=0, progress=False)  # without a checkpoint
    killed_after_epoch(monkeypatch, lambda: train_detector(train, valid, config, seed=0, progress=False,
                                                           checkpoint=tmp_path / "checkpoint.pt"))
    assert checkpoints.read(tmp_path / "checkpoint.pt")["epoch"] == 2
    resumed_model, resumed = train_detector(train, valid, config, seed=0, progress=False,
                                            checkpoint=tmp_path / "checkpoint.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in full] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in resumed]
    with pytest.raises(ValueError, match="another configuration"):
        train_detector(train, valid, dataclasses.replace(config, lr=1e-3), seed=0, progress=False,
                       checkpoint=tmp_path / "checkpoint.pt")
