"""Remix step: loss (3) by hand, reading D_i excerpts, and which state one remix step changes.

Also home of the small data builders that the separator tests share: a stem set of several
splits and a D_i index following ``pipeline.mining.schema.INDEX_SCHEMA``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fixtures_extraction import write_excerpt_index
from fixtures_separation import TINY
from fixtures_stems import RATE, noise

from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.losses import si_snr_loss
from pipeline.separation.remix import RemixSampler, l1_loss, remix_loss, remix_step
from pipeline.separation.tasnet import TasNet, TasNetConfig


def test_remix_loss_equals_formula_3_on_hand_made_tensors():
    # One item, four sources, one channel, two samples; source i = 1 (bass).
    estimates = torch.tensor([[[[1.0, 2.0]], [[0.5, -1.0]], [[3.0, 0.0]], [[-2.0, 4.0]]]])
    stem = torch.tensor([[[1.5, -2.0]]])  # s_i
    excerpt = torch.tensor([[[1.0, 1.0]]])  # m_i
    # |s'_1 - s_1| = |0.5 - 1.5|, |-1 - (-2)| -> mean (1 + 1) / 2 = 1
    # sum_{j != 1} = (1 + 3 - 2, 2 + 0 + 4) = (2, 6); |(2, 6) - (1, 1)| -> mean (1 + 5) / 2 = 3
    assert remix_loss(estimates, 1, stem, excerpt, lam=0.5).item() == pytest.approx(1.0 + 0.5 * 3.0)
    assert remix_loss(estimates, 1, stem, excerpt, lam=1e-6).item() == pytest.approx(1.0 + 1e-6 * 3.0)
    # i = 3 (vocals): |(-2, 4) - (1.5, -2)| -> (3.5 + 6) / 2; others (4.5, 1) - (1, 1) -> (3.5 + 0) / 2
    assert remix_loss(estimates, 3, stem, excerpt, lam=2.0).item() == pytest.approx(4.75 + 2.0 * 1.75)
    # Same per-element normalisation as the main loss.
    sources = torch.zeros_like(estimates)
    assert l1_loss(estimates, sources).item() == pytest.approx(estimates.abs().mean().item())


def test_remix_loss_batched_matches_loop():
    torch.manual_seed(0)
    est, stem, exc = torch.randn(3, 4, 2, 50), torch.randn(3, 2, 50), torch.randn(3, 2, 50)
    lam = 0.3
    expected = sum((est[b, 2] - stem[b]).abs().mean() + lam * (est[b, [0, 1, 3]].sum(0) - exc[b]).abs().mean()
                   for b in range(3)) / 3
    assert remix_loss(est, 2, stem, exc, lam).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sampler_reads_index_resamples_and_matches_channels(tmp_path):
    rate = 22_050
    t = np.arange(int(0.3 * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t))[None].astype(np.float32)  # 0.3 s, mono, 22.05 kHz
    run = write_excerpt_index(tmp_path, [("bass", noise(2, 1.0, RATE), RATE), ("vocals", tone, rate),
                                         ("drums", noise(2, 0.8, RATE, seed=1), RATE)])
    window = RATE // 2
    sampler = RemixSampler(run, RATE, 2, window)
    assert sampler.available == [0, 1, 3]  # no D_other
    assert sampler.counts() == {"drums": 1, "bass": 1, "other": 0, "vocals": 1}
    rng = np.random.default_rng(0)
    crop = sampler.sample(3, 2, rng)
    assert crop.shape == (2, 2, window) and crop.dtype == np.float32
    assert np.array_equal(crop[:, 0], crop[:, 1])  # mono duplicated to stereo
    resampled = int(0.3 * RATE)
    assert np.all(crop[:, :, resampled + 8:] == 0)  # shorter than the window: zero-padded at the end
    assert np.abs(crop[:, :, : resampled - 8]).max() > 0.4
    spectrum = np.abs(np.fft.rfft(crop[0, 0, :resampled]))
    assert np.fft.rfftfreq(resampled, 1 / RATE)[spectrum.argmax()] == pytest.approx(1000, abs=5)


def test_sampler_crop_is_a_contiguous_partial_read(tmp_path):
    ramp = np.tile(np.arange(RATE, dtype=np.float32) / RATE - 0.5, (2, 1))  # 1 s at the model's rate
    ramp[1] *= -1
    run = write_excerpt_index(tmp_path, [("drums", ramp, RATE)])
    sampler = RemixSampler(run, RATE, 2, 1000)
    starts = set()
    for seed in range(5):
        crop = sampler.sample(0, 1, np.random.default_rng(seed))[0]
        start = int(round((crop[0, 0] + 0.5) * RATE))
        np.testing.assert_allclose(crop, ramp[:, start:start + 1000], atol=1e-6)  # 24-bit FLAC
        starts.add(start)
    assert len(starts) > 1


def test_pick_source_is_uniform_over_available_and_empty_runs(tmp_path):
    run = write_excerpt_index(tmp_path / "run", [("drums", noise(2, 0.2, RATE), RATE),
                                                 ("drums", noise(2, 0.2, RATE), RATE),
                                                 ("vocals", noise(2, 0.2, RATE), RATE)])
    sampler = RemixSampler(run, RATE, 2, 100)
    rng = np.random.default_rng(0)
    picks = [sampler.pick_source(rng) for _ in range(400)]
    assert set(picks) == {0, 3} and 150 < picks.count(0) < 250  # uniform over sources, not excerpts
    source, crops = sampler.draw(3, rng)
    assert source in (0, 3) and crops.shape == (3, 2, 100)
    # The source may come from a generator of its own (shared by all ranks under DDP).
    assert sampler.draw(1, rng, np.random.default_rng(9))[0] == sampler.pick_source(np.random.default_rng(9))
    for empty in (RemixSampler(None, RATE, 2, 100), RemixSampler(tmp_path / "missing", RATE, 2, 100)):
        assert empty.available == []
        with pytest.raises(ValueError, match="no D_i"):
            empty.pick_source(rng)


# model, its main loss, main and remix learning rates, samples, remix source index, gradient clipping
REMIX_STEP_CASES = {
    "demucs": (lambda: Demucs(DemucsConfig(channels=4, depth=2, lstm_layers=1, sample_rate=8000)), l1_loss,
               5e-4, 5e-5, 1000, 1, None),
    "tasnet": (lambda: TasNet(TasNetConfig(**TINY["tasnet"])), si_snr_loss, 1e-3, 1e-4, 800, 2, 5.0),
}


@pytest.mark.parametrize("name", sorted(REMIX_STEP_CASES))
def test_remix_step_touches_only_the_remix_optimizer(name):
    make, main_loss, main_lr, remix_lr, samples, source, grad_clip = REMIX_STEP_CASES[name]
    torch.manual_seed(0)
    model = make()
    main = torch.optim.Adam(model.parameters(), lr=main_lr)
    remix = torch.optim.Adam(model.parameters(), lr=remix_lr)
    n = model.valid_length(samples)
    sources = torch.randn(2, 4, 2, n)
    main.zero_grad()
    main_loss(model(sources.sum(1)), sources).backward()
    main.step()
    main_before = copy.deepcopy(main.state_dict())
    params_before = [p.detach().clone() for p in model.parameters()]
    assert remix.state_dict()["state"] == {}

    loss = remix_step(model, remix, source, torch.randn(2, 2, n), torch.randn(2, 2, n), lam=1e-6, grad_clip=grad_clip)

    assert np.isfinite(loss)
    main_after = main.state_dict()
    for key, state in main_before["state"].items():
        for name, value in state.items():
            assert torch.equal(main_after["state"][key][name], value), (key, name)
    assert main_after["param_groups"] == main_before["param_groups"]
    remix_state = remix.state_dict()["state"]
    assert len(remix_state) == len(params_before)
    assert all(float(s["step"]) == 1 for s in remix_state.values())
    changed = [not torch.equal(a, b) for a, b in zip(params_before, model.parameters())]
    assert all(changed)  # every weight gets a gradient through loss (3)
    assert all(p.grad is None for p in model.parameters())  # no gradient left for the main step
    # Adam's first step moves each weight by about the learning rate of the remix optimizer.
    step = max((a - b).abs().max().item() for a, b in zip(params_before, model.parameters()))
    assert step == pytest.approx(remix_lr, rel=0.05)


def test_sampler_reads_a_views_excerpts_from_the_shard_store(tmp_path):
    from fixtures_extraction import make_extraction_run

    from pipeline.mining.datasets import DatasetRun

    view, _, _, _ = make_extraction_run(tmp_path)
    assert not (view / "audio").exists()  # the excerpts stay in the store, named relative to the data root
    sampler = RemixSampler(DatasetRun(view), RATE, 2, 4410)
    assert sampler.counts() == {"drums": 6, "bass": 3, "other": 0, "vocals": 3}
    assert RemixSampler(view, RATE, 2, 4410).counts() == sampler.counts()  # the folder alone is enough
    crops = sampler.sample(1, 2, np.random.default_rng(0))
    assert crops.shape == (2, 2, 4410) and np.abs(crops).max() > 0.01
