"""The model registry: every model follows the contract, round-trips through a checkpoint
(weights_only), and is separated and scored by the evaluation like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_separation import TINY

from pipeline.separation import registry
from pipeline.separation.apply import separate_track
from pipeline.separation.contract import separate
from pipeline.separation.registry import build_model, checkpoint_fields, load_model, make_config, model_names


def test_registered_models_and_their_sizes():
    assert model_names() == ["demucs", "demucs2019", "tasnet"] == sorted(TINY)
    for name in model_names():
        entry = registry.get(name)
        assert set(entry.sizes) >= {"paper", "cpu"}
        assert make_config(name, size="paper") == entry.config_class(**entry.sizes["paper"])
        assert build_model(name, TINY[name]).name == name
    assert make_config("demucs", size="paper").channels == 48
    assert make_config("demucs2019", size="paper").channels == 100  # the 2019 command line
    with pytest.raises(ValueError, match="registered"):
        registry.get("open-unmix")
    with pytest.raises(ValueError, match="no size"):
        make_config("tasnet", size="huge")
    with pytest.raises(TypeError):
        make_config("tasnet", make_config("demucs"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("tasnet"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_contract_shapes_and_lengths(name):
    torch.manual_seed(0)
    model = build_model(name, TINY[name])
    for n in (1500, 4000):
        valid = model.valid_length(n)
        out = model(torch.randn(2, 2, valid))
        assert out.shape == (2, 4, 2, model.output_length(valid))
        assert n <= out.shape[-1] <= valid  # covers n samples, never longer than the input
        assert separate(model, torch.randn(1, 2, n)).shape == (1, 4, 2, n)


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, TINY[name])
    torch.save({**checkpoint_fields(model), "epoch": 3}, tmp_path / "best.pt")
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert state["model_name"] == name and isinstance(state["model_config"], dict)
    loaded = load_model(tmp_path / "best.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    x = torch.randn(1, 2, model.valid_length(2000))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoints_that_cannot_load(tmp_path):
    model = build_model("tasnet", TINY["tasnet"])
    fields = checkpoint_fields(model)
    torch.save({k: v for k, v in fields.items() if k != "model_name"}, tmp_path / "nameless.pt")
    with pytest.raises(ValueError, match="no model_name"):
        load_model(tmp_path / "nameless.pt")
    torch.save({**fields, "model_name": "demucs"}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="unknown DemucsConfig fields"):
        load_model(tmp_path / "wrong.pt")


@pytest.mark.parametrize("name", sorted(TINY))
def test_evaluation_separates_whole_tracks_with_any_model(name):
    torch.manual_seed(0)
    model = build_model(name, TINY[name])
    mix = np.random.default_rng(0).normal(size=(2, 8000 + 123)).astype(np.float32)
    out = separate_track(model, mix, segment_s=0.5, overlap_s=0.1)
    assert out.shape == (4, 2, 8123) and np.isfinite(out).all()
