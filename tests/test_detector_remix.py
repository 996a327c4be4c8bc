"""Remix-augmented detector training: remixes of the labelled stems, labelled with the relative
volumes of the remixed stems."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.remix import RemixConfig, RemixSets, remix, remix_set, silence_envelope
from classifiers.training import DetectorTrainConfig, train_detector
from pipeline.features.scattering import extract_features
from pipeline.sources import SOURCES, n_windows, window_samples, window_starts

RATE = 16_000


def _songs(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """``count`` songs of mono stems ``(4, samples)``: each source a tone of its own, times a
    per-song gain, so that every stem of a remix can be traced back to its song."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    songs = []
    for k in range(count):
        tones = [np.sin(2 * np.pi * f * t) for f in (90.0, 55.0, 660.0, 330.0)]
        songs.append((np.stack(tones) * (0.05 + 0.1 * k) * rng.uniform(0.5, 1.0, (4, 1))).astype(np.float32))
    return songs


def _relative_volumes_by_hand(stems: np.ndarray) -> np.ndarray:
    """V_i = 10 log10(||s_i||^2 / ||sum s||^2) per grid window, summed sample by sample."""
    window, _ = window_samples(RATE)
    count = n_windows(stems.shape[-1], RATE)
    out = np.empty((len(SOURCES), count))
    for w, start in enumerate(window_starts(count, RATE)):
        piece = stems[:, start:start + window].astype(np.float64)
        mix = float((piece.sum(axis=0) ** 2).sum())
        with np.errstate(divide="ignore"):
            out[:, w] = 10 * np.log10((piece ** 2).sum(axis=1) / mix) if mix > 1e-10 else -np.inf
    return out


def test_remix_labels_are_the_relative_volumes_of_the_remixed_stems():
    songs = _songs(6, 3.0)
    config = RemixConfig(songs=2, seconds=2.0, silence_prob=1.0, fade_s=0.3, section_s=(0.5, 1.0))
    pairs = remix_set(songs, config, seed=4, number=0)
    assert len(pairs) == 2
    # the same draws, replayed: the remixed stems behind each pair
    rng = np.random.default_rng(np.random.SeedSequence([4, 0, 0x7E31]))
    for features, volumes in pairs:
        stems, donors = remix(songs, rng, config)
        assert stems.shape == (4, 2 * RATE) and len(set(donors.tolist())) == 4  # four different songs
        np.testing.assert_allclose(volumes, _relative_volumes_by_hand(stems), atol=1e-3)
        np.testing.assert_array_equal(features, extract_features(stems.sum(axis=0)))
        assert features.shape[-1] // 4 - 9 <= volumes.shape[1] <= features.shape[-1] // 4
        # a silenced source reaches the silent labels somewhere, while the others stay loud
        assert (volumes <= -20).any()
    # each stem comes from its donor song at a constant gain (the tones are traced back)
    stems, donors = remix(songs, np.random.default_rng(1), RemixConfig(seconds=2.0, silence_prob=0.0))
    for index, donor in enumerate(donors):
        source = songs[donor][index]
        ratio = np.abs(stems[index]).max() / np.abs(source).max()
        assert 10 ** (-6 / 20) - 1e-3 <= ratio <= 10 ** (6 / 20) + 1e-3


def test_silence_envelope_has_off_and_quiet_sections_with_fades():
    config = RemixConfig(max_sections=1, section_s=(2.0, 2.0), fade_s=1.0, quiet_prob=0.0)
    gains = [silence_envelope(5 * RATE, np.random.default_rng(k), config) for k in range(5)]
    for gain in gains:
        assert gain.max() == 1.0 and (gain == 0.0).any()  # an off section, exactly zero inside
        low = np.flatnonzero(gain < 1.0)
        assert low[-1] - low[0] + 1 == 2 * RATE  # the section lasts 2 s, fades included
        assert 0.5 < gain[low[0]] < 1.0 and np.all(np.diff(gain[low[0]:low[0] + 100]) < 0)  # faded, not cut
    quiet = silence_envelope(5 * RATE, np.random.default_rng(0),
                             RemixConfig(max_sections=1, section_s=(2.0, 2.0), fade_s=0.0, quiet_prob=1.0,
                                         quiet_db=(20.0, 20.0)))
    assert not (quiet == 0.0).any()
    np.testing.assert_allclose(quiet[quiet < 1.0], 0.1, rtol=1e-9)  # 20 dB down
    with pytest.raises(ValueError):
        RemixConfig(songs=0)


def test_training_takes_a_new_remix_set_every_k_epochs():
    songs = _songs(4, 2.0, seed=1)
    labelled = [(extract_features(s.sum(axis=0)), _relative_volumes_by_hand(s).astype(np.float32)) for s in songs]
    config = DetectorTrainConfig(epochs=2, batch_size=8, crop_seconds=1.5, width=0.0625, patience=5)
    sets = RemixSets(songs, RemixConfig(songs=1, seconds=2.0, every=1), seed=0)
    _, history = train_detector(labelled[:3], labelled[3:], config, seed=0, progress=False, extra=sets)
    assert [h["extra_tracks"] for h in history] == [1, 1]
    assert sets.made == 2  # epoch 2 trains on a new set
    assert sets(2) is sets(2) and not np.array_equal(sets(2)[0][1], remix_set(songs, sets.config, 0, 0)[0][1])
    assert [RemixConfig(every=2).set_number(epoch) for epoch in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert [RemixConfig(every=0).set_number(epoch) for epoch in (1, 2, 9)] == [0, 0, 0]
