"""Adversarial scheme: eq. (4) and (5) by hand, critics learning a toy gap, unlabelled catalog
excerpts, and exact resume of an adversarial (remix + adversarial) separator run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.multiprocessing as mp
from fixtures_extraction import write_excerpt_index
from fixtures_separation import TINY, killed_after_epoch
from fixtures_stems import RATE, noise, write_stem_set
from torch import nn

from pipeline.corpora.catalog import build_catalog
from pipeline.separation import adversarial as adv
from pipeline.separation.config import TrainConfig, canonical_scheme
from pipeline.separation.training import make_trainer, train_separator
from pipeline.separation.unlabelled import CatalogExcerpts

CRITIC = dict(critic_width=4, critic_n_fft=128, critic_hop=32)  # 65 bins x ~100 frames at 8 kHz, 0.4 s


class SquareCritic(nn.Module):
    """D(x) = c * sum(x^2) per item: grad_x D = 2 c x, so ||grad|| = 2 |c| ||x||."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * x.flatten(1).pow(2).sum(1)


def test_gradient_penalty_equals_equation_4_by_hand():
    real = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.2, 0.0], [0.0, 0.0]]], [[[0.0, 3.0], [4.0, 0.0]]]])
    fake = torch.zeros_like(real)
    eps = torch.tensor([0.5, 1.0, 0.2])
    critic = SquareCritic(1.5)
    # interpolates eps * real: norms of x: 0.5, 0.2, 0.2 * 5 = 1; ||grad|| = 3 ||x||: 1.5, 0.6, 3.0
    # max(norm - 1, 0)^2: 0.25, 0 (one-sided: below 1 costs nothing), 4.0 -> mean 4.25 / 3
    penalty = adv.gradient_penalty(critic, real, fake, eps)
    assert penalty.item() == pytest.approx(4.25 / 3, rel=1e-6)
    penalty.backward()  # trained through: d/dc of mean((6|c| r - 1)^2 ...) is defined and non-zero
    assert critic.c.grad is not None and critic.c.grad.item() != 0

    class Bank(nn.Module):  # one critic in the bank's (K, B, ...) layout
        def __init__(self):
            super().__init__()
            self.critic = critic

        def forward(self, x):
            return self.critic(x[0])[None]

    loss, stats = adv.critic_loss(Bank(), real[None], fake[None], eps[None], gp_weight=10.0)
    gap = (critic(real).mean() - critic(fake).mean()).item()  # 1.5 * (1 + 0.04 + 25) / 3
    assert stats["gap"].item() == pytest.approx(gap, rel=1e-6)
    assert stats["penalty"].item() == pytest.approx(4.25 / 3, rel=1e-6)
    assert loss.item() == pytest.approx(-gap + 10.0 * 4.25 / 3, rel=1e-6)


def test_additive_loss_is_equation_5_per_element():
    estimates = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]], [[[3.0, 0.0]], [[1.0, 1.0]]]])  # (2, 2, 1, 2)
    mixture = torch.tensor([[[1.0, 3.0]], [[1.0, -2.0]]])
    # item 0: sum (1, 3) - (1, 3) = 0; item 1: (4, 1) - (1, -2) = (3, 3): ||.||_2 / sqrt(C T) = sqrt(18 / 2) = 3
    assert adv.additive_loss(estimates, mixture).item() == pytest.approx(1.5, rel=1e-6)
    # per element: a residual of 0.25 everywhere reads 0.25 whatever the length and channels
    for channels, length in ((1, 10), (2, 4000)):
        mixture = torch.randn(3, channels, length)
        estimates = torch.stack([mixture / 2, mixture / 2 + 0.25], dim=1)
        assert adv.additive_loss(estimates, mixture).item() == pytest.approx(0.25, rel=1e-5)


def _critic_terms(alpha: float, beta: float, additive_vanishes: bool = False):
    """A two-critic AdversarialTraining, estimates ``(3, 4, 2, 1600)`` in a graph and mixtures
    that they do not add up to."""
    torch.manual_seed(0)
    settings = adv.AdversarialSettings(("drums", "vocals"), alpha, beta, n_fft=128, hop=32, width=4)
    training = adv.AdversarialTraining(settings, 1600, torch.device("cpu"), torch.Generator().manual_seed(0),
                                       additive_vanishes=additive_vanishes)
    leaf = torch.randn(3, 4, 2, 1600, requires_grad=True)
    return training, 0.3 * leaf, torch.randn(3, 2, 1600)


def test_output_gradient_gives_each_term_the_papers_ratio_to_the_main_loss():
    main_norm = 0.07  # per item, of L_s's gradient at the supervised estimates
    training, estimates, mixture = _critic_terms(alpha=0.01, beta=0.0)
    grad, values = training.output_gradient(estimates, mixture, main_norm)
    for k in (0, 3):  # drums and vocals: each critic's term at alpha times L_s's norm
        assert adv.item_norm(grad[:, k]) == pytest.approx(0.01 * main_norm, rel=1e-5)
    assert torch.all(grad[:, 1:3] == 0)  # no critic for bass and other, and beta = 0
    (raw,) = torch.autograd.grad(training.separator_terms(estimates, mixture)[0], estimates)
    cosine = torch.nn.functional.cosine_similarity(grad[:, 3].flatten(), raw[:, 3].flatten(), dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)  # scaled, not turned
    assert values["alpha_effective"] > 0 and values["beta_effective"] == 0 and values["additive_loss"] > 0

    training, estimates, mixture = _critic_terms(alpha=0.0, beta=0.01)
    grad, values = training.output_gradient(estimates, mixture, main_norm)
    assert adv.item_norm(grad) == pytest.approx(0.01 * 2 * main_norm, rel=1e-5)  # beta sqrt(S), S = 4
    residual = (estimates.sum(1) - mixture).detach()
    for k in range(4):  # L_add pulls every estimate along the residual, alike
        assert torch.allclose(grad[:, k], grad[:, 0]) and (grad[:, k] * residual).sum() > 0

    training, estimates, mixture = _critic_terms(alpha=0.0, beta=0.01, additive_vanishes=True)
    grad, values = training.output_gradient(estimates, mixture, main_norm)
    assert values["beta_effective"] == 0 and torch.all(grad == 0)


def test_under_mixture_consistency_the_additive_loss_vanishes_and_the_run_says_so(data, tmp_path):
    stems, _, tracks = data
    model = {**TINY["tasnet"], "consistency": True}
    config = TrainConfig.for_model("tasnet", epochs=1, batches_per_epoch=2, batch_size=2, window_s=0.4, model=model,
                                   valid_max_windows=2, seed=3, num_threads=1, scheme="adversarial",
                                   unlabelled_batch_size=2, **CRITIC)
    history = train_separator(config, stems, None, tmp_path / "run", progress=False, catalog_tracks=tracks)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["additive_loss_vanishes"] is True and summary["additive_loss_max"] < 1e-6
    assert history[0]["beta_effective"] == 0 and history[0]["alpha_effective"] > 0
    assert summary["critic_steps"] == 2 * config.critic_steps and summary["unlabelled_examples"] == 4


def test_log_magnitude_scales_with_the_unlabelled_factor_and_is_differentiable():
    wav = torch.from_numpy(noise(2, 0.2, 8000)[None]).requires_grad_(True)
    base = adv.log_magnitude(wav, 128, 32)
    assert base.shape == (1, 1, 65, 1600 // 32 + 1) == (1, 1, *adv.spectrogram_shape(1600, 128, 32))
    scaled = adv.log_magnitude(0.5 * wav, 128, 32)
    torch.testing.assert_close(torch.expm1(scaled), 0.5 * torch.expm1(base), rtol=1e-4, atol=1e-6)
    base.sum().backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0
    settings = adv.AdversarialSettings(("vocals",), 0.01, 0.01, n_fft=128, hop=32, width=4)
    training = adv.AdversarialTraining(settings, 3200, torch.device("cpu"), torch.Generator().manual_seed(0))
    mixes = np.ones((500, 2, 4), dtype=np.float32)
    factors = training.scale(mixes, np.random.default_rng(0))[:, 0, 0]
    assert 0.2 <= factors.min() < 0.3 and 1.1 < factors.max() <= 1.2


def _toy_sources(rng: np.random.Generator, batch: int, tonal: bool) -> torch.Tensor:
    """``(batch, 4, 1, 3200)`` at 8 kHz: pure tones (``tonal``) or white noise of the same power."""
    t = np.arange(3200) / 8000
    if tonal:
        freqs = rng.uniform(200, 1000, size=(batch, 4, 1, 1))
        wav = 0.3 * np.sin(2 * np.pi * freqs * t)
    else:
        wav = rng.standard_normal((batch, 4, 1, 3200)) * 0.3 / np.sqrt(2)
    return torch.from_numpy(wav.astype(np.float32))


def test_a_few_critic_steps_raise_the_gap_between_two_toy_distributions():
    torch.manual_seed(0)
    settings = adv.AdversarialSettings(("vocals", "bass"), 0.001, 0.001, critic_lr=1e-3, n_fft=128, hop=32, width=4)
    training = adv.AdversarialTraining(settings, 3200, torch.device("cpu"), torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    real, fake = _toy_sources(rng, 8, True), _toy_sources(rng, 8, False)

    def gap() -> np.ndarray:
        with torch.no_grad():
            scores = training.bank(training.features(real)).mean(1) - training.bank(training.features(fake)).mean(1)
        return scores.numpy()

    before = gap()
    for _ in range(4):  # 4 x N_disc = 20 critic steps
        stats = training.train_critics(real, fake)
    after = gap()
    assert np.all(after > before + 0.1), (before, after)  # each critic separates tones from noise
    assert set(stats) == {"critic_gap", "critic_penalty", "critic_gap_vocals", "critic_gap_bass"}
    # L_u pushes the estimates towards what the critic scores as real, and only the separator moves.
    estimates = fake.clone().requires_grad_(True)
    l_u, l_add = training.separator_terms(estimates, fake.sum(1))
    (l_u + l_add).backward()
    assert estimates.grad is not None and estimates.grad.abs().sum() > 0
    assert all(p.grad is None for p in training.bank.parameters())
    assert l_add.item() == pytest.approx(0.0, abs=1e-5)  # the estimates add up to the mixture


def test_critic_refuses_inputs_too_small_and_bad_settings():
    with pytest.raises(ValueError, match="too small"):
        adv.Critic((10, 5))
    with pytest.raises(ValueError, match="critic sources"):
        adv.source_indices(["vocals", "piano"])
    with pytest.raises(ValueError, match="scale range"):
        adv.AdversarialSettings(("vocals",), 0.01, 0.01, scale_low=0.0)
    assert adv.default_weight(("vocals",)) == 0.01 and adv.default_weight(("drums", "bass", "other", "vocals")) == 0.001
    with pytest.raises(ValueError, match="scheme"):
        TrainConfig(scheme="remix+mystery")
    assert canonical_scheme("adversarial+remix") == "remix+adversarial"
    config = TrainConfig(scheme="adversarial", critic_sources=["drums", "vocals"])
    assert config.critic_sources == ("drums", "vocals") and config.adversarial_settings().alpha == 0.001
    assert config.adversarial_settings().beta == 0.001


def _write_catalog(folder: Path, out: Path, bad: bool = True) -> Path:
    """Three tracks (one 22.05 kHz mono) and, with ``bad``, one file that is not audio; scanned."""
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", noise(2, 1.0, 8000, seed=10).T, 8000, subtype="FLOAT")
    sf.write(folder / "b.flac", noise(2, 0.7, 8000, seed=11).T, 8000)
    sf.write(folder / "c.wav", noise(1, 0.8, 22_050, seed=12).T, 22_050, subtype="FLOAT")
    if bad:
        (folder / "d.wav").write_bytes(b"RIFF-but-not-really-a-wave-file" * 20)
    out.mkdir(parents=True)
    build_catalog(folder, 64, out)
    return out / "tracks.parquet"


def test_catalog_excerpts_crop_resample_and_reject(tmp_path):
    tracks = _write_catalog(tmp_path / "catalog", tmp_path / "scan")
    excerpts = CatalogExcerpts(tracks, 8000, 2, 2000)
    assert len(excerpts) == 4
    crops = excerpts.sample(40, np.random.default_rng(0))
    assert crops.shape == (40, 2, 2000) and crops.dtype == np.float32
    assert list(excerpts.rejected) == [str(tmp_path / "catalog" / "d.wav")] and len(excerpts) == 3
    full = sf.read(tmp_path / "catalog" / "a.wav", dtype="float32")[0].T
    hits = [c for c in crops if any(np.array_equal(c, full[:, s:s + 2000]) for s in range(full.shape[1] - 1999))]
    assert hits  # crops of the 8 kHz file are contiguous spans of it
    # the mono 22.05 kHz track is resampled and duplicated to two channels
    assert any(np.array_equal(c[0], c[1]) and np.abs(c).max() > 0 for c in crops)
    again = CatalogExcerpts(tracks, 8000, 2, 2000).sample(40, np.random.default_rng(0))
    np.testing.assert_array_equal(crops, again)


def test_catalog_excerpts_with_no_decodable_track_raise(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "x.wav").write_bytes(b"not audio" * 50)
    (tmp_path / "scan").mkdir()
    build_catalog(folder, 64, tmp_path / "scan")
    with pytest.raises(ValueError, match="no catalog track could be decoded"):
        CatalogExcerpts(tmp_path / "scan" / "tracks.parquet", 8000, 2, 100).sample(1, np.random.default_rng(0))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("adversarial")
    stems = write_stem_set(base / "stems", {"train": 2, "valid": 1}, seconds=1.5)
    run = write_excerpt_index(base / "extraction", [("bass", noise(2, 1.0, RATE), RATE),
                                                    ("vocals", noise(2, 0.8, RATE, seed=1), RATE)])
    tracks = _write_catalog(base / "catalog", base / "scan", bad=False)
    return stems, run, tracks


def _config(scheme: str, **overrides) -> TrainConfig:
    values = dict(epochs=3, batches_per_epoch=2, batch_size=2, window_s=0.4, max_shift_s=0.05, model=TINY["demucs"],
                  remix_probability=0.5, valid_max_windows=2, seed=3, num_threads=1, scheme=scheme,
                  critic_sources=("drums", "vocals"), critic_steps=2, unlabelled_batch_size=2, **CRITIC)
    values.update(overrides)
    return TrainConfig.for_model("demucs", **values)


def test_adversarial_resume_after_interruption_is_bit_identical(data, tmp_path, monkeypatch):
    stems, run, tracks = data
    config = _config("remix+adversarial")
    full = train_separator(config, stems, run, tmp_path / "full", progress=False, catalog_tracks=tracks)
    killed_after_epoch(monkeypatch, lambda: train_separator(
        config, stems, run, tmp_path / "cut", progress=False, catalog_tracks=tracks))
    resumed = train_separator(config, stems, run, tmp_path / "cut", progress=False, catalog_tracks=tracks)

    assert sum(r["remix_steps"] for r in full) > 0  # both unlabelled paths ran
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for name, value in a["adversarial"]["critics"].items():
        assert torch.equal(value, b["adversarial"]["critics"][name]), name
    for index, state in a["adversarial"]["critic_optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["adversarial"]["critic_optimizer"]["state"][index][name]), (index, name)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in full] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed]
    row = full[-1]
    assert np.isfinite(row["critic_gap"]) and np.isfinite(row["additive_loss"]) and "critic_gap_drums" in row
    # compute counted: each main step feeds the supervised and the unlabelled batch
    assert row["examples"] == sum(r["main_steps"] for r in full) * 4 + sum(r["remix_steps"] for r in full) * 2
    summary = (tmp_path / "full" / "summary.json").read_text()
    assert '"scheme": "remix+adversarial"' in summary and '"unlabelled_tracks": 3' in summary


def test_adversarial_scheme_needs_a_catalog_and_supervised_ignores_d_i(data, tmp_path):
    stems, run, tracks = data
    with pytest.raises(ValueError, match="unlabelled mixtures"):
        make_trainer(_config("adversarial"), stems, tmp_path / "a", progress=False)
    history = train_separator(_config("supervised", epochs=1), stems, run, tmp_path / "s", progress=False)
    assert history[0]["remix_steps"] == 0 and "critic_gap" not in history[0]


def _ddp_worker(rank: int, world: int, port: int, stems: str, tracks: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from pipeline.separation import distributed

    try:
        trainer = make_trainer(_config("adversarial", epochs=1, batch_size=4, unlabelled_batch_size=4),
                               stems, Path(out) / "train", device="cpu", progress=False, catalog_tracks=tracks)
        trainer.run(resume=False)
        (critics,) = [part.critics for part in trainer.schemes if part.name == "adversarial"]
        torch.save({"model": trainer.model.state_dict(), "critics": critics.bank.state_dict()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.mark.slow
def test_ddp_critics_stay_in_sync(data, tmp_path, free_port):
    stems, _, tracks = data
    mp.spawn(_ddp_worker, args=(2, free_port(), str(stems), str(tracks), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for part in ("model", "critics"):
        for name, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][name]), (part, name)
