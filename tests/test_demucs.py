"""Demucs: layer sizes of the paper, weight rescaling, valid lengths and any-length separation."""

import copy

import pytest
import torch
from fixtures_separation import assert_rejects_bad_shapes
from torch import nn

from pipeline.separation.contract import center_trim, pad_to_valid, separate
from pipeline.separation.demucs import Demucs, DemucsConfig, Rescaled, valid_length
from pipeline.separation.registry import checkpoint_fields, load_model

SMALL = DemucsConfig(channels=4, depth=3, lstm_layers=1, sample_rate=8000)


def test_paper_size_parameter_count_matches_hand_derivation():
    # SPEC.md: C = [2, 48, 96, 192, 384, 768, 1536], K = 8, S = 4, 4 sources x 2 channels out.
    # Encoder i: Conv1d(C_{i-1}, C_i, 8) weights + bias, then Conv1d(C_i, 2 C_i, 1) weights + bias.
    enc1 = 8 * 2 * 48 + 48 + 48 * 96 + 96
    enc2 = 8 * 48 * 96 + 96 + 96 * 192 + 192
    enc3 = 8 * 96 * 192 + 192 + 192 * 384 + 384
    enc4 = 8 * 192 * 384 + 384 + 384 * 768 + 768
    enc5 = 8 * 384 * 768 + 768 + 768 * 1536 + 1536
    enc6 = 8 * 768 * 1536 + 1536 + 1536 * 3072 + 3072
    # BiLSTM, hidden 1536, 2 layers, 2 directions; per direction 4H x in + 4H x H + two 4H biases.
    lstm1 = 2 * (4 * 1536 * 1536 + 4 * 1536 * 1536 + 4 * 1536 + 4 * 1536)  # input 1536
    lstm2 = 2 * (4 * 1536 * 3072 + 4 * 1536 * 1536 + 4 * 1536 + 4 * 1536)  # input 2 x 1536
    lstm_out = 3072 * 1536 + 1536  # 1x1 conv 2 C_L -> C_L
    # Decoder i: Conv1d(C_i, C_i, 3) + Conv1d(2 C_i, 2 C_i, 1) + ConvTranspose1d(C_i, C_{i-1}, 8), biases.
    dec6 = 3 * 1536 * 1536 + 1536 + 3072 * 3072 + 3072 + 1536 * 768 * 8 + 768
    dec5 = 3 * 768 * 768 + 768 + 1536 * 1536 + 1536 + 768 * 384 * 8 + 384
    dec4 = 3 * 384 * 384 + 384 + 768 * 768 + 768 + 384 * 192 * 8 + 192
    dec3 = 3 * 192 * 192 + 192 + 384 * 384 + 384 + 192 * 96 * 8 + 96
    dec2 = 3 * 96 * 96 + 96 + 192 * 192 + 192 + 96 * 48 * 8 + 48
    dec1 = 3 * 48 * 48 + 48 + 96 * 96 + 96 + 48 * 8 * 8 + 8  # last layer: 4 sources x 2 channels
    expected = (enc1 + enc2 + enc3 + enc4 + enc5 + enc6 + lstm1 + lstm2 + lstm_out
                + dec6 + dec5 + dec4 + dec3 + dec2 + dec1)
    with torch.device("meta"):
        model = Demucs(DemucsConfig())
    assert sum(p.numel() for p in model.parameters()) == expected == 152_610_488


def test_paper_valid_length_by_hand():
    # From one LSTM step back up: 8, 36, 148, 596, 2388, 9556 samples.
    assert valid_length(DemucsConfig(), 1) == 9556
    assert valid_length(DemucsConfig(), 9556) == 9556
    assert valid_length(DemucsConfig(), 9557) == 9556 + 4 ** 6


@pytest.mark.parametrize("decoder", ["paper", "additive"])
def test_rescaling_keeps_output_and_moves_weight_std(decoder):
    torch.manual_seed(0)
    plain = Demucs(DemucsConfig(channels=4, depth=3, lstm_layers=1, rescale=None, decoder=decoder))
    torch.manual_seed(0)
    scaled = Demucs(DemucsConfig(channels=4, depth=3, lstm_layers=1, rescale=0.1, decoder=decoder))
    x = torch.randn(2, 2, scaled.valid_length(3000))
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-4, atol=1e-6)
    pairs = [(a, b) for a, b in zip(plain.modules(), scaled.modules()) if isinstance(a, Rescaled)]
    assert len(pairs) == 3 * 2 + 1 + 3 * (2 if decoder == "additive" else 3)
    for a, b in pairs:
        std0 = a.conv.weight.std().item()
        assert b.conv.weight.std().item() == pytest.approx((std0 * 0.1) ** 0.5, rel=1e-5)
        assert b.scale.item() == pytest.approx((std0 / 0.1) ** 0.5, rel=1e-5)
    # Equalisation: the spread of weight scales over layers is square-rooted.
    before = [a.conv.weight.std().item() for a, _ in pairs]
    after = [b.conv.weight.std().item() for _, b in pairs]
    assert max(before) / min(before) > 4
    assert max(after) / min(after) == pytest.approx((max(before) / min(before)) ** 0.5, rel=1e-4)


def test_rescaled_layer_is_the_same_function_with_bias():
    torch.manual_seed(1)
    for conv in (nn.Conv1d(3, 5, 4, 2), nn.ConvTranspose1d(5, 3, 8, 4)):
        with torch.no_grad():
            conv.bias.uniform_(-1, 1)
        reference = copy.deepcopy(conv)
        layer = Rescaled(conv, 0.1)
        x = torch.randn(2, conv.in_channels, 40)
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.conv.bias * layer.scale, reference.bias)


@pytest.mark.parametrize("length", [1, 37, 500, 777, 4096, 12345])
def test_any_length_round_trips(length):
    torch.manual_seed(0)
    model = Demucs(SMALL)
    valid = model.valid_length(length)
    assert valid >= length and model.valid_length(valid) == valid
    x = torch.randn(2, 2, length)
    padded, (left, right) = pad_to_valid(model, x)
    assert padded.shape[-1] == valid and left == (valid - length) // 2 and left + right == valid - length
    assert torch.equal(center_trim(padded, length), x)  # centred zero padding, trimmed back
    out = separate(model, x)
    assert out.shape == (2, 4, 2, length)
    assert torch.isfinite(out).all()


def test_forward_rejects_invalid_length_and_wrong_channels():
    model = Demucs(SMALL)
    assert_rejects_bad_shapes(model, model.valid_length(1000))


def test_small_model_output_shapes_and_mono():
    cfg = DemucsConfig(channels=6, depth=2, lstm_layers=0, audio_channels=1, sources=3, kernel_size=6, stride=3)
    model = Demucs(cfg)
    x = torch.randn(3, 1, model.valid_length(200))
    assert model(x).shape == (3, 3, 1, x.shape[-1])


def test_load_model_round_trip_and_format_1_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = Demucs(SMALL)
    torch.save(checkpoint_fields(model), tmp_path / "m.pt")
    # A checkpoint of this project from before the registry: no model_name, always a Demucs.
    torch.save({"format": 1, "model_config": SMALL.to_dict(), "model": model.state_dict()}, tmp_path / "old.pt")
    x = torch.randn(1, 2, model.valid_length(900))
    for name in ("m.pt", "old.pt"):
        loaded = load_model(tmp_path / name)
        assert isinstance(loaded, Demucs) and loaded.config == SMALL
        assert torch.equal(loaded(x), model(x))


def test_config_validation():
    with pytest.raises(ValueError):
        DemucsConfig(decoder="wave-u-net")
    with pytest.raises(ValueError):
        DemucsConfig(context=2)
    with pytest.raises(ValueError):
        DemucsConfig.from_dict({"channels": 4, "width": 3})
