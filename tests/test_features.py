"""Scattering features: layout against Kymatio's meta(), chunking, frame counts, feature store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.audio.io import AudioError
from pipeline.features import scattering as feat
from pipeline.features.store import FeatureShard, FeatureShardWriter, index_path_for, write_feature_shard
from pipeline.sources import n_windows

RATE = 16_000


def _music_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts, a gated tone and a bass line: energy at every scale, changing in time."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = (0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 1.3 * t) > 0)
         + 0.1 * np.sin(2 * np.pi * 220 * t) * (t % 3 < 1.7) + 0.05 * np.sin(2 * np.pi * 60 * t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def kymatio_small():
    """Bare Kymatio on 2**15 - 7680 samples (padded to 2**15, frames centred on j * 256)."""
    from kymatio.torch import Scattering1D

    return Scattering1D(J=8, shape=2 ** 15 - 7680, Q=8, T=256)


def test_layout_puts_each_kymatio_row_at_its_n1_n2_place(kymatio_small):
    layout = feat.scattering_layout()
    keys = [tuple(int(i) for i in k) for k in kymatio_small.meta()["key"]]
    assert (layout.channels, layout.freqs) == (7, 54)
    assert layout.order2_filters == (3, 4, 5, 6, 7, 8)
    assert int(layout.present.sum()) == len(keys) - 1  # every coefficient but order 0
    x = _music_like(kymatio_small.shape[0] / RATE)
    raw = kymatio_small(torch.from_numpy(x)).numpy()  # (234, frames)
    laid = feat.raw_to_layout(raw)  # (7, 54, frames)
    for key, (channel, freq) in {(0,): (0, 0), (53,): (0, 53), (20,): (0, 20), (0, 3): (1, 0), (9, 3): (1, 9),
                                 (17, 4): (2, 17), (25, 5): (3, 25), (33, 6): (4, 33), (41, 7): (5, 41),
                                 (48, 8): (6, 48)}.items():
        np.testing.assert_array_equal(laid[channel, freq], raw[keys.index(key)])
        assert layout.keys[channel][freq] == key
    # paths that Kymatio does not compute (j2 <= j1) are zeros
    for channel, freq in ((1, 10), (1, 53), (2, 18), (6, 49), (6, 53)):
        assert layout.rows[channel, freq] == -1
        assert not laid[channel, freq].any()
    # channel 0 runs from high to low frequency
    assert np.all(np.diff(layout.xi1_hz) < 0)


def test_frames_are_centred_on_multiples_of_256_samples():
    x = np.zeros(RATE * 3, dtype=np.float32)
    x[100 * 256] = 1.0
    raw = feat.FeatureExtractor(chunk_frames=40).scattering(x)
    assert int(np.argmax(raw[0].sum(axis=0))) == 100


@pytest.mark.parametrize("n_samples", [1, 5000, 10239, 10240, 11263, 11264, 16000 * 3 + 17])
def test_frame_count_gives_one_detector_frame_per_grid_window(n_samples):
    frames = feat.n_feature_frames(n_samples)
    windows = n_windows(n_samples, RATE)
    assert frames == 40 + 4 * (windows - 1)
    x = np.random.default_rng(0).standard_normal(n_samples).astype(np.float32) * 0.1
    out = feat.extract_features(x)
    assert out.shape == (7, 54, frames) and out.dtype == np.float32
    assert np.all(out >= 0) and np.isfinite(out).all()
    assert feat.n_feature_frames(0) == 0


def test_chunked_features_match_the_whole_signal_transform():
    """12 s in chunks of 74 frames (11 chunks) vs one Kymatio call on the zero-extended signal."""
    from kymatio.torch import Scattering1D

    x = _music_like(12.0, seed=3)
    frames = feat.n_feature_frames(x.size)
    margin = 64 * 256
    length = 2 ** 18 - 7680  # padded to 2**18 by Kymatio with 3840 = 15 * 256 samples per side
    whole = np.zeros(length, dtype=np.float32)
    whole[margin:margin + x.size] = x
    reference = Scattering1D(J=8, shape=length, Q=8, T=256)(torch.from_numpy(whole)).numpy()
    reference = feat.raw_to_layout(reference[:, margin // 256: margin // 256 + frames])
    chunked = feat.FeatureExtractor(chunk_frames=74)  # 74 + 2 * 12 context = the 98-frame object
    raw = chunked.scattering(x)
    assert np.abs(raw - reference).max() <= 1e-5 * np.abs(reference).max()
    log_ref = feat.log_compress(reference)
    assert np.abs(chunked(x) - log_ref).max() <= feat.CHUNK_TOLERANCE
    # chunk length does not matter (the default uses one 994-frame segment for this length)
    assert np.abs(feat.extract_features(x) - log_ref).max() <= feat.CHUNK_TOLERANCE
    # and the context is what makes it work: without it the chunk edges are wrong
    no_context = feat.FeatureExtractor(chunk_frames=74, context_frames=0)(x)
    assert np.abs(no_context - log_ref).max() > 10 * feat.CHUNK_TOLERANCE


def test_packed_short_signals_equal_their_solo_features():
    # shorter than a window (one zero-padded window), a window, seconds; more than a chunk in all
    signals = [_music_like(s, seed=i) for i, s in enumerate((0.3, 0.7, 3.3, 8.0, 1.0, 5.0))]
    extractor = feat.FeatureExtractor(num_threads=1)
    packed = extractor.packed(signals, compress=False)
    assert feat.pack_layout([x.size for x in signals])[1] > feat.MAX_SEGMENT_FRAMES  # tracks cross chunk edges
    for x, raw in zip(signals, packed):
        solo = extractor.scattering(x)
        assert raw.shape == solo.shape == (7, 54, feat.n_feature_frames(x.size))
        assert np.abs(raw - solo).max() <= 1e-5 * solo.max()
        assert np.abs(feat.log_compress(raw) - feat.log_compress(solo)).max() <= feat.CHUNK_TOLERANCE
    np.testing.assert_array_equal(extractor.packed(signals[3:4])[0], extractor(signals[3]))  # alone: the same
    assert extractor.packed([]) == []
    with pytest.raises(AudioError, match="no samples"):
        extractor.packed([signals[0], np.zeros(0, np.float32)])


def test_pack_layout_keeps_a_gap_after_each_signals_frames_and_samples():
    lengths = [16000, 300, 16000 * 8 + 1000]  # frames 60, samples 63; 40 (one window), 2; 500, 504
    starts, total = feat.pack_layout(lengths, gap_frames=12)
    assert starts == [0, 63 + 12, 63 + 12 + 40 + 12]
    assert total == starts[2] + 500
    assert feat.pack_span(lengths[2], 12) == 504 + 12  # its samples reach past its last frame


def test_bad_signals_raise_audio_errors():
    with pytest.raises(AudioError, match="no samples"):
        feat.extract_features(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        feat.extract_features(np.full(2000, np.nan, dtype=np.float32))
    with pytest.raises(AudioError, match="mono"):
        feat.extract_features(np.zeros((2, 2000), dtype=np.float32))
    with pytest.raises(ValueError):
        feat.FeatureExtractor(chunk_frames=990, context_frames=12)


def test_fit_normalisation_pools_frames_and_keeps_missing_paths_at_zero():
    tracks = [feat.extract_features(_music_like(s, seed=i)) for i, s in enumerate((1.0, 2.5))]
    mean, std = feat.fit_normalisation(iter(tracks))
    pooled = np.concatenate(tracks, axis=-1).astype(np.float64)
    assert mean.shape == std.shape == (7, 54, 1)
    np.testing.assert_allclose(mean[..., 0], pooled.mean(-1), rtol=1e-5, atol=1e-6)
    present = feat.scattering_layout().present
    np.testing.assert_allclose(std[present, 0], pooled.std(-1)[present], rtol=1e-4)
    assert np.all(std[~present] == 1.0) and np.all(mean[~present] == 0.0)
    with pytest.raises(ValueError):
        feat.fit_normalisation([])


def test_feature_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"track{i}", rng.uniform(0, 14, (7, 54, n)).astype(np.float32)) for i, n in enumerate((40, 3, 517))]
    path = tmp_path / "shard.npy"
    index = write_feature_shard(path, items)
    assert list(index.columns) == ["track_id", "offset", "n_frames"]
    assert index["offset"].tolist() == [0, 40, 43] and index["n_frames"].tolist() == [40, 3, 517]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.index.parquet", "shard.npy"]
    shard = FeatureShard(path)
    assert np.load(path, mmap_mode="r").shape == (560, 7, 54)
    assert len(shard) == 3 and shard.track_ids == ["track0", "track1", "track2"]
    for (tid, expected), (got_id, got) in zip(items, shard):
        assert got_id == tid and got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 2 ** -8  # float16 spacing / 2 below 16
    np.testing.assert_array_equal(shard["track1"], shard.get("track1"))
    assert pd.read_parquet(index_path_for(path)).equals(index)
    exact = write_feature_shard(tmp_path / "exact.npy", items, dtype=np.float32)
    assert len(exact) == 3
    np.testing.assert_array_equal(FeatureShard(tmp_path / "exact.npy")["track2"], items[2][1])
    with pytest.raises(KeyError):
        shard.get("missing")


def test_feature_store_rejects_bad_input_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "bad.npy"
    good = np.zeros((7, 54, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="already"):
        write_feature_shard(path, [("a", good), ("a", good)])
    with pytest.raises(ValueError, match="do not match"):
        write_feature_shard(path, [("a", good), ("b", np.zeros((7, 53, 10), dtype=np.float32))])
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureShardWriter(path) as writer:
            writer.add("a", good)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
