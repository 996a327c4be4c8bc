"""Separator training: data windows, exact resume, outputs, plain recipe without D_i, DDP sync,
for every registered model; TasNet's plateau schedule and early stopping."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from fixtures_extraction import write_excerpt_index
from fixtures_separation import TINY, killed_after_epoch
from fixtures_stems import RATE, noise, write_stem_set

from pipeline.corpora.stemset import list_tracks, load_stems
from pipeline.separation import schemes as separator_schemes
from pipeline.separation.config import TrainConfig
from pipeline.separation.data import StemWindows
from pipeline.separation.demucs import DemucsConfig
from pipeline.separation.registry import load_model, model_names
from pipeline.separation.trainer import SeparatorTrainer
from pipeline.separation.training import make_trainer, train_separator

MODEL = DemucsConfig(**TINY["demucs"])


def _config(model_name: str = "demucs", **overrides) -> TrainConfig:
    """A tiny run of ``model_name`` with its recipe (time shift forced on, so the augmentation
    stream is exercised for every model)."""
    values = dict(epochs=3, batches_per_epoch=3, batch_size=2, window_s=0.4, max_shift_s=0.05, model=TINY[model_name],
                  remix_probability=0.5, valid_max_windows=4, seed=3, num_threads=1)
    values.update(overrides)
    return TrainConfig.for_model(model_name, **values)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("separator")
    stems = write_stem_set(base / "stems", {"train": 2, "valid": 1}, seconds=1.5)
    run = write_excerpt_index(base / "extraction", [
        ("bass", noise(2, 1.0, RATE), RATE),
        ("vocals", noise(1, 0.6, 22_050, seed=1), 22_050),  # mono 22.05 kHz: resampled, duplicated
        ("drums", noise(2, 0.2, RATE, seed=2), RATE),  # shorter than the window: zero-padded
    ])
    return stems, run


def test_windows_lazy_equals_in_memory(data):
    stems, _ = data
    eager = StemWindows(stems, "train", 3000, RATE, lazy=False)
    lazy = StemWindows(stems, "train", 3000, RATE, lazy=True)
    auto = StemWindows(stems, "train", 3000, RATE, memory_limit_bytes=1000)
    assert not eager.lazy and lazy.lazy and auto.lazy
    a = eager.sample(np.random.default_rng(5), 4)
    b = lazy.sample(np.random.default_rng(5), 4)
    assert a.shape == (4, 4, 2, 3000) and np.array_equal(a, b)
    full, _ = load_stems(list_tracks(stems, "train")[1])
    np.testing.assert_array_equal(lazy.read(1, 1000, 3000), full[..., 1000:4000])
    tail = lazy.read(1, full.shape[-1] - 100, 300)  # past the end: zero-padded
    np.testing.assert_array_equal(tail[..., :100], full[..., -100:])
    assert np.all(tail[..., 100:] == 0)
    assert not np.array_equal(a, eager.sample(np.random.default_rng(6), 4))


def test_windows_lazy_resampling_close_to_in_memory(data):
    stems, _ = data
    eager = StemWindows(stems, "train", 2000, 8000, lazy=False)
    lazy = StemWindows(stems, "train", 2000, 8000, lazy=True)
    a, b = eager.read(0, 2000, 2000), lazy.read(0, 2000, 2000)
    assert np.abs(a - b)[..., 50:-50].max() < 0.02 * np.abs(a).max()  # chunk edges of the resampler aside


def test_fixed_windows_cover_each_track(data):
    stems, _ = data
    valid = StemWindows(stems, "valid", 4000, 8000)
    spans = valid.fixed_windows()
    assert spans == [(0, 0), (0, 4000), (0, 8000)]  # 1.5 s at 8 kHz = 12000 samples
    assert valid.fixed_windows(max_windows=2) == [(0, 0), (0, 8000)]
    assert valid.read_windows(spans).shape == (3, 4, 2, 4000)


@pytest.mark.parametrize("model_name", ["demucs", "tasnet"])
def test_resume_after_interruption_is_bit_identical(data, tmp_path, monkeypatch, model_name):
    stems, run = data
    config = _config(model_name, lr_patience=1)  # TasNet: a plateau decay is likely within 3 epochs
    full = train_separator(config, stems, run, tmp_path / "full", progress=False)
    killed_after_epoch(monkeypatch, lambda: train_separator(config, stems, run, tmp_path / "cut", progress=False))
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = train_separator(config, stems, run, tmp_path / "cut", progress=False)

    assert sum(r["remix_steps"] for r in full) > 0  # the remix path and its random draws ran
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for key in ("optimizer", "remix_optimizer"):
        for index, state in a[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b[key]["state"][index][name]), (key, index, name)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in full] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed]


def test_outputs_logs_and_lr_decay(data, tmp_path):
    stems, run = data
    out = tmp_path / "out"
    history = train_separator(_config(epochs=2, remix_probability=1.0, lr_decay_every=1), stems, run, out,
                              progress=False)
    assert [r["lr"] for r in history] == pytest.approx([5e-4, 1e-4])
    for row in history:
        assert row["remix_steps"] == 3  # probability 1: after every main batch
        assert row["remix_steps"] == sum(row[f"remix_steps_{s}"] for s in ("drums", "bass", "other", "vocals"))
        assert row["remix_steps_other"] == 0  # no D_other
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["remix_loss"]) and np.isfinite(row["valid_loss"])
    csv = pd.read_csv(out / "history.csv")
    assert list(csv["epoch"]) == [1, 2] and {"train_loss", "remix_loss", "valid_loss"} <= set(csv.columns)
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["remix_enabled"] and summary["d_i_excerpts"]["other"] == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["rng"]) == 1
    assert checkpoint["scheduler"]["last_epoch"] == 2
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best"] == min(r["valid_loss"] for r in history)
    model = load_model(out / "best.pt")
    assert model.config == MODEL
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporaries left behind
    with pytest.raises(ValueError, match="different configuration"):
        train_separator(_config(epochs=3, lr=1e-3), stems, run, out, progress=False)


def test_without_any_d_i_trains_plain_supervised(data, tmp_path, caplog):
    stems, _ = data
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    with caplog.at_level(logging.WARNING, logger=separator_schemes.__name__):
        history = train_separator(_config(epochs=1, remix_probability=1.0), stems, empty_run, tmp_path / "o",
                                  progress=False)
    assert "without the remix step" in caplog.text
    assert history[0]["remix_steps"] == 0 and np.isnan(history[0]["remix_loss"])
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["remix_enabled"] is False


def test_the_papers_protocol_gives_remix_runs_the_plain_runs_main_steps_and_adds_remix_steps(data, tmp_path):
    stems, run = data
    summaries = {}
    for name, scheme, budget in (("plain", "supervised", "main"), ("remix", "remix", "main"),
                                 ("equal total", "remix", "total")):
        config = _config(epochs=10, max_updates=5, scheme=scheme, budget=budget, remix_probability=0.5)
        history = train_separator(config, stems, run, tmp_path / name, progress=False)
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
        assert summaries[name]["budget_spent"] and history[-1]["updates"] == summaries[name]["updates"]
    plain, remix, total = summaries["plain"], summaries["remix"], summaries["equal total"]
    assert plain["main_steps"] == remix["main_steps"] == 5 and plain["main_examples"] == remix["main_examples"] == 10
    assert plain["remix_steps"] == 0 and remix["remix_steps"] > 0  # on top of the main steps
    assert remix["updates"] == 5 + remix["remix_steps"] and remix["examples"] == 10 + remix["remix_examples"]
    assert remix["remix_examples"] == 2 * remix["remix_steps"] and remix["budget"] == "main"
    # the equal-total budget: the remix steps count, so the remix run makes fewer main steps
    assert total["updates"] == 5 and total["main_steps"] + total["remix_steps"] == 5 and total["remix_steps"] > 0
    with pytest.raises(ValueError, match="budget"):
        _config(budget="everything")


def _ddp_worker(rank: int, world: int, port: int, stems: str, run: str, out: str, model_name: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from pipeline.separation import distributed

    try:
        trainer = make_trainer(_config(model_name, epochs=1, batches_per_epoch=2, batch_size=4, remix_probability=1.0),
                               stems, Path(out) / "train", device="cpu", progress=False, datasets=run)
        first = trainer.train_data.sample(copy.deepcopy(trainer.data_rng), 1)  # this rank's first windows
        initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        history = trainer.run(resume=False)
        torch.save({"initial": initial, "final": trainer.model.state_dict(), "history": history,
                    "first": torch.from_numpy(first)}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", model_names())
def test_ddp_two_processes_stay_in_sync(data, tmp_path, free_port, model_name):
    stems, run = data
    world = 2
    mp.spawn(_ddp_worker, args=(world, free_port(), str(stems), str(run), str(tmp_path), model_name), nprocs=world)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, value in results[0]["final"].items():
        assert torch.equal(value, results[1]["final"][name]), name
        assert torch.equal(results[0]["initial"][name], results[1]["initial"][name]), name
    moved = [not torch.equal(results[0]["initial"][k], v) for k, v in results[0]["final"].items()
             if not k.endswith("scale")]
    assert all(moved)
    assert not torch.equal(results[0]["first"], results[1]["first"])  # each rank draws its own windows
    assert results[0]["history"][0]["remix_steps"] == 2 == results[1]["history"][0]["remix_steps"]
    checkpoint = torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["rng"][0]["decision"] == checkpoint["rng"][1]["decision"]  # shared remix decisions
    assert checkpoint["rng"][0]["data"] != checkpoint["rng"][1]["data"]
    for name, value in checkpoint["model"].items():
        assert torch.equal(value, results[1]["final"][name]), name


def _scripted_validation(values: list[float]):
    """A stand-in for ``SeparatorTrainer.validate``: the next of ``values`` each epoch."""

    def validate(self) -> float:
        return values[len(self.history)]

    return validate


def test_plateau_halves_lr_and_early_stopping_ends_the_run(data, tmp_path, monkeypatch):
    stems, run = data
    # Best at epoch 2; epochs 3, 4, 5 do not improve (a tie is no improvement).
    monkeypatch.setattr(SeparatorTrainer, "validate", _scripted_validation([5.0, 4.0, 4.5, 4.0, 4.2, 3.0, 3.0]))
    config = _config("tasnet", epochs=7, lr_patience=2, early_stop_patience=3, remix_probability=0.0)
    assert config.lr == 1e-3 and config.lr_schedule == "plateau" and config.lr_decay == 2.0
    history = train_separator(config, stems, run, tmp_path / "o", progress=False)
    assert len(history) == 5  # stopped after 3 epochs without improvement, not at epochs=7
    assert [r["is_best"] for r in history] == [True, True, False, False, False]
    # lr halved after the 2nd stale epoch (epoch 4): epoch 5 runs at half the rate.
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5e-4])
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["stopped_early"] and summary["best_epoch"] == 2 and summary["model_name"] == "tasnet"
    assert torch.load(tmp_path / "o" / "best.pt", weights_only=True)["epoch"] == 2
    # A stopped run stays stopped when started again with the same configuration.
    assert len(train_separator(config, stems, run, tmp_path / "o", progress=False)) == 5


def test_tasnet_recipe_is_the_frugal_papers():
    config = TrainConfig.for_model("tasnet")
    assert (config.loss, config.lr, config.grad_clip, config.lr_schedule, config.lr_decay, config.lr_patience,
            config.early_stop_patience, config.window_s) == ("si_snr", 1e-3, 5.0, "plateau", 2.0, 3, 10, 20.0)
    assert not (config.flip_sign or config.flip_channels or config.shuffle_sources) and config.max_shift_s == 0
    assert config.model.filters == 500 and config.model.hidden == 500 and config.model.lstm_layers == 4
    # The augmentations are there when asked for.
    assert TrainConfig.for_model("tasnet", flip_channels=True).flip_channels
    demucs = TrainConfig()
    assert (demucs.model_name, demucs.loss, demucs.lr, demucs.grad_clip, demucs.lr_schedule) == \
           ("demucs", "l1", 5e-4, None, "step")
    round_trip = TrainConfig.from_dict(config.to_dict())
    assert round_trip == config
    with pytest.raises(ValueError, match="unknown separator model"):
        TrainConfig.for_model("wave-u-net")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="l2")
    with pytest.raises(ValueError, match="unknown TasNetConfig fields"):
        TrainConfig.for_model("tasnet", model={"channels": 4})
