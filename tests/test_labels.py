"""Relative volumes V_i on the shared grid."""

import numpy as np

from pipeline.corpora.labels import relative_volumes, silent_labels, window_energy
from pipeline.sources import n_windows, window_samples


def noise(rng, n, channels=2):
    return rng.standard_normal((channels, n)).astype(np.float32)


def test_a_stem_at_a_known_gain_gives_its_expected_db():
    rng = np.random.default_rng(0)
    rate, n = 16000, 16000 * 3
    # four independent noises; bass 20 dB below the others
    stems = np.stack([noise(rng, n), noise(rng, n) * 0.1, noise(rng, n), noise(rng, n)])
    volumes = relative_volumes(stems, rate)
    # mixture energy ~ 3 + 0.01 units; bass share 0.01 / 3.01 -> -24.8 dB; others -> -5.0 dB
    assert volumes.shape == (4, n_windows(n, rate))
    np.testing.assert_allclose(volumes[1], 10 * np.log10(0.01 / 3.01), atol=0.3)
    np.testing.assert_allclose(volumes[0], 10 * np.log10(1 / 3.01), atol=0.3)


def test_a_source_that_stops_is_silent_from_the_first_window_past_the_stop():
    rng = np.random.default_rng(1)
    rate, n = 16000, 16000 * 4
    stems = np.stack([noise(rng, n), noise(rng, n), noise(rng, n), noise(rng, n)])
    stop = 2 * rate
    stems[3, :, stop:] = 0.0
    volumes = relative_volumes(stems, rate)
    window, hop = window_samples(rate)
    first_clean = -(-stop // hop)  # first window starting at or after the stop
    assert np.isneginf(volumes[3, first_clean:]).all()
    last_full = (stop - window) // hop  # last window that ends at or before the stop
    assert (volumes[3, : last_full + 1] > -10).all()
    # windows straddling the stop fall monotonically as less of the source remains
    assert (np.diff(volumes[3, last_full:first_clean]) < 0).all()
    labels = silent_labels(volumes)
    assert labels[3, first_clean:].all() and not labels[3, : last_full + 1].any()


def test_silent_mixture_gives_minus_infinity_not_nan():
    stems = np.zeros((4, 2, 20000), np.float32)
    volumes = relative_volumes(stems, 16000)
    assert np.isneginf(volumes).all() and not np.isnan(volumes).any()


def test_window_energy_matches_a_direct_sum_and_short_signals_get_one_window():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(30000)
    window, hop = window_samples(16000)
    energy = window_energy(x, 16000)
    for k in (0, 5, len(energy) - 1):
        assert np.isclose(energy[k], np.sum(x[k * hop: k * hop + window] ** 2))
    assert window_energy(x[:500], 16000).shape == (1,)
    assert n_windows(0, 16000) == 0
