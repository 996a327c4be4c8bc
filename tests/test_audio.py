"""Decoding every catalog variant, and clear errors for bad files."""

import numpy as np
import pytest
import soundfile as sf
from fixtures_media import encode_as

from pipeline.audio import io as audio


def tone(rate, seconds=1.0, channels=2):
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)])


@pytest.mark.parametrize(
    "fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
@pytest.mark.parametrize("rate", [22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_rate_and_channel_count_decodes(tmp_path, fmt, subtype, rate, channels):
    x = tone(rate, channels=channels)
    path = tmp_path / f"t.{fmt.lower()}"
    sf.write(path, x.T, rate, format=fmt, subtype=subtype)
    y, got_rate = audio.load(path)
    assert got_rate == rate and y.shape[0] == channels and y.dtype == np.float32
    # lossy codecs add padding/delay: compare length loosely and level closely
    assert abs(y.shape[1] - x.shape[1]) < 0.1 * rate
    assert np.isclose(np.sqrt(np.mean(y**2)), np.sqrt(np.mean(x**2)), rtol=0.1)
    info = audio.probe(path)
    assert info.sample_rate == rate and info.channels == channels


def test_pyav_reads_an_m4a(tmp_path):
    m4a = encode_as(tmp_path / "t.m4a", tone(44100), "m4a")
    y, rate = audio.load(m4a)
    assert rate == 44100 and y.shape[0] == 2 and y.shape[1] > 40000
    info = audio.probe(m4a)
    assert (info.sample_rate, info.channels, info.codec, info.frames) == (44100, 2, "aac", 44100)


def test_resample_and_mono_give_expected_shape_and_level(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(44100, seconds=2.0).T, 44100, subtype="FLOAT")
    y, rate = audio.load(path, sample_rate=16000, mono=True)
    assert rate == 16000 and y.shape == (1, 32000)
    # the mean of the two channels (gains 0.5 and 1.0) has amplitude 0.375
    assert np.isclose(np.abs(y[0, 1000:-1000]).max(), 0.375, rtol=0.02)


def test_partial_read_returns_the_requested_span(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, 10000)).astype(np.float32)
    path = tmp_path / "t.wav"
    sf.write(path, x.T, 8000, subtype="FLOAT")
    y, _ = audio.load(path, start=1234, frames=500)
    np.testing.assert_array_equal(y, x[:, 1234:1734])


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty"),
        (b"this is a text file, not audio\n" * 20, "not an audio file"),
    ],
)
def test_bad_files_raise_audio_error_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)
    with pytest.raises(audio.AudioError, match=reason):
        audio.load(path)


@pytest.mark.parametrize("fmt", ["flac", "wav"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_truncated_file_is_an_error(tmp_path, fmt, keep):
    path = tmp_path / f"t.{fmt}"
    sf.write(path, tone(44100, seconds=3.0).T, 44100)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(audio.AudioError, match="truncated|decode"):
        audio.load(path)


def test_non_finite_samples_are_rejected(tmp_path):
    x = tone(8000)
    x[0, 100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x.T, 8000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.load(path)


def test_missing_file_is_an_audio_error(tmp_path):
    with pytest.raises(audio.AudioError, match="does not exist"):
        audio.load(tmp_path / "nope.wav")


def test_match_channels():
    mono = np.ones((1, 5), np.float32)
    assert audio.match_channels(mono, 2).shape == (2, 5)
    assert audio.match_channels(np.ones((8, 5), np.float32), 2).shape == (2, 5)
    assert audio.match_channels(np.ones((2, 5), np.float32), 1).shape == (1, 5)
