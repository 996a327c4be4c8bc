"""Bounded-memory paths: block decoding, streamed features, chunked detection, streamed extraction.

Every streamed result is compared with the whole-track computation it replaces (exactly).
Small blocks force many blocks on seconds of audio.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_media import encode_as

from classifiers.detector import DetectorConfig, SilentSourceDetector
from classifiers.inference import predict
from pipeline.audio import io as audio
from pipeline.features.featurize import catalog_blocks, featurize, read_feature_rejects
from pipeline.features.scattering import FeatureExtractor, n_feature_frames
from pipeline.features.store import FeatureShard, FeatureShardWriter
from pipeline.mining.extraction import RunRule, extract_track, quantise
from pipeline.sources import FEATURE_RATE, n_windows


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small transforms run fastest on one thread (and the machine is shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def music(rate: int, seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``(channels, samples)`` float32: gated noise, a tone and a bass line, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    rows = [0.2 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 1.3 * t + c) > 0)
            + 0.2 * np.sin(2 * np.pi * (220 + 110 * c) * t) * (t % 3 < 1.7) + 0.1 * np.sin(2 * np.pi * 60 * t)
            for c in range(channels)]
    return np.clip(np.stack(rows), -0.99, 0.99).astype(np.float32)


def joined(blocks) -> np.ndarray:
    blocks = list(blocks)
    assert blocks and all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] > 0 for b in blocks)
    return np.concatenate(blocks, axis=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    x = music(44100, 3.0)
    paths = {}
    for name, subtype in (("t.wav", "PCM_16"), ("t.flac", "PCM_24"), ("t.ogg", "VORBIS")):
        sf.write(root / name, x.T, 44100, subtype=subtype)
        paths[name] = root / name
    for name in ("t.m4a", "t.mp3", "t.opus"):  # PyAV's formats (Opus decodes at 48 kHz)
        paths[name] = encode_as(root / name, x if name != "t.opus" else audio.resample(x, 44100, 48000),
                                name[2:])
    return paths


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", ["t.wav", "t.flac", "t.ogg", "t.m4a", "t.mp3", "t.opus"])
@pytest.mark.parametrize("rate,mono", [(None, False), (16000, True), (22050, False)])
def test_stream_concatenates_to_load(files, name, rate, mono):
    whole, got_rate = audio.load(files[name], sample_rate=rate, mono=mono)
    for block_frames in (997, 4096):
        streamed = joined(audio.stream(files[name], block_frames=block_frames, sample_rate=rate, mono=mono))
        np.testing.assert_array_equal(streamed, whole)
    assert got_rate == (rate or (48000 if name == "t.opus" else 44100)) and whole.shape[0] == (1 if mono else 2)
    # load's resampling is the one-shot resampler of the whole signal (what the code did before streaming)
    native, native_rate = audio.load(files[name])
    expected = audio.to_mono(native) if mono else native
    if rate:
        expected = audio.resample(expected, native_rate, rate)
    np.testing.assert_array_equal(whole, expected)


@pytest.mark.parametrize("name", ["t.flac", "t.m4a", "t.mp3"])
def test_a_span_is_the_slice_of_the_whole(files, name):
    whole, _ = audio.load(files[name])
    span = joined(audio.stream(files[name], block_frames=1000, start=12345, frames=20000))
    np.testing.assert_array_equal(span, whole[:, 12345:32345])
    np.testing.assert_array_equal(audio.load(files[name], start=12345, frames=20000)[0], span)


def _open_descriptors(path: Path) -> int:
    """How many file descriptors of this process are open on ``path``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            continue
    return count


@pytest.mark.parametrize("name", ["t.m4a", "t.mp3", "t.flac"])
def test_leaving_a_stream_early_closes_the_file(files, name):
    blocks = audio.stream(files[name], block_frames=256)
    assert next(blocks).shape == (2, 256)
    assert _open_descriptors(files[name]) == 1  # open, in the middle of the file
    blocks.close()
    assert _open_descriptors(files[name]) == 0
    with audio.open_stream(files[name], block_frames=256) as opened:
        assert (opened.sample_rate, opened.channels) == (44100, 2)
        next(iter(opened))
    assert _open_descriptors(files[name]) == 0


def test_late_nan_empty_and_truncated_streams_raise(tmp_path):
    x = music(8000, 2.0)
    x[1, 14000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x.T, 8000, subtype="FLOAT")
    blocks = audio.stream(path, block_frames=1000)
    for _ in range(14):  # samples before the NaN come out
        next(blocks)
    with pytest.raises(audio.AudioError, match="NaN or Inf"):
        next(blocks)
    with pytest.raises(audio.AudioError, match="no audio samples"):
        list(audio.stream(path, start=16000, frames=10))
    sf.write(tmp_path / "t.wav", music(8000, 2.0).T, 8000)
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(audio.AudioError, match="truncated"):
        list(audio.stream(tmp_path / "cut.wav"))
    with pytest.raises(ValueError):
        list(audio.stream(tmp_path / "t.wav", block_frames=0))


# --------------------------------------------------------------------------- features


def test_streamed_features_are_the_whole_signal_features():
    x = music(FEATURE_RATE, 5.0, channels=1)[0]
    extractor = FeatureExtractor(chunk_frames=60, context_frames=12, batch=2, num_threads=1)
    whole = extractor(x)
    for size in (700, 4096):
        pieces = list(extractor.stream(x[i:i + size] for i in range(0, x.size, size)))
        np.testing.assert_array_equal(np.concatenate(pieces, axis=-1), whole)
    assert len(pieces) > 1  # frames are released before the end of the stream
    for n in (300, 20000):  # shorter than one window and than one chunk; a few chunks
        short = x[:n]
        np.testing.assert_array_equal(
            np.concatenate(list(extractor.stream(short[i:i + 333] for i in range(0, n, 333))), axis=-1),
            extractor(short))
        assert extractor(short).shape[-1] == n_feature_frames(n)
    with pytest.raises(audio.AudioError, match="no samples"):
        list(extractor.stream(iter([np.zeros(0, np.float32)])))


def test_featurize_streams_tracks_into_the_shard(tmp_path):
    long = tmp_path / "long.flac"
    sf.write(long, music(44100, 20.0, seed=1).T, 44100, subtype="PCM_24")  # > one 970-frame chunk
    short = tmp_path / "short.wav"
    sf.write(short, music(22050, 0.5, seed=2).T, 22050)
    bad = music(8000, 3.0, seed=3)
    bad[0, 20000] = np.inf
    late_nan = tmp_path / "late_nan.wav"
    sf.write(late_nan, bad.T, 8000, subtype="FLOAT")
    items = [(tid, str(p), lambda p=p: catalog_blocks(str(p), block_frames=5000))
             for tid, p in (("long", long), ("bad", late_nan), ("short", short))]
    npy = tmp_path / "shard.npy"
    counts = featurize(items, npy, total=3, num_threads=1, pack_max_seconds=10.0)  # "long" streams
    assert counts["tracks"] == 2 and counts["rejects"] == 1 and counts["tracks_packed"] == 1
    assert counts["audio_seconds"] == pytest.approx(20.5, abs=0.05)
    assert "NaN or Inf" in read_feature_rejects(npy)["reason"].iloc[0]
    shard = FeatureShard(npy)
    assert shard.track_ids == ["long", "short"]
    extractor = FeatureExtractor(num_threads=1)  # torch's thread count changes float rounding
    for tid, path in (("long", long), ("short", short)):
        mono = audio.load(path, sample_rate=FEATURE_RATE, mono=True)[0][0]
        expected = extractor(mono).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(shard.get(tid), expected)
        assert shard.n_frames(tid) == n_feature_frames(mono.size)


def test_featurize_packs_short_tracks_into_shared_chunks(tmp_path, monkeypatch):
    paths = []
    for i, seconds in enumerate((1.3, 1.35, 1.4, 1.3)):  # alone, each needs the 2**16-point Kymatio object
        paths.append(tmp_path / f"s{i}.wav")
        sf.write(paths[-1], music(22050, seconds, seed=i).T, 22050)
    sf.write(tmp_path / "nan.wav", np.full((2, 4000), np.nan, np.float32).T, 8000, subtype="FLOAT")
    paths.insert(2, tmp_path / "nan.wav")
    items = [(p.stem, str(p), lambda p=p: catalog_blocks(str(p), block_frames=5000)) for p in paths]
    inputs = []  # samples of each Kymatio input
    scatter = FeatureExtractor._scatter
    monkeypatch.setattr(FeatureExtractor, "_scatter", lambda self, xs: inputs.extend(x.size for x in xs)
                        or scatter(self, xs))
    counts = featurize(items, tmp_path / "packed.npy", num_threads=1, dtype=np.float32)
    packed_inputs, inputs[:] = list(inputs), []
    alone = featurize(items, tmp_path / "alone.npy", num_threads=1, dtype=np.float32, pack_max_seconds=0)
    assert counts["tracks"] == alone["tracks"] == 4 and counts["tracks_packed"] == 4 and alone["tracks_packed"] == 0
    assert counts["rejects"] == alone["rejects"] == 1 and counts["audio_seconds"] == alone["audio_seconds"]
    assert "NaN or Inf" in read_feature_rejects(tmp_path / "packed.npy")["reason"].iloc[0]
    assert len(inputs) == 4 and len(packed_inputs) == 1 and sum(packed_inputs) < 0.6 * sum(inputs)  # one, not four
    packed, single = FeatureShard(tmp_path / "packed.npy"), FeatureShard(tmp_path / "alone.npy")
    for track in single.track_ids:
        raw_packed, raw_single = (1e-6 * np.expm1(shard.get(track).astype(np.float64)) for shard in (packed, single))
        assert raw_packed.shape == raw_single.shape
        assert np.abs(raw_packed - raw_single).max() <= 1e-5 * raw_single.max()


def test_add_pieces_cuts_a_failed_track_back_out(tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(0, 9, (7, 54, n)).astype(np.float32) for n in (30, 45))

    def failing():
        yield b[..., :20]
        raise audio.AudioError("decoder gave up")

    with FeatureShardWriter(tmp_path / "s.npy", dtype=np.float32) as writer:
        writer.add_pieces("a", iter([a[..., :10], a[..., 10:]]))
        with pytest.raises(audio.AudioError):
            writer.add_pieces("broken", failing())
        assert writer.add_pieces("b", iter([b])) == 45
    shard = FeatureShard(tmp_path / "s.npy")
    assert shard.track_ids == ["a", "b"]
    np.testing.assert_array_equal(shard["a"], a)
    np.testing.assert_array_equal(shard["b"], b)
    np.testing.assert_array_equal(np.asarray(shard.view("b")), b)


# --------------------------------------------------------------------------- detection


def test_predict_on_the_memory_map_and_the_file_reader_equals_predict_on_a_copy(tmp_path):
    feats = np.random.default_rng(1).uniform(0, 10, (7, 54, 40 + 4 * 150)).astype(np.float32)
    with FeatureShardWriter(tmp_path / "s.npy") as writer:
        writer.add("t", feats)
    shard = FeatureShard(tmp_path / "s.npy")
    torch.manual_seed(0)
    model = SilentSourceDetector(DetectorConfig(width=0.0625)).eval()
    view = shard.view("t")
    assert isinstance(view.base, np.memmap) or isinstance(view, np.memmap)
    reader = shard.reader("t")
    assert reader.shape == (7, 54, 40 + 4 * 150)
    np.testing.assert_array_equal(reader[:, :, 13:77], np.asarray(view[:, :, 13:77]))
    np.testing.assert_array_equal(reader[:, :, 590:700], np.asarray(view[:, :, 590:]))
    for chunk in (7, 64):
        expected = predict(model, shard.get("t"), chunk_windows=chunk)
        np.testing.assert_array_equal(predict(model, view, chunk_windows=chunk), expected)
        np.testing.assert_array_equal(predict(model, reader, chunk_windows=chunk), expected)


# --------------------------------------------------------------------------- extraction


def _probs(n_frames: int) -> np.ndarray:
    """Drums and vocals overlap; bass runs to the end of the track; other has a run too short."""
    probs = np.zeros((n_frames, 4), np.float32)
    probs[10:120, 0] = 0.9
    probs[60:, 1] = 0.9
    probs[5:60, 2] = 0.9
    probs[30:200, 3] = 0.9
    return probs


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_streamed_excerpts_are_the_bytes_of_a_whole_write(tmp_path, subtype):
    rate = 22050
    x = music(rate, 15.3, seed=4)
    path = tmp_path / "track.wav"
    sf.write(path, x.T, rate, subtype=subtype)
    probs = _probs(n_windows(x.shape[1], rate) + 1)
    thresholds = {"drums": 0.5, "bass": 0.5, "other": 0.5, "vocals": 0.5}
    small = extract_track(path, "ab12", None, probs, thresholds, RunRule(), tmp_path / "small", "d", "c",
                          block_frames=777)
    big = extract_track(path, "ab12", None, probs, thresholds, RunRule(), tmp_path / "big", "d", "c",
                        block_frames=1 << 20)
    assert [r["source"] for r in small] == ["drums", "bass", "vocals"] == [r["source"] for r in big]
    assert small[1]["end_sample"] == x.shape[1]  # the bass run is clipped at the track's end
    whole, _ = audio.load(path)
    out_subtype = "PCM_16" if subtype == "PCM_16" else "PCM_24"
    for a, b in zip(small, big):
        # NaN (no separator score) is not equal to itself: compare it as a marker
        def marked(row):
            return {k: ('NaN' if v != v else v) for k, v in row.items()}

        assert marked(a) == marked(b)
        reference = tmp_path / f"ref-{a['source']}.flac"  # what the code wrote before streaming
        sf.write(str(reference), quantise(whole[:, a["start_sample"]:a["end_sample"]], out_subtype), rate,
                 format="FLAC", subtype=out_subtype)
        assert (tmp_path / "small" / a["audio_path"]).read_bytes() == reference.read_bytes()
    assert not [p for p in (tmp_path / "small").rglob(".*")]  # no temporaries left


def test_a_late_nan_leaves_no_excerpt_behind(tmp_path):
    rate = 8000
    x = music(rate, 12.0, seed=5)
    x[0, 11 * rate] = np.nan  # after every excerpt of the track has been written
    path = tmp_path / "late.wav"
    sf.write(path, x.T, rate, subtype="FLOAT")
    probs = _probs(n_windows(x.shape[1], rate))
    with pytest.raises(audio.AudioError, match="NaN"):
        extract_track(path, "cd34", None, probs, {"drums": 0.5}, RunRule(), tmp_path / "run", "d", "c",
                      block_frames=500)
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
