"""Remixes of the labelled stems: more training songs for the detector from the same labelled songs.

A remix is a new song made of the training songs' stems (all at 16 kHz mono, ``(4, samples)``
in :data:`pipeline.sources.SOURCES` order): each source comes from a different song, drawn at
random, from a random offset (looped when the song is shorter than the remix), at a random
gain of +-``gain_db`` dB; with probability ``silence_prob`` a source is silenced in 1 to
``max_sections`` random sections of ``section_s`` seconds, each either off (gain 0) or quiet
(``quiet_db`` below its level), reached through a dB-linear fade of up to ``fade_s`` seconds
from its level down to -60 dB (off) or to the quiet level.  The mixture is the sum of the four
remixed stems; the labels are their relative volumes on the shared grid
(:func:`pipeline.corpora.labels.relative_volumes`, the same function as the stem set's
labels), and the features the scattering of the mixture
(:class:`pipeline.features.scattering.FeatureExtractor`).

The budget: a remix set is ``songs`` remixes of ``seconds`` each, so its features cost the
scattering of ``songs x seconds`` seconds of audio; training makes a new set every ``every``
epochs (0: one set for the whole run).  Every draw comes from the seed and the set's number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.corpora.labels import relative_volumes
from pipeline.sources import FEATURE_RATE, SOURCES

FADE_FLOOR_DB = -60.0  # a fade to "off" runs dB-linearly down to this level, then the stem is 0


@dataclass(frozen=True)
class RemixConfig:
    """One remix set: ``songs`` remixes of ``seconds`` each; gains, silences and fades as in the
    module docstring; a new set every ``every`` epochs (0: one set)."""

    songs: int = 24
    seconds: float = 30.0
    every: int = 1
    gain_db: float = 6.0
    silence_prob: float = 0.5
    max_sections: int = 3
    section_s: tuple[float, float] = (2.0, 12.0)
    quiet_db: tuple[float, float] = (10.0, 40.0)
    quiet_prob: float = 0.4  # share of silenced sections that are quiet rather than off
    fade_s: float = 2.0

    def __post_init__(self) -> None:
        if self.songs < 1 or self.seconds <= 0 or self.every < 0:
            raise ValueError(f"a remix set needs songs >= 1, seconds > 0 and every >= 0, got {self.songs}, "
                             f"{self.seconds} and {self.every}")
        if not (0.0 <= self.silence_prob <= 1.0 and 0.0 <= self.quiet_prob <= 1.0):
            raise ValueError("silence_prob and quiet_prob are probabilities (0..1)")
        if self.max_sections < 1 or not 0 < self.section_s[0] <= self.section_s[1] or self.fade_s < 0:
            raise ValueError("max_sections >= 1, 0 < section_s low <= high and fade_s >= 0 are required")

    def set_number(self, epoch: int) -> int:
        """The remix set that epoch ``epoch`` (1-based) trains on."""
        return 0 if self.every == 0 else (epoch - 1) // self.every


def silence_envelope(n: int, rng: np.random.Generator, config: RemixConfig, rate: int = FEATURE_RATE) -> np.ndarray:
    """Gain ``(n,)`` float64 of one silenced source: 1, except 1 to ``max_sections`` sections that
    are off (0) or quiet, each entered and left through a fade (module docstring)."""
    db = np.zeros(n)
    off = np.zeros(n, dtype=bool)
    for _ in range(int(rng.integers(1, config.max_sections + 1))):
        length = min(n, int(rng.uniform(*config.section_s) * rate))
        start = int(rng.integers(0, n - length + 1))
        quiet = rng.random() < config.quiet_prob
        level = -rng.uniform(*config.quiet_db) if quiet else FADE_FLOOR_DB
        fade = min(length // 2, int(rng.uniform(0.0, config.fade_s) * rate))
        section = np.full(length, level)
        if fade:
            ramp = np.linspace(0.0, level, fade + 1)[1:]  # from just below the stem's level
            section[:fade] = np.maximum(section[:fade], ramp)
            section[length - fade:] = np.maximum(section[length - fade:], ramp[::-1])
        db[start:start + length] = np.minimum(db[start:start + length], section)
        if not quiet:
            off[start + fade:start + length - fade] = True
    gain = np.power(10.0, db / 20.0)
    gain[off] = 0.0
    return gain


def _crop(stem: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of ``stem`` from a random offset, looped when it is shorter."""
    if stem.size >= n:
        start = int(rng.integers(0, stem.size - n + 1))
        return stem[start:start + n]
    return np.resize(np.roll(stem, -int(rng.integers(0, stem.size))), n)


def remix(songs: Sequence[np.ndarray], rng: np.random.Generator, config: RemixConfig,
          rate: int = FEATURE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """One remix of ``songs`` (each ``(4, samples)`` mono stems at ``rate``): ``(stems (4, n)
    float32, donors (4,))``, the remixed stems and the song each source came from."""
    if not songs:
        raise ValueError("a remix needs at least one labelled song")
    n = int(round(config.seconds * rate))
    donors = rng.choice(len(songs), size=len(SOURCES), replace=len(songs) < len(SOURCES))
    stems = np.empty((len(SOURCES), n), dtype=np.float32)
    for index, donor in enumerate(donors):
        gain = 10.0 ** (rng.uniform(-config.gain_db, config.gain_db) / 20.0)
        stem = _crop(np.asarray(songs[donor][index], dtype=np.float32), n, rng) * gain
        if rng.random() < config.silence_prob:
            stem = stem * silence_envelope(n, rng, config, rate)
        stems[index] = stem
    return stems, donors


def remix_labels(stems: np.ndarray, rate: int = FEATURE_RATE) -> np.ndarray:
    """Relative volumes ``(4, n_windows)`` dB of remixed mono stems ``(4, samples)``."""
    return relative_volumes(np.asarray(stems, dtype=np.float32)[:, None, :], rate)


def remix_set(songs: Sequence[np.ndarray], config: RemixConfig, seed: int, number: int,
              extractor=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Remix set ``number``: ``config.songs`` pairs ``(features (7, 54, T), volumes (4, n))`` of
    remixes of ``songs`` (16 kHz mono stems), every draw from ``(seed, number)``."""
    from pipeline.features.scattering import FeatureExtractor

    extractor = extractor or FeatureExtractor()
    rng = np.random.default_rng(np.random.SeedSequence([seed, number, 0x7E31]))
    pairs = []
    for _ in range(config.songs):
        stems, _ = remix(songs, rng, config)
        pairs.append((extractor(stems.sum(axis=0)), remix_labels(stems)))
    return pairs


class RemixSets:
    """``sets(epoch) -> pairs``: the remix set of each training epoch (:meth:`RemixConfig.set_number`),
    made when first asked for and kept while later epochs use it."""

    def __init__(self, songs: Sequence[np.ndarray], config: RemixConfig, seed: int, num_threads: int | None = None):
        from pipeline.features.scattering import FeatureExtractor

        self.songs, self.config, self.seed = list(songs), config, seed
        self.extractor = FeatureExtractor(num_threads=num_threads)
        self._number, self._pairs = None, []
        self.made = 0  # sets made so far

    def __call__(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        number = self.config.set_number(epoch)
        if number != self._number:
            self._number, self._pairs = number, remix_set(self.songs, self.config, self.seed, number, self.extractor)
            self.made += 1
        return self._pairs


def mono_stems(stems: np.ndarray) -> np.ndarray:
    """``(4, channels, samples)`` -> ``(4, samples)``: the mean over channels, float32."""
    return np.asarray(stems, dtype=np.float32).mean(axis=1)
