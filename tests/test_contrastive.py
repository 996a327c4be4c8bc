"""Contrastive scheme: the triplet loss by hand, triplets from the right songs and sources, the
encoder hook of every model, exact resume of pretraining and of a contrastive separator run,
and a pretrained encoder as the separator's starting point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from fixtures_separation import TINY, killed_after_epoch
from fixtures_stems import write_stem_set

from pipeline.separation import registry
from pipeline.separation.config import TrainConfig
from pipeline.separation.contrastive import (
    PretrainConfig,
    TripletSampler,
    init_encoder,
    pretrain_encoder,
    triplet_loss,
)
from pipeline.separation.data import StemWindows
from pipeline.separation.training import make_trainer, train_separator
from pipeline.sources import SOURCES

RATE = 8000


def test_triplet_loss_equals_its_formula_on_hand_made_embeddings():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 2.0]])  # ||a - p||: 5, 1
    n = torch.tensor([[0.0, 1.0], [4.0, 5.0]])  # ||a - n||: 1, 5
    # max(5 - 1 + 1, 0) = 5 and max(1 - 5 + 1, 0) = 0 -> mean 2.5
    assert triplet_loss(a, p, n).item() == pytest.approx(2.5, abs=1e-5)
    assert triplet_loss(a, p, n, margin=0.5).item() == pytest.approx(4.5 / 2, abs=1e-5)


def _write_coded_stems(root: Path, tracks: int, seconds: float = 1.0) -> Path:
    """Train tracks whose stem (t, k) is the constant 0.01 * (10 t + k + 1) on both channels:
    every window tells its song and source."""
    n = int(seconds * RATE)
    for t in range(tracks):
        folder = root / "train" / f"song-{t}"
        folder.mkdir(parents=True)
        stems = [np.full((n, 2), 0.01 * (10 * t + k + 1), dtype=np.float32) for k in range(len(SOURCES))]
        for name, stem in zip(SOURCES, stems):
            sf.write(folder / f"{name}.wav", stem, RATE, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems), RATE, subtype="FLOAT")
    return root


def _code(window: np.ndarray) -> tuple[int, int]:
    value = int(round(float(window.mean()) * 100)) - 1
    return value // 10, value % 10  # (song, source)


def test_triplets_pair_a_source_across_songs_against_another_source(tmp_path):
    root = _write_coded_stems(tmp_path / "stems", 3)
    data = StemWindows(root, "train", 400, RATE)
    anchor, positive, negative, sources = TripletSampler(data, 400).sample(np.random.default_rng(0), 60)
    assert anchor.shape == positive.shape == negative.shape == (60, 2, 400)
    songs_differ = negative_from_anchor_song = 0
    for b in range(60):
        (sa, ka), (sp, kp), (sn, kn) = _code(anchor[b]), _code(positive[b]), _code(negative[b])
        assert ka == kp == sources[b, 0] and kn == sources[b, 1] != ka
        assert sa != sp
        songs_differ += 1
        negative_from_anchor_song += sn == sa
    assert 0 < negative_from_anchor_song < 60  # the negative comes from any song, the anchor's too
    with pytest.raises(ValueError, match="two different songs"):
        TripletSampler(StemWindows(_write_coded_stems(tmp_path / "one", 1), "train", 400, RATE), 400)


@pytest.mark.parametrize("model_name", registry.model_names())
def test_every_model_names_its_encoder_and_pools_an_embedding(model_name):
    torch.manual_seed(0)
    model = registry.build_model(model_name, TINY[model_name])
    wav = torch.randn(3, 2, model.valid_length(1000))
    latent, embedding = model.encode(wav), model.embed(wav)
    assert latent.dim() == 3 and latent.shape[0] == 3
    torch.testing.assert_close(embedding, latent.mean(-1))
    state = model.encoder_state_dict()
    assert state and all(k.split(".")[0] in model.encoder_modules for k in state)
    other = registry.build_model(model_name, TINY[model_name])
    other.load_encoder_state_dict(state)
    torch.testing.assert_close(other.embed(wav), embedding)
    with pytest.raises(ValueError, match="does not fit"):
        other.load_encoder_state_dict({k: v for k, v in list(state.items())[1:]})


def _pretrain_config(**overrides) -> PretrainConfig:
    values = dict(model_name="demucs", model=TINY["demucs"], epochs=3, batches_per_epoch=3, batch_size=4,
                  window_s=0.1, seed=1, num_threads=1)
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def stems(tmp_path_factory) -> Path:
    return _write_coded_stems(tmp_path_factory.mktemp("contrastive") / "stems", 3)


def test_pretraining_lowers_the_loss_and_writes_its_curve(tmp_path):
    # Sources that differ in kind (pulses, a bass tone, noise, a voice-like tone).  The tiny encoder's
    # embeddings start far inside the margin (loss ~ 1); at the paper's 1e-3 they move slowly, so 1e-2.
    stems = write_stem_set(tmp_path / "stems", {"train": 3}, seconds=1.5, rate=RATE)
    history = pretrain_encoder(_pretrain_config(epochs=6, lr=1e-2), stems, tmp_path / "pre", progress=False)
    losses = [r["triplet_loss"] for r in history]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    for name in ("checkpoint.pt", "encoder.pt", "history.csv", "history.json", "losses.png", "summary.json"):
        assert (tmp_path / "pre" / name).stat().st_size > 0, name


def test_pretraining_resume_is_bit_identical(stems, tmp_path, monkeypatch):
    config = _pretrain_config()
    full = pretrain_encoder(config, stems, tmp_path / "full", progress=False)
    killed_after_epoch(monkeypatch, lambda: pretrain_encoder(config, stems, tmp_path / "cut", progress=False))
    resumed = pretrain_encoder(config, stems, tmp_path / "cut", progress=False)
    a = torch.load(tmp_path / "full" / "encoder.pt", weights_only=True)["encoder"]
    b = torch.load(tmp_path / "cut" / "encoder.pt", weights_only=True)["encoder"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed]
    with pytest.raises(ValueError, match="different configuration"):
        pretrain_encoder(_pretrain_config(margin=0.5), stems, tmp_path / "cut", progress=False)


def _train_config(**overrides) -> TrainConfig:
    values = dict(epochs=3, batches_per_epoch=2, batch_size=2, window_s=0.1, max_shift_s=0.01, model=TINY["demucs"],
                  valid_max_windows=2, seed=1, num_threads=1, scheme="contrastive")
    values.update(overrides)
    return TrainConfig.for_model("demucs", **values)


def test_the_separator_starts_from_the_pretrained_encoder(stems, tmp_path):
    pretrain_encoder(_pretrain_config(), stems, tmp_path / "pre", progress=False)
    encoder = tmp_path / "pre" / "encoder.pt"
    trainer = make_trainer(_train_config(), stems, tmp_path / "sep", progress=False, encoder=encoder)
    pretrained = torch.load(encoder, weights_only=True)["encoder"]
    start = trainer.model.encoder_state_dict()
    assert start.keys() == pretrained.keys() and all(torch.equal(start[k], pretrained[k]) for k in start)
    torch.manual_seed(1)  # the same seed's fresh model: the encoder moved in pretraining, the rest did not
    fresh = registry.build_model("demucs", TINY["demucs"]).state_dict()
    assert not all(torch.equal(fresh[k], pretrained[k]) for k in pretrained if not k.endswith("scale"))
    rest = [k for k in fresh if k not in pretrained]
    assert rest and all(torch.equal(fresh[k], trainer.model.state_dict()[k]) for k in rest)
    with pytest.raises(ValueError, match="pretrained encoder"):
        make_trainer(_train_config(), stems, tmp_path / "x", progress=False)
    other = registry.build_model("demucs", {**TINY["demucs"], "channels": 6})
    with pytest.raises(ValueError, match="was pretrained for"):
        init_encoder(other, encoder)


def test_contrastive_separator_resume_is_bit_identical(stems, tmp_path, monkeypatch):
    pretrain_encoder(_pretrain_config(epochs=1), stems, tmp_path / "pre", progress=False)
    encoder = tmp_path / "pre" / "encoder.pt"
    config = _train_config()
    full = train_separator(config, stems, None, tmp_path / "full", progress=False, encoder=encoder)
    killed_after_epoch(monkeypatch, lambda: train_separator(
        config, stems, None, tmp_path / "cut", progress=False, encoder=encoder))
    resumed = train_separator(config, stems, None, tmp_path / "cut", progress=False, encoder=encoder)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.DataFrame(full).drop(columns="seconds"),  # NaN valid loss: no valid split
                                  pd.DataFrame(resumed).drop(columns="seconds"))
    # the pretraining is counted as the run's extra compute: 1 epoch of 3 Adam steps on 4 triplets
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert (summary["pretrain_steps"], summary["pretrain_examples"]) == (3, 3 * 4 * 3)
    assert summary["encoder_init"] == str(encoder) and summary["main_steps"] == 3 * 2


def test_train_separator_scheme_is_its_own_keyed_run_with_its_inputs():
    from tasks.separator import TrainSeparator

    keys = lambda **params: TrainSeparator(**params).key_params()  # noqa: E731
    assert keys() == keys(scheme="remix") and keys(remix=False) == keys(scheme="supervised")
    assert "scheme" not in keys()  # the runs from before schemes keep their keys
    assert keys(scheme="adversarial+remix") == keys(scheme="remix+adversarial", remix=False)
    distinct = [keys(scheme=s) for s in ("remix", "supervised", "adversarial", "contrastive", "remix+adversarial")]
    assert all(a != b for i, a in enumerate(distinct) for b in distinct[i + 1:])
    assert sorted(TrainSeparator(scheme="remix+adversarial").requires()) == ["catalog", "datasets"]
    contrastive = TrainSeparator(scheme="contrastive", model="tasnet", seed=7)
    pretrain = contrastive.requires()["encoder"]
    assert list(contrastive.requires()) == ["encoder"] and pretrain.model == "tasnet" and pretrain.run_seed == 7
    assert contrastive.train_settings().model.to_dict() == dict(pretrain.model_config)
    with pytest.raises(ValueError, match="scheme"):
        TrainSeparator(scheme="remix+nothing").requires()
