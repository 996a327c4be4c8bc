"""TasNet-BLSTM (frugal paper 2.4) and SI-SNR (2.5): shapes, lengths, the loss on hand-made
signals, one remix step, and a tiny model's training loss falling on demo data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures_separation import TINY as TINY_CONFIGS
from fixtures_separation import assert_rejects_bad_shapes

from pipeline.corpora.demo import DemoConfig, generate
from pipeline.separation.config import TrainConfig
from pipeline.separation.contract import center_trim, pad_to_valid, separate
from pipeline.separation.evaluation import track_si_snr
from pipeline.separation.losses import si_snr, si_snr_loss, si_snr_totals
from pipeline.separation.tasnet import TasNet, TasNetConfig
from pipeline.separation.training import train_separator

TINY = TasNetConfig(**TINY_CONFIGS["tasnet"])


def test_paper_size_parameter_count_by_hand():
    # Encoder 500 filters x 2 channels x 220 samples, no bias; decoder the same.
    encoder = decoder = 500 * 2 * 220
    norm = 2 * 500
    # BiLSTM 4 x 500 cells; per direction 4H x in + 4H x H + two 4H biases.
    lstm = 2 * (4 * 500 * 500 + 4 * 500 * 500 + 8 * 500) + 3 * 2 * (4 * 500 * 1000 + 4 * 500 * 500 + 8 * 500)
    masks = 1000 * 4 * 500 + 4 * 500  # Linear(2 x 500, 4 sources x 500 filters)
    with torch.device("meta"):
        model = TasNet(TasNetConfig())
    assert sum(p.numel() for p in model.parameters()) == encoder + decoder + norm + lstm + masks == 24_475_000
    assert model.encoder.weight.shape == (500, 2, 220)  # each filter spans both channels
    assert model.encoder.stride == (110,) and model.decoder.stride == (110,)


def test_valid_lengths_by_hand():
    model = TasNet(TasNetConfig())  # L = 220, H = 110
    assert [model.valid_length(n) for n in (1, 220, 221, 330, 331, 44_100)] == [220, 220, 330, 330, 440, 44_110]
    assert all(model.valid_length(model.valid_length(n)) == model.valid_length(n) for n in range(1, 600, 7))


@pytest.mark.parametrize("mask", ["sigmoid", "softmax"])
def test_shapes_any_length_and_masks(mask):
    torch.manual_seed(0)
    model = TasNet(TasNetConfig(**{**TINY.to_dict(), "mask": mask}))
    n = model.valid_length(1000)
    x = torch.randn(3, 2, n)
    out = model(x)
    assert out.shape == (3, 4, 2, n) and model.output_length(n) == n
    for length in (1, 39, 777, 1234):
        assert separate(model, torch.randn(2, 2, length)).shape == (2, 4, 2, length)
    if mask == "softmax":  # masks sum to one over sources: the estimates sum to the decoded mixture
        w = torch.relu(model.encoder(x))
        torch.testing.assert_close(out.sum(1), model.decoder(w), rtol=1e-4, atol=1e-5)
    mono = TasNet(TasNetConfig(**{**TINY.to_dict(), "audio_channels": 1}))
    assert mono(torch.randn(1, 1, n)).shape == (1, 4, 1, n)


def test_mixture_consistency_makes_the_estimates_sum_to_the_mixture():
    torch.manual_seed(0)
    plain = TasNet(TINY)
    consistent = TasNet(TasNetConfig(**{**TINY.to_dict(), "consistency": True}))
    consistent.load_state_dict(plain.state_dict())  # the same weights: only the projection differs
    x = torch.randn(2, 2, plain.valid_length(700))
    before, after = plain(x), consistent(x)
    assert not torch.allclose(before.sum(1), x, atol=1e-3)
    torch.testing.assert_close(after.sum(1), x, rtol=1e-5, atol=1e-5)
    # each estimate moves by the same share of the residual, (m - sum_j s_j) / S
    torch.testing.assert_close(after - before, ((x - before.sum(1)) / 4)[:, None].expand_as(before))


@pytest.mark.parametrize("frame, hop", [(220, 110), (16, 8), (12, 5)])
def test_decode_is_the_transposed_convolution_in_values_and_gradients(frame, hop):
    # Half-overlapping frames take the matrix product and overlap-add; other hops the module.
    torch.manual_seed(0)
    model = TasNet(TasNetConfig(filters=12, frame=frame, hop=hop, hidden=8, lstm_layers=1))
    masked = torch.rand(3, 12, 40, requires_grad=True)
    signal = torch.randn(3, 2, frame + hop * 39)
    decoded = model.decode(masked)
    (decoded * signal).sum().backward()
    grads = masked.grad.clone(), model.decoder.weight.grad.clone()
    masked.grad = model.decoder.weight.grad = None
    reference = torch.nn.functional.conv_transpose1d(masked, model.decoder.weight, stride=hop)
    (reference * signal).sum().backward()
    assert decoded.shape == reference.shape == (3, 2, frame + hop * 39)
    torch.testing.assert_close(decoded, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], masked.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], model.decoder.weight.grad, rtol=1e-5, atol=1e-5)


def test_forward_rejects_bad_input():
    model = TasNet(TINY)
    assert_rejects_bad_shapes(model, model.valid_length(500))
    with pytest.raises(ValueError, match="mask"):
        TasNetConfig(mask="relu")
    with pytest.raises(ValueError, match="hop"):
        TasNetConfig(frame=40, hop=50)
    padded, (left, right) = pad_to_valid(model, torch.ones(1, 2, 50))
    assert padded.shape[-1] == 60 and (left, right) == (5, 5)


def test_si_snr_known_value_scale_invariance_and_caps():
    s = torch.tensor([1.0, 0.0, 0.0, 0.0])
    s_hat = torch.tensor([2.0, 1.0, 0.0, 0.0])
    # s_t = <s, s_hat> / ||s||^2 s = (2, 0, 0, 0), e = (0, 1, 0, 0): 10 log10(4 / 1)
    assert si_snr(s_hat, s).item() == pytest.approx(10 * math.log10(4.0), abs=1e-5)
    s2 = torch.tensor([3.0, -1.0, 2.0, 0.5])
    e2 = torch.tensor([1.0, 3.0, 0.0, 0.0])  # orthogonal to s2: SI-SNR = 10 log10(||a s||^2 / ||e||^2)
    assert (s2 * e2).sum() == 0
    assert si_snr(0.5 * s2 + e2, s2).item() == pytest.approx(10 * math.log10(0.25 * 14.25 / 10), abs=1e-4)
    torch.manual_seed(0)
    ref, est = torch.randn(3, 500), torch.randn(3, 500)
    base = si_snr(est, ref)
    for a, b in ((0.01, 1.0), (100.0, 1.0), (1.0, 0.001), (7.0, 30.0)):
        torch.testing.assert_close(si_snr(a * est, b * ref), base, rtol=1e-4, atol=1e-4)
    assert si_snr(ref, ref).max().item() == pytest.approx(80.0, abs=0.01)  # perfect: capped at 80 dB
    assert si_snr(torch.zeros(500), ref[0]).item() == 0.0  # an all-zero estimate: 0 dB, not NaN


def test_si_snr_loss_leaves_silent_targets_out_and_is_never_nan():
    torch.manual_seed(1)
    sources = torch.randn(2, 4, 2, 300)
    sources[0, 1] = 0.0  # a silent target
    estimates = (sources + 0.3 * torch.randn_like(sources)).requires_grad_()
    loss = si_snr_loss(estimates, sources)
    keep = [(b, j) for b in range(2) for j in range(4) if (b, j) != (0, 1)]
    expected = -torch.stack([si_snr(estimates[b, j].flatten(), sources[b, j].flatten()) for b, j in keep]).mean()
    torch.testing.assert_close(loss, expected)
    total, count = si_snr_totals(estimates.detach(), sources)
    assert count == 7 and total / count == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(estimates.grad).all()
    assert torch.all(estimates.grad[0, 1] == 0)  # the silent target contributes nothing
    # Every target silent: loss 0 with zero gradients, never NaN.
    silent_est = torch.randn(1, 4, 2, 100, requires_grad=True)
    zero = si_snr_loss(silent_est, torch.zeros(1, 4, 2, 100))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(silent_est.grad == 0)
    # A model that outputs exactly zero for a present source: finite.
    assert torch.isfinite(si_snr_loss(torch.zeros(1, 4, 2, 100), torch.randn(1, 4, 2, 100)))


def test_track_si_snr_frames_and_silent_frames():
    rate = 1000
    rng = np.random.default_rng(0)
    references = rng.normal(size=(4, 2, 3 * rate))
    references[2, :, rate:2 * rate] = 0.0  # "other" silent in the second frame
    estimates = references + 0.1 * rng.normal(size=references.shape)
    values = track_si_snr(references, estimates, rate)
    assert values.shape == (4, 3)
    assert np.isnan(values[2, 1]) and np.isfinite(np.delete(values.ravel(), 2 * 3 + 1)).all()
    ref, est = references[0, :, :rate].ravel(), estimates[0, :, :rate].ravel()
    target = ref @ est / (ref @ ref) * ref
    assert values[0, 0] == pytest.approx(10 * np.log10(target @ target / ((est - target) @ (est - target))), abs=1e-4)


def test_center_trim_targets():
    x = torch.arange(10.0)
    assert torch.equal(center_trim(x, 6), x[2:8]) and torch.equal(center_trim(x, 7), x[1:8])
    with pytest.raises(ValueError):
        center_trim(x, 11)


def test_tiny_tasnet_training_loss_falls_on_demo_data(tmp_path):
    generate(tmp_path / "demo", DemoConfig(seed=1, n_train=2, n_valid=1, n_calibration=0, n_test=0, n_catalog=0,
                                           stem_duration_s=(4.0, 4.0), sample_rate=8000))
    config = TrainConfig.for_model("tasnet", model={**TINY.to_dict(), "filters": 32, "hidden": 32}, epochs=5,
                                   batches_per_epoch=4, batch_size=4, window_s=1.0, valid_max_windows=4,
                                   num_threads=1, seed=0)
    history = train_separator(config, tmp_path / "demo" / "stems", None, tmp_path / "run", progress=False)
    train, valid = [r["train_loss"] for r in history], [r["valid_loss"] for r in history]
    assert np.isfinite(train).all() and np.isfinite(valid).all()
    assert train[-1] < train[0] - 3.0 and valid[-1] < valid[0] - 3.0  # dB of SI-SNR gained
    assert history[-1]["is_best"]
