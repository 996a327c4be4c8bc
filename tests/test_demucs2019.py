"""demucs2019: the 2019 code's outputs, valid lengths and initial weights, from its state dict."""

from pathlib import Path

import pytest
import torch

from pipeline.separation.contract import separate
from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.demucs2019 import Demucs2019, Demucs2019Config, config_from_2019, convert_state_dict
from pipeline.separation.registry import load_2019_state

REFERENCE = Path(__file__).parent / "data" / "demucs_2019_reference.pt"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def test_converted_state_dict_reproduces_the_2019_output(reference):
    model = load_2019_state(reference["state_dict"], reference["config"]).eval()
    assert model.config.channels == 6 and model.config.depth == 4 and model.config.rescale == 0.1
    with torch.no_grad():
        out = model(reference["input"])
    assert reference["input"].shape == (2, 2, 4692)
    assert out.shape == reference["output"].shape == (2, 4, 2, 4012)
    torch.testing.assert_close(out, reference["output"], rtol=0, atol=1e-5)
    assert model.output_length(4692) == 4012


def test_valid_length_is_the_2019_codes(reference):
    model = Demucs2019(config_from_2019(reference["config"]))
    assert reference["valid_lengths"] and all(
        model.valid_length(int(n)) == expected for n, expected in reference["valid_lengths"].items())
    # Its rule: the input whose (shorter, centred) output covers n samples.
    for n in (4000, 44_100):
        assert model.output_length(model.valid_length(n)) >= n


def test_same_seed_same_initial_weights_as_the_2019_code(reference):
    # Modules are built in that code's order and rescaled once: the fixture's weights are the
    # 2019 code's initial weights after torch.manual_seed(0) (up to float rounding of the rescale).
    torch.manual_seed(0)
    model = Demucs2019(config_from_2019(reference["config"]))
    state = model.state_dict()
    converted = convert_state_dict(reference["state_dict"])
    assert set(converted) == set(state)
    for name, value in converted.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6, msg=name)


def test_structure_differs_from_the_paper_model_where_the_2019_code_does():
    cfg = Demucs2019Config(channels=6, depth=4)
    model = Demucs2019(cfg)
    assert isinstance(model.lstm.linear, torch.nn.Linear)  # Linear, no ReLU after the BiLSTM
    assert model.decoder[0].context.padding == (0,)  # unpadded context convolution
    assert model.decoder[0].context.out_channels == 2 * model.decoder[0].context.in_channels  # then GLU
    # The paper model's additive variant keeps its padded, same-length decoder.
    paper = Demucs(DemucsConfig(channels=6, depth=4, decoder="additive"))
    n = paper.valid_length(4000)
    assert paper(torch.randn(1, 2, n)).shape[-1] == n
    assert model.output_length(n) < n


def test_rescaling_changes_the_initial_weights_only_once():
    torch.manual_seed(1)
    plain = Demucs2019(Demucs2019Config(channels=6, depth=3, rescale=None))
    torch.manual_seed(1)
    scaled = Demucs2019(Demucs2019Config(channels=6, depth=3, rescale=0.1))
    for (name, a), (_, b) in zip(plain.named_modules(), scaled.named_modules()):
        if isinstance(a, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            std = a.weight.std().item()
            assert b.weight.std().item() == pytest.approx((std * 0.1) ** 0.5, rel=1e-4), name
            torch.testing.assert_close(b.bias * (std / 0.1) ** 0.5, a.bias, msg=name)
    assert not any(n.endswith("scale") for n, _ in scaled.named_buffers())  # nothing multiplies back
    x = torch.randn(1, 2, scaled.valid_length(2000))
    assert not torch.allclose(scaled(x), plain(x))  # so the function changes


def test_separate_any_length_and_short_inputs():
    torch.manual_seed(0)
    model = Demucs2019(Demucs2019Config(channels=4, depth=3, lstm_layers=1))
    for n in (700, 1000, 3333):
        assert separate(model, torch.randn(2, 2, n)).shape == (2, 4, 2, n)
    with pytest.raises(ValueError, match="too short"):
        model(torch.randn(1, 2, 100))


def test_converter_refuses_what_it_cannot_map(reference):
    with pytest.raises(ValueError, match="not a parameter"):
        convert_state_dict({**reference["state_dict"], "final.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="upsample"):
        config_from_2019({**reference["config"], "upsample": True})
    with pytest.raises(ValueError, match="glu"):
        config_from_2019({**reference["config"], "glu": False})
