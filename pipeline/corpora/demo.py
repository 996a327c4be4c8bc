"""Deterministic synthetic multitrack corpus for demos and tests.

Songs are synthesised with numpy from a seed: four stems (``drums, bass, other, vocals``,
the order of :data:`pipeline.sources.SOURCES`) as float32 ``(4, 2, samples)`` at the
requested rate.  Each song draws its tempo (80-160 bpm), key, mode, chord progression,
timbres, per-stem gains (spread over 15 dB) and stereo panning, and an arrangement in
sections of 2-8 bars (about 4-20 s) in which a source is *on*, *quiet* (10-28 dB down,
which lands at roughly -15..-40 dB relative volume) or *off* (exactly zero), with fades
(dB-linear down to -60 dB) at some on/off transitions.  The fraction of the time each source
is absent (``V_i <= -40 dB``, which includes exactly-zero windows) matches MUSDB18's rates as
given in the paper: drums ~11 %, bass ~13 %, other ~3 %, vocals ~30 % (off sections plus the
gaps between sung phrases).

Sources are built to be told apart on a 16 kHz mono scattering transform: drums are
kick/snare/hat/crash one-shots (swept sine, filtered noise) on a 16-step grid; bass is a
low harmonic tone (41-98 Hz fundamentals) following the chord roots; other is pads, plucked
arpeggios or chord stabs with 165-1400 Hz fundamentals and a few wavetable timbres; vocals are a
glottal-pulse-like harmonic tone with vibrato and portamento through vowel formant filters,
sung in phrases of syllables with consonant noise, breaths and silent gaps between phrases.

:func:`generate` writes the demo corpus: a MUSDB18-HQ-style stem set (float wav, mixture
equal to the float32 sum of the stems), an unlabelled catalog of mixtures in several formats,
rates and channel counts (plus deliberately broken files), the catalog's ground-truth
relative volumes on the shared grid, and ``demo.json``; when asked, the catalog's true stems
too (:func:`write_catalog_stems`: a stem set whose train split is the catalog, for the
"supervised + catalog stems" rung of the mining value ladder).
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

from pipeline.audio.encode import encode_audio
from pipeline.audio.io import match_channels, resample
from pipeline.audio.ogg import with_stream_serial
from pipeline.corpora.labels import relative_volumes
from pipeline.corpora.stemset import SPLITS
from pipeline.sources import SOURCES, window_start_s
from pipeline.storage.outputs import atomic_path, is_temporary, write_json_atomic, write_parquet_atomic

GENERATOR_VERSION = 2  # bump when the synthesis changes what a seed produces (2: M4A catalog tracks)
SAMPLE_RATE = 44_100
OFF, QUIET, ON = 0, 1, 2  # section states of a source
FADE_FLOOR_DB = -60.0  # fades run dB-linearly between this level and the section level

# Catalog variants: extension, format, subtype: soundfile's names, or "AAC" for AAC in an M4A
# container written with PyAV (libsndfile cannot write it).
CATALOG_FORMATS: tuple[tuple[str, str, str], ...] = (
    ("wav", "WAV", "PCM_16"),
    ("flac", "FLAC", "PCM_24"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
    ("m4a", "AAC", ""),
)
LOSSY_FORMATS = ("OGG", "MP3", "AAC")  # written at a lower peak: their decoded peaks overshoot
CATALOG_RATES: tuple[int, ...] = (22_050, 44_100, 48_000)
CATALOG_CHANNELS: tuple[int, ...] = (1, 2)
BAD_FILES = ("empty.wav", "truncated.flac", "not_audio.mp3")
UNICODE_TITLE = "café au lait"  # file name of catalog track 1 holds a space and a non-ASCII letter

# Arrangement model, per source (drums, bass, other, vocals).  OFF_FRACTION is the expected
# fraction of song time in off sections; with fades, quiet sections that land below -40 dB and
# (for vocals) the gaps between phrases, the measured absence (V <= -40 dB) comes out at
# about 11 / 13 / 3 / 30 % (MUSDB18's rates, paper section 4).
OFF_FRACTION = np.array([0.11, 0.125, 0.03, 0.215])
QUIET_PROB = np.array([0.10, 0.10, 0.08, 0.10])  # per non-off section
QUIET_ATTENUATION_DB = (10.0, 28.0)
INTRO_WEIGHT = np.array([4.0, 2.5, 2.5, 3.0])  # off more likely in the first section...
OUTRO_WEIGHT = np.array([2.0, 1.5, 1.0, 2.0])  # ... and in the last one
BREAKDOWN_WEIGHT = np.array([2.0, 3.0, 1.0, 1.0])  # one random middle section ("breakdown")
FADE_OUT_PROB, FADE_IN_PROB = 0.35, 0.3
LEVEL_RAMP_S = 0.5  # dB ramp between on and quiet sections
ANTI_CLICK_S = 0.005  # linear ramp on the sounding side of an off boundary
SECTION_BARS = (2, 4, 8)
SECTION_BAR_PROBS = (0.25, 0.45, 0.30)
SECTION_SECONDS = (4.0, 20.0)

# Mixing: reference level of each stem in dB before its random gain of +-GAIN_SPREAD_DB / 2.
STEM_LEVEL_DB = np.array([0.0, -2.0, -3.0, 0.0])
GAIN_SPREAD_DB = 15.0
STEM_RMS = 0.1  # active-sample RMS of a stem at 0 dB

MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
PROGRESSIONS = {  # scale degrees (0 = tonic) of one chord per bar
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 0), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 3, 6, 2)),
}
KICK_PATTERNS = ("x.......x.......", "x.....x...x.....", "x...x...x...x...", "x.x.......x.....",
                 "x......x..x.....", "x.......x.x.....")
SNARE_PATTERNS = ("....x.......x...", "........x.......", "....x.......x..x")
BASS_PATTERNS = (  # (start eighth, length in eighths, interval in semitones above the root)
    ((0, 8, 0),),
    ((0, 2, 0), (2, 2, 0), (4, 2, 0), (6, 2, 0)),
    ((0, 3, 0), (3, 1, 0), (4, 3, 7), (7, 1, 0)),
    ((0, 1, 0), (1, 1, 0), (2, 1, 12), (3, 1, 0), (4, 1, 0), (5, 1, 0), (6, 1, 12), (7, 1, 7)),
    ((0, 3, 0), (3, 3, 0), (6, 2, 7)),
    ((0, 4, 0), (4, 2, 7), (6, 2, 12)),
)
STAB_PATTERNS = ((0, 4), (0, 2, 4, 6), (1, 3, 5, 7), (0, 3, 6), (0, 6))  # onsets in eighths
VOWELS = {  # formant frequencies (Hz) of an adult male voice
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (300.0, 2250.0, 3000.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 870.0, 2240.0),
}
FORMANT_BW = (80.0, 100.0, 140.0)
FORMANT_GAIN = (1.0, 0.5, 0.28)
TABLE_SIZE = 2048
SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile command (sndfile.h)
WRITE_BLOCK = 16_384  # frames per write call
# The catalog's true stems (written only when asked): a stem set in the MUSDB18-HQ layout whose
# train split holds one track per good catalog file, under the corpus folder; its marker, last.
CATALOG_STEMS_DIR = "catalog_stems"
CATALOG_STEMS_MARKER = "stems.json"
# The random stream of each group of tracks (with the seed and the track's number): fixed numbers,
# so that adding a split leaves the songs of the others as they were.
RNG_GROUPS = {"train": 0, "valid": 1, "test": 2, "catalog": 3, "bad files": 4, "catalog level": 5, "calibration": 6}


@dataclass(frozen=True)
class DemoConfig:
    """What :func:`generate` writes: track counts per split and catalog, durations in seconds."""

    seed: int = 0
    n_train: int = 24
    n_valid: int = 6
    # The calibration songs choose the thresholds: false positives cluster by song, so songs count
    # more than windows.  The test songs are what Evaluate scores (and the detector report).
    n_calibration: int = 24
    n_test: int = 12
    n_catalog: int = 40
    stem_duration_s: tuple[float, float] = (20.0, 40.0)
    catalog_duration_s: tuple[float, float] = (20.0, 60.0)
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        for name in ("n_train", "n_valid", "n_calibration", "n_test", "n_catalog"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("stem_duration_s", "catalog_duration_s"):
            low, high = getattr(self, name)
            if not 1.0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) seconds with 1 <= low <= high")
        if self.sample_rate < 8000:
            raise ValueError("sample_rate must be at least 8000 Hz")

    @classmethod
    def tiny(cls, seed: int = 0) -> "DemoConfig":
        """3/1/1/1 stem tracks (train, valid, calibration, test) of 8-12 s and 6 catalog tracks of
        8-12 s, for tests."""
        return cls(seed=seed, n_train=3, n_valid=1, n_calibration=1, n_test=1, n_catalog=6,
                   stem_duration_s=(8.0, 12.0), catalog_duration_s=(8.0, 12.0))

    def split_count(self, split: str) -> int:
        return {"train": self.n_train, "valid": self.n_valid, "calibration": self.n_calibration,
                "test": self.n_test}[split]

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True, eq=False)
class Arrangement:
    """Which source sounds where.

    ``bounds_s`` ``(S + 1,)`` section boundaries in seconds from 0 to the song's duration;
    ``states`` ``(4, S)`` OFF / QUIET / ON; ``level_db`` ``(4, S)`` section level (0 when on,
    negative when quiet, unused when off); ``fade_in_s`` / ``fade_out_s`` ``(4, S)`` fade
    lengths at the start / end of a section next to an off section (0: cut with a 5 ms ramp);
    ``vocal_gaps``: sung phrases are separated by silent gaps (False: only short breaths).
    """

    bounds_s: np.ndarray
    states: np.ndarray
    level_db: np.ndarray
    fade_in_s: np.ndarray
    fade_out_s: np.ndarray
    vocal_gaps: bool = True

    @property
    def duration_s(self) -> float:
        return float(self.bounds_s[-1])

    def section_samples(self, sample_rate: int) -> np.ndarray:
        """Section boundaries in samples ``(S + 1,)``."""
        return np.round(self.bounds_s * sample_rate).astype(np.int64)

    def gain_envelopes(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """Per-sample gain ``(4, n_samples)`` float64: 0 exactly in off sections."""
        edges = self.section_samples(sample_rate)
        edges[-1] = n_samples
        gains = np.empty((len(SOURCES), n_samples))
        for source in range(len(SOURCES)):
            gains[source] = self._envelope(source, edges, sample_rate)
        return gains

    def _envelope(self, source: int, edges: np.ndarray, rate: int) -> np.ndarray:
        n = int(edges[-1])
        db = np.zeros(n)
        off = np.zeros(n, dtype=bool)
        states, levels = self.states[source], self.level_db[source]
        for k in range(len(states)):
            a, b = int(edges[k]), int(edges[k + 1])
            if b <= a:
                continue
            if states[k] == OFF:
                off[a:b] = True
                continue
            db[a:b] = levels[k]
            prev_on = k > 0 and states[k - 1] != OFF
            if prev_on and levels[k - 1] != levels[k]:
                ramp = min(b - a, int(LEVEL_RAMP_S * rate))
                db[a:a + ramp] = levels[k - 1] + (levels[k] - levels[k - 1]) * _ramp(ramp)
            if self.fade_in_s[source, k] > 0:
                ramp = min(b - a, int(self.fade_in_s[source, k] * rate))
                db[a:a + ramp] = FADE_FLOOR_DB + (levels[k] - FADE_FLOOR_DB) * _ramp(ramp)
            if self.fade_out_s[source, k] > 0:
                ramp = min(b - a, int(self.fade_out_s[source, k] * rate))
                fade = levels[k] + (FADE_FLOOR_DB - levels[k]) * _ramp(ramp)
                db[b - ramp:b] = np.minimum(db[b - ramp:b], fade)
        gain = np.ones(n)
        varying = db != 0.0
        gain[varying] = np.power(10.0, db[varying] / 20.0)
        gain[off] = 0.0
        click = max(1, int(ANTI_CLICK_S * rate))
        for k in range(len(states)):
            a, b = int(edges[k]), int(edges[k + 1])
            if states[k] == OFF or b <= a:
                continue
            if k > 0 and states[k - 1] == OFF:
                m = min(click, b - a)
                gain[a:a + m] *= _ramp(m)
            if k + 1 < len(states) and states[k + 1] == OFF:
                m = min(click, b - a)
                gain[b - m:b] *= _ramp(m)[::-1]
        return gain


@dataclass(frozen=True, eq=False)
class SongInfo:
    """What was drawn for one song: tempo (bpm), key (pitch class, 0 = C), mode, per-stem
    gains (dB) and pans (-1 left .. 1 right), the arrangement and the sung phrases
    ``(P, 2)`` (start, end) in seconds."""

    bpm: float
    key: int
    mode: str
    gains_db: np.ndarray
    pans: np.ndarray
    arrangement: Arrangement
    vocal_phrases: np.ndarray


@dataclass(frozen=True)
class _Music:
    bpm: float
    key: int
    mode: str
    chords: np.ndarray  # (bars, 4) pitch classes of the chord tones (root, third, fifth, seventh)

    @property
    def beat_s(self) -> float:
        return 60.0 / self.bpm

    @property
    def bar_s(self) -> float:
        return 4.0 * self.beat_s

    @property
    def scale(self) -> np.ndarray:
        return (MAJOR if self.mode == "major" else MINOR) + self.key


def _ramp(n: int) -> np.ndarray:
    """``n`` values rising linearly from 0 towards 1 (0 included, 1 excluded)."""
    return np.arange(n) / max(n, 1)


def _pan_gains(pan: float) -> np.ndarray:
    """Constant-power (left, right) gains for ``pan`` in [-1, 1]."""
    angle = (np.clip(pan, -1.0, 1.0) + 1.0) * np.pi / 4.0
    return np.array([np.cos(angle), np.sin(angle)])


def _midi_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * np.power(2.0, (np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _sample_music(rng: np.random.Generator, duration_s: float) -> _Music:
    bpm = float(np.round(rng.uniform(80.0, 160.0), 1))
    key = int(rng.integers(12))
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = MAJOR if mode == "major" else MINOR
    options = PROGRESSIONS[mode]
    progression = np.array(options[rng.integers(len(options))])
    bars = int(np.ceil(duration_s / (240.0 / bpm))) + 1
    per_chord = 2 if rng.random() < 0.3 else 1
    roots = progression[(np.arange(bars) // per_chord) % len(progression)]
    degrees = roots[:, None] + np.array([0, 2, 4, 6])[None, :]
    chords = (scale[degrees % 7] + 12 * (degrees // 7) + key) % 12
    return _Music(bpm, key, mode, chords)


def _systematic_pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Boolean picks with inclusion probability ``probs`` and the least spread in their count."""
    order = rng.permutation(len(probs))
    cumulative = np.concatenate([[0.0], np.cumsum(probs[order])]) - rng.random()
    hits = np.diff(np.floor(cumulative)) > 0
    picked = np.zeros(len(probs), dtype=bool)
    picked[order] = hits
    return picked


def _off_probabilities(durations: np.ndarray, weights: np.ndarray, fraction: float) -> np.ndarray:
    """Per-section off probability ``clip(c * w, 0, 1)`` with expected off time ``fraction``."""
    target = fraction * durations.sum()
    low, high = 0.0, 1.0 / max(weights.min(), 1e-9)
    for _ in range(60):
        mid = 0.5 * (low + high)
        if (durations * np.clip(mid * weights, 0.0, 1.0)).sum() < target:
            low = mid
        else:
            high = mid
    return np.clip(high * weights, 0.0, 1.0)


def sample_arrangement(rng: np.random.Generator, duration_s: float, bar_s: float) -> Arrangement:
    """Draw sections of 2-8 bars (``bar_s`` seconds each) and each source's state per section."""
    choices = [b for b in SECTION_BARS if SECTION_SECONDS[0] <= b * bar_s <= SECTION_SECONDS[1]]
    probs = np.array([SECTION_BAR_PROBS[SECTION_BARS.index(b)] for b in choices])
    if not choices:  # a tempo far outside 80-160 bpm: sections of about 8 s
        choices, probs = [max(1, round(8.0 / bar_s))], np.ones(1)
    bounds = [0.0]
    while bounds[-1] < duration_s:
        bounds.append(bounds[-1] + choices[rng.choice(len(choices), p=probs / probs.sum())] * bar_s)
    bounds[-1] = duration_s
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2.0:  # no stub of a last section
        del bounds[-2]
    bounds_s = np.array(bounds)
    durations = np.diff(bounds_s)
    count = len(durations)
    n_src = len(SOURCES)
    states = np.full((n_src, count), ON, dtype=np.int8)
    breakdown = int(rng.integers(1, count - 1)) if count > 2 else -1
    for source in range(n_src):
        weights = np.ones(count)
        if breakdown >= 0:
            weights[breakdown] = BREAKDOWN_WEIGHT[source]
        if count > 1:
            weights[-1] = OUTRO_WEIGHT[source]
        weights[0] = INTRO_WEIGHT[source]
        probs = _off_probabilities(durations, weights, OFF_FRACTION[source])
        off = _systematic_pick(rng, probs)
        if off.all():  # every source sounds somewhere in every song
            off[np.argmax(durations)] = False
        states[source, off] = OFF
        quiet = (rng.random(count) < QUIET_PROB[source]) & (states[source] != OFF)
        states[source, quiet] = QUIET
    silent_mix = (states == OFF).all(axis=0)
    states[SOURCES.index("other"), silent_mix] = ON
    level_db = np.where(states == QUIET, -rng.uniform(*QUIET_ATTENUATION_DB, size=states.shape), 0.0)
    fade_in = np.zeros(states.shape)
    fade_out = np.zeros(states.shape)
    draws = rng.random((2, n_src, count))
    lengths = rng.uniform(1.0, 5.0, size=(2, n_src, count))
    sounding = states != OFF
    before_off = sounding & np.concatenate([~sounding[:, 1:], np.zeros((n_src, 1), bool)], axis=1)
    after_off = sounding & np.concatenate([np.zeros((n_src, 1), bool), ~sounding[:, :-1]], axis=1)
    fade_out[before_off & (draws[0] < FADE_OUT_PROB)] = 1.0
    fade_in[after_off & (draws[1] < FADE_IN_PROB)] = 1.0
    fade_out *= np.minimum(lengths[0], 0.45 * durations)
    fade_in *= np.minimum(lengths[1], 0.45 * durations)
    return Arrangement(bounds_s, states, level_db, fade_in, fade_out, vocal_gaps=True)


def silence_arrangement(duration_s: float, source_index: int, silent_from_s: float) -> Arrangement:
    """All sources on throughout, except ``source_index`` which is off from ``silent_from_s``."""
    if not 0 <= source_index < len(SOURCES):
        raise ValueError(f"source_index must be in 0..{len(SOURCES) - 1}, got {source_index}")
    if not 0.0 < silent_from_s < duration_s:
        raise ValueError(f"silent_from_s must lie inside (0, {duration_s}) s, got {silent_from_s}")
    states = np.full((len(SOURCES), 2), ON, dtype=np.int8)
    states[source_index, 1] = OFF
    zeros = np.zeros(states.shape)
    return Arrangement(np.array([0.0, silent_from_s, duration_s]), states, zeros, zeros.copy(), zeros.copy(),
                       vocal_gaps=False)


# ----------------------------------------------------------------------------------------------
# Sound generators.  Each returns float64 mono or stereo buffers of exactly ``n`` samples.


def _wavetable(amplitudes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One period of ``sum_k a_k sin(2 pi k x)`` at TABLE_SIZE points, peak 1, as float32
    (values, slope to the next point) for linear interpolation."""
    count = min(len(amplitudes), TABLE_SIZE // 2 - 1)
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    spectrum[1:count + 1] = -0.5j * TABLE_SIZE * amplitudes[:count]
    table = np.fft.irfft(spectrum, TABLE_SIZE)
    table /= max(np.abs(table).max(), 1e-9)
    return table.astype(np.float32), (np.roll(table, -1) - table).astype(np.float32)


def _oscillator(wavetable: tuple[np.ndarray, np.ndarray], position: np.ndarray) -> np.ndarray:
    """Linearly interpolated lookup at ``position`` in table points (cycles * TABLE_SIZE, >= 0); float32."""
    values, slope = wavetable
    index = position.astype(np.int64)
    frac = (position - index).astype(np.float32)
    np.bitwise_and(index, TABLE_SIZE - 1, out=index)
    out = slope.take(index)
    out *= frac
    out += values.take(index)
    return out


def _note_envelope(n_on: int, rate: int, attack_s: float, decay_s: float, sustain: float,
                   release_s: float) -> np.ndarray:
    """Attack-decay-sustain for ``n_on`` samples then a release that reaches exactly zero."""
    t = np.arange(n_on) / rate
    held = np.minimum(1.0, t / attack_s) * (sustain + (1.0 - sustain) * np.exp(-t / decay_s))
    n_rel = max(1, int(release_s * rate))
    x = np.arange(1, n_rel + 1) / n_rel
    level = held[-1] if n_on else 0.0
    return np.concatenate([held, level * np.exp(-4.0 * x) * (1.0 - x)])


def _harmonic_amplitudes(freq: float, rate: int, profile: str, tilt: float, cutoff_hz: float) -> np.ndarray:
    """Harmonic amplitudes of a tone at ``freq`` Hz, band-limited below 0.45 * rate."""
    count = max(1, int(0.45 * rate / freq))
    k = np.arange(1, count + 1, dtype=np.float64)
    if profile == "square":
        amps = np.where(k % 2 == 1, 1.0 / k, 0.08 / k)
    elif profile == "organ":
        amps = np.zeros(count)
        for harmonic, level in ((1, 1.0), (2, 0.7), (3, 0.5), (4, 0.45), (6, 0.3), (8, 0.25)):
            if harmonic <= count:
                amps[harmonic - 1] = level
    else:  # "saw" and "soft" differ by their tilt
        amps = k ** -tilt
    return amps * np.exp(-k * freq / cutoff_hz)


class _NoteRenderer:
    """Adds enveloped wavetable notes into a buffer; tables cached per MIDI pitch."""

    def __init__(self, n: int, rate: int, profile: str, tilt: float, cutoff_hz: float, detune_cents: float = 0.0):
        self.buffer = np.zeros(n)
        self.rate = rate
        self.profile, self.tilt, self.cutoff_hz = profile, tilt, cutoff_hz
        self.detune = detune_cents
        self._tables: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def table(self, midi: float) -> tuple[np.ndarray, np.ndarray]:
        if midi not in self._tables:
            freq = float(_midi_hz(midi)) * 1.01  # headroom for detuning
            amps = _harmonic_amplitudes(freq, self.rate, self.profile, self.tilt, self.cutoff_hz)
            self._tables[midi] = _wavetable(amps)
        return self._tables[midi]

    def add(self, start_s: float, length_s: float, midi: float, velocity: float, envelope: tuple,
            phase0: float) -> None:
        """Add a note held ``length_s`` s from ``start_s`` s; ``envelope`` is (attack_s, decay_s,
        sustain, release_s); ``phase0`` the start phase in cycles."""
        start = int(round(start_s * self.rate))
        n_on = max(1, int(length_s * self.rate))
        env = _note_envelope(n_on, self.rate, *envelope)
        stop = min(len(self.buffer), start + len(env))
        if stop <= start:
            return
        env = env[: stop - start]
        steps = np.arange(stop - start, dtype=np.float64)
        step = float(_midi_hz(midi)) * TABLE_SIZE / self.rate  # table points per sample
        table = self.table(midi)
        tone = _oscillator(table, steps * step + phase0 * TABLE_SIZE)
        if self.detune:
            detuned = steps * (step * 2.0 ** (self.detune / 1200.0)) + (phase0 + 0.37) * TABLE_SIZE
            tone = 0.5 * (tone + _oscillator(table, detuned))
        self.buffer[start:stop] += velocity * env * tone


def _filtered_noise(rng: np.random.Generator, n: int, rate: int, low_hz: float | None,
                    high_hz: float | None) -> np.ndarray:
    """White noise through a 2nd-order Butterworth band/high/low-pass (edges clipped to the band)."""
    noise = rng.standard_normal(n)
    nyquist = 0.5 * rate
    low = None if low_hz is None else min(low_hz, 0.8 * nyquist)
    high = None if high_hz is None or high_hz >= 0.9 * nyquist else high_hz
    if low is not None and high is not None and high > low * 1.2:
        sos = signal.butter(2, [low, high], btype="bandpass", fs=rate, output="sos")
    elif low is not None:
        sos = signal.butter(2, low, btype="highpass", fs=rate, output="sos")
    elif high is not None:
        sos = signal.butter(2, high, btype="lowpass", fs=rate, output="sos")
    else:
        return noise
    return signal.sosfilt(sos, noise)


def _one_shot(t: np.ndarray, decay_s: float) -> np.ndarray:
    """Exponential decay over ``t`` (s) tapered to exactly zero at the last sample."""
    return np.exp(-t / decay_s) * (1.0 - t / (t[-1] + 1.0 / len(t))) ** 2


def _drum_kit(rng: np.random.Generator, rate: int) -> dict[str, list[np.ndarray]]:
    """Three variants of each one-shot: kick, snare, closed and open hat, crash.

    Kick: sine swept down from 100-180 Hz to 40-62 Hz with a click; snare: a 160-260 Hz tone
    plus band-passed noise; hats and crash: high-passed noise with short / long decays.
    """
    kit: dict[str, list[np.ndarray]] = {name: [] for name in ("kick", "snare", "hat", "open", "crash")}
    f_start, f_end = rng.uniform(100.0, 180.0), rng.uniform(40.0, 62.0)
    sweep_s, kick_s = rng.uniform(0.02, 0.05), rng.uniform(0.09, 0.22)
    snare_hz, snare_s = rng.uniform(160.0, 260.0), rng.uniform(0.06, 0.16)
    hat_hz, hat_s = rng.uniform(6000.0, 9000.0), rng.uniform(0.015, 0.045)
    open_s, crash_s = rng.uniform(0.12, 0.28), rng.uniform(0.4, 0.9)
    click = int(0.004 * rate)
    for _ in range(3):
        jitter = rng.uniform(0.95, 1.05)
        t = np.arange(int(6.0 * kick_s * jitter * rate)) / rate
        freq = f_end + (f_start * jitter - f_end) * np.exp(-t / sweep_s)
        kick = np.sin(2.0 * np.pi * np.cumsum(freq) / rate) * _one_shot(t, kick_s * jitter)
        kick[:click] += 0.3 * rng.standard_normal(click) * np.exp(-t[:click] / 0.001)
        kit["kick"].append(kick)
        t = np.arange(int(6.0 * snare_s * jitter * rate)) / rate
        body = 0.6 * np.sin(2.0 * np.pi * snare_hz * jitter * t) * _one_shot(t, 0.035)
        rattle = _filtered_noise(rng, len(t), rate, 1200.0, 9000.0)
        kit["snare"].append(body + 0.45 * rattle / rattle.std() * _one_shot(t, snare_s * jitter))
        for name, decay, cut in (("hat", hat_s, hat_hz), ("open", open_s, 0.9 * hat_hz), ("crash", crash_s, 4000.0)):
            t = np.arange(int(6.0 * decay * jitter * rate)) / rate
            noise = _filtered_noise(rng, len(t), rate, cut * jitter, None)
            kit[name].append(0.3 * noise / noise.std() * _one_shot(t, decay * jitter))
    return kit


def _pattern_steps(pattern: str) -> np.ndarray:
    return np.array([i for i, c in enumerate(pattern) if c == "x"])


def _render_drums(rng: np.random.Generator, music: _Music, arrangement: Arrangement, n: int, rate: int) -> np.ndarray:
    kit = _drum_kit(rng, rate)
    step_s = music.bar_s / 16.0
    bars = len(music.chords)
    kicks = [_pattern_steps(KICK_PATTERNS[i]) for i in rng.choice(len(KICK_PATTERNS), 2, replace=False)]
    snare = _pattern_steps(SNARE_PATTERNS[rng.integers(len(SNARE_PATTERNS))])
    hat_every = 1 if (music.bpm < 110 and rng.random() < 0.6) else 2
    hats = np.arange(0, 16, hat_every)
    open_hat = rng.random() < 0.5
    section_bars = set(np.round(arrangement.bounds_s[1:-1] / music.bar_s).astype(int))
    pans = {"kick": 0.0, "snare": rng.uniform(-0.15, 0.15), "hat": rng.uniform(0.2, 0.6) * rng.choice([-1, 1]),
            "crash": rng.uniform(-0.5, 0.5)}
    pans["open"] = pans["hat"]
    hits: dict[str, list[tuple[float, float]]] = {name: [] for name in kit}
    for bar in range(bars):
        t0 = bar * music.bar_s
        fill = (bar + 1) in section_bars and rng.random() < 0.5
        for step in kicks[1 if bar % 4 == 3 else 0]:
            hits["kick"].append((t0 + step * step_s, rng.uniform(0.85, 1.0)))
        steps = np.concatenate([snare, [12, 13, 14, 15]]) if fill else snare
        for step in np.unique(steps):
            velocity = rng.uniform(0.8, 1.0) if step in snare else rng.uniform(0.4, 0.7)  # fills are softer
            hits["snare"].append((t0 + step * step_s, velocity))
        if rng.random() < 0.3:
            hits["snare"].append((t0 + rng.choice([3, 7, 11]) * step_s, rng.uniform(0.15, 0.3)))  # ghost note
        for step in hats:
            if open_hat and step == 14:
                hits["open"].append((t0 + step * step_s, rng.uniform(0.5, 0.7)))
            else:
                accent = 0.85 if step % 4 == 0 else 0.6
                hits["hat"].append((t0 + step * step_s, accent * rng.uniform(0.8, 1.0)))
        if bar == 0 or bar in section_bars:
            hits["crash"].append((t0, rng.uniform(0.6, 0.9)))
    out = np.zeros((2, n))
    for name, events in hits.items():
        mono = np.zeros(n)
        variants = kit[name]
        for i, (time_s, velocity) in enumerate(events):
            start = int(round((time_s + rng.normal(0.0, 0.003)) * rate))
            start = max(start, 0)
            shot = variants[i % len(variants)]
            stop = min(n, start + len(shot))
            if stop > start:
                mono[start:stop] += velocity * shot[: stop - start]
        out += _pan_gains(pans[name])[:, None] * mono[None, :]
    return out


def _render_bass(rng: np.random.Generator, music: _Music, n: int, rate: int) -> np.ndarray:
    renderer = _NoteRenderer(n, rate, "saw", rng.uniform(1.0, 2.0), rng.uniform(350.0, 1400.0))
    envelope = (rng.uniform(0.004, 0.012), rng.uniform(0.15, 0.6), rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.1))
    legato = rng.uniform(0.6, 0.95)
    patterns = [BASS_PATTERNS[i] for i in rng.choice(len(BASS_PATTERNS), 2, replace=False)]
    base = 28 + (music.key - 4) % 12  # tonic between E1 (MIDI 28) and D#2; roots kept in 28-43
    eighth = music.beat_s / 2.0
    for bar, chord in enumerate(music.chords):
        root = base + (chord[0] - music.key) % 12
        root = root - 12 if root > 43 else root
        for start, length, interval in patterns[1 if bar % 4 == 3 else 0]:
            held = max(length * legato, length - 0.5) * eighth  # rests of at most half an eighth
            renderer.add(bar * music.bar_s + start * eighth, held, root + interval,
                         rng.uniform(0.8, 1.0), envelope, rng.random())
    return _pan_gains(rng.uniform(-0.15, 0.15))[:, None] * renderer.buffer[None, :]


def _chord_voicing(chord: np.ndarray, low: int, voices: int) -> np.ndarray:
    """MIDI pitches of the first ``voices`` chord tones placed at or above ``low``."""
    tones = chord[:voices]
    return low + (tones - low) % 12 + np.where(np.arange(voices) >= 3, 12, 0)


def _render_other(rng: np.random.Generator, music: _Music, n: int, rate: int) -> np.ndarray:
    parts = [("pad",), ("pad", "arp"), ("stabs", "arp"), ("pad", "stabs"), ("arp",), ("stabs",)]
    chosen = parts[rng.integers(len(parts))]
    out = np.zeros((2, n))
    eighth = music.beat_s / 2.0
    for part in chosen:
        profile = ("saw", "square", "soft", "organ")[rng.integers(4)]
        tilt = rng.uniform(0.8, 1.3) if profile != "soft" else rng.uniform(1.8, 2.5)
        cutoff = rng.uniform(1500.0, 6000.0)
        low = int(rng.integers(52, 60))
        if part == "pad":
            renderer = _NoteRenderer(n, rate, profile, tilt, cutoff, detune_cents=rng.uniform(4.0, 9.0))
            envelope = (rng.uniform(0.15, 0.6), 1.0, rng.uniform(0.7, 0.9), rng.uniform(0.3, 0.8))
            voices = int(rng.integers(3, 5))
            for bar, chord in enumerate(music.chords):
                for pitch in _chord_voicing(chord, low, voices):
                    renderer.add(bar * music.bar_s, music.bar_s * 0.97, float(pitch), 0.5, envelope, rng.random())
            level, pan = 1.0, rng.uniform(-0.4, 0.4)
        elif part == "arp":
            renderer = _NoteRenderer(n, rate, profile, tilt, cutoff)
            envelope = (0.004, rng.uniform(0.12, 0.4), rng.uniform(0.0, 0.2), 0.08)
            step = eighth / 2.0 if (music.bpm < 115 and rng.random() < 0.5) else eighth
            per_bar = int(round(music.bar_s / step))
            shape = rng.integers(3)
            for bar, chord in enumerate(music.chords):
                pitches = np.concatenate([_chord_voicing(chord, low + 5, 3), _chord_voicing(chord, low + 17, 3)])
                if shape == 1:
                    pitches = np.concatenate([pitches, pitches[-2:0:-1]])
                for i in range(per_bar):
                    pitch = pitches[rng.integers(len(pitches))] if shape == 2 else pitches[i % len(pitches)]
                    renderer.add(bar * music.bar_s + i * step, step * 0.9, float(pitch), rng.uniform(0.6, 0.9),
                                 envelope, rng.random())
            level, pan = 0.8, rng.uniform(0.3, 0.7) * rng.choice([-1, 1])
        else:  # chord stabs, piano-like decay
            renderer = _NoteRenderer(n, rate, profile, tilt, cutoff)
            envelope = (0.003, rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.3), 0.15)
            onsets = STAB_PATTERNS[rng.integers(len(STAB_PATTERNS))]
            held = np.diff(np.append(onsets, onsets[0] + 8)) * eighth * 0.95  # ring until the next stab
            voices = int(rng.integers(3, 5))
            for bar, chord in enumerate(music.chords):
                for onset, length in zip(onsets, held):
                    velocity = rng.uniform(0.6, 0.9)
                    for pitch in _chord_voicing(chord, low, voices):
                        renderer.add(bar * music.bar_s + onset * eighth, length, float(pitch), velocity * 0.5,
                                     envelope, rng.random())
            level, pan = 0.9, rng.uniform(-0.6, 0.6)
        part_audio = renderer.buffer
        part_audio = level * part_audio / max(np.sqrt(np.mean(part_audio**2)), 1e-9)
        out += _pan_gains(pan)[:, None] * part_audio[None, :]
    return out


def _vocal_phrases(rng: np.random.Generator, music: _Music, duration_s: float, gaps: bool) -> np.ndarray:
    """Sung phrases ``(P, 2)`` (start, end) in seconds on the beat grid."""
    beat = music.beat_s
    phrases = []
    t = beat * float(rng.integers(0, 2)) if gaps else 0.0
    while t < duration_s:
        length = beat * float(rng.integers(4, 9)) if gaps else beat * float(rng.integers(6, 13))
        end = min(t + length, duration_s)
        phrases.append((t, end))
        if gaps:
            t = end + beat * float(rng.choice([1.0, 2.0, 3.0, 4.0], p=[0.35, 0.3, 0.2, 0.15]))
        else:
            t = end + min(0.25, 0.5 * beat)
    return np.array(phrases).reshape(-1, 2)


def _formant_banks(rate: int, scale: float, vowels: list[str]) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
    banks = []
    for vowel in vowels:
        bank = []
        for freq, width, gain in zip(VOWELS[vowel], FORMANT_BW, FORMANT_GAIN):
            freq *= scale
            if freq < 0.45 * rate:
                b, a = signal.iirpeak(freq, freq / (width * scale), fs=rate)
                bank.append((b, a, gain))
        banks.append(bank)
    return banks


def _render_vocals(rng: np.random.Generator, music: _Music, arrangement: Arrangement, n: int,
                   rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Stereo vocals ``(2, n)`` and the sung phrases ``(P, 2)`` in seconds."""
    duration_s = n / rate
    phrases = _vocal_phrases(rng, music, duration_s, arrangement.vocal_gaps)
    center = int(rng.integers(50, 68))  # MIDI: 147-392 Hz
    scale_pitches = np.array([p for p in range(center - 9, center + 10) if (p - music.key) % 12 in music.scale % 12])
    formant_scale = 1.0 + 0.18 * (center - 50) / 17.0
    vowels = list(rng.choice(list(VOWELS), 3, replace=False))
    banks = _formant_banks(rate, formant_scale, vowels)
    tilt = rng.uniform(1.2, 2.0)
    f0_max = float(_midi_hz(scale_pitches.max())) * 1.06
    glottal = _wavetable(np.arange(1, max(2, int(0.45 * rate / f0_max)) + 1, dtype=np.float64) ** -tilt)
    vib_rate, vib_depth = rng.uniform(4.5, 6.5), rng.uniform(25.0, 60.0)  # Hz, cents
    glide = np.exp(-1.0 / (rng.uniform(0.03, 0.07) * rate))
    breathiness = rng.uniform(0.03, 0.08)
    excitation = np.zeros((len(vowels), n))
    extra = np.zeros(n)  # consonants and breaths, not formant-filtered
    gate = np.zeros(n, dtype=bool)
    fricative = _filtered_noise(rng, int(0.2 * rate), rate, 3500.0, None)
    fricative /= fricative.std()
    breath = _filtered_noise(rng, int(0.5 * rate), rate, 500.0, 2500.0)
    breath /= breath.std()
    eighth = music.beat_s / 2.0
    pitch_index = int(np.argmin(np.abs(scale_pitches - center)))
    for start_s, end_s in phrases:
        a, b = int(round(start_s * rate)), int(round(end_s * rate))
        release = int(rng.uniform(0.06, 0.12) * rate)
        stop = min(n, b + release)
        if stop - a < int(0.05 * rate):
            continue
        # syllables: lengths in eighths, the last one held to the end of the phrase
        bounds = [a]
        while bounds[-1] < b:
            bounds.append(min(b, bounds[-1] + int(eighth * rng.choice([1, 1, 1, 2, 2, 3]) * rate)))
        bounds = np.array(bounds)
        count = len(bounds) - 1
        steps = rng.choice([-2, -1, -1, 0, 1, 1, 2], size=count)
        notes = np.empty(count)
        for i, step in enumerate(steps):
            pitch_index = int(np.clip(pitch_index + step, 0, len(scale_pitches) - 1))
            notes[i] = scale_pitches[pitch_index]
        length = stop - a
        syllable = np.repeat(np.arange(count), np.diff(bounds))
        syllable = np.concatenate([syllable, np.full(length - len(syllable), count - 1)])
        log_f0 = np.log(_midi_hz(notes))[syllable]
        zi = signal.lfilter_zi([1.0 - glide], [1.0, -glide]) * log_f0[0]
        log_f0 = signal.lfilter([1.0 - glide], [1.0, -glide], log_f0, zi=zi)[0]
        t = np.arange(length) / rate
        since = t - (bounds[syllable] - a) / rate
        vibrato = vib_depth * np.minimum(1.0, since / 0.3) * np.sin(2.0 * np.pi * vib_rate * t + rng.random() * 6.28)
        f0 = np.exp(log_f0) * np.power(2.0, vibrato / 1200.0)
        tone = _oscillator(glottal, (np.cumsum(f0) / rate + rng.random()) * TABLE_SIZE)
        tone += breathiness * rng.standard_normal(length)
        # amplitude: rise at each syllable, a dip before the next one, release at the phrase end
        syl_len = (np.diff(bounds) / rate)[syllable]
        to_end = syl_len - since
        dip = rng.uniform(0.1, 0.35, size=count)[syllable]
        env = np.minimum(1.0, since / 0.025)
        env = dip + (1.0 - dip) * env * np.clip(to_end / 0.04, 0.0, 1.0)
        env *= rng.uniform(0.7, 1.0, size=count)[syllable]
        env[: int(0.03 * rate)] *= _ramp(min(length, int(0.03 * rate)))
        tail = length - (b - a)
        if tail > 0:
            env[b - a:] *= (1.0 - _ramp(tail)) ** 2
        env *= np.power(2.0, np.linspace(0.0, rng.uniform(-0.5, 0.3), length))  # phrase contour
        vowel_of = rng.integers(len(vowels), size=count)[syllable]
        weights = np.zeros((len(vowels), length))
        weights[vowel_of, np.arange(length)] = 1.0
        weights = _moving_average(weights, max(1, int(0.03 * rate)))
        excitation[:, a:stop] += weights * (env * tone)[None, :]
        # consonants: fricative noise at some syllable onsets
        for i in np.flatnonzero(rng.random(count) < 0.35):
            size = int(rng.uniform(0.04, 0.09) * rate)
            onset = max(0, bounds[i] - size // 2)
            size = min(size, n - onset)
            if size > 0:
                offset = int(rng.integers(0, len(fricative) - size))
                extra[onset:onset + size] += 0.25 * fricative[offset:offset + size] * np.hanning(size)
        gate[a:stop] = True
        # a breath before the phrase when the gap leaves room for it
        size = int(rng.uniform(0.2, 0.4) * rate)
        onset = a - size - int(0.05 * rate)
        if arrangement.vocal_gaps and onset > 0 and not gate[onset] and rng.random() < 0.6:
            extra[onset:onset + size] += rng.uniform(0.05, 0.12) * breath[:size] * np.hanning(size)
            gate[onset:onset + size] = True
    voiced = np.zeros(n)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], gate, [False]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):  # filter only where the voice sounds
        for v, bank in enumerate(banks):
            for b_coef, a_coef, gain in bank:
                voiced[a:b] += gain * signal.lfilter(b_coef, a_coef, excitation[v, a:b])
    if gate.any():  # consonants and breaths relative to the voiced level
        voiced += extra * np.sqrt(np.mean(voiced[gate] ** 2))
    mono = voiced * gate
    return _pan_gains(rng.uniform(-0.1, 0.1))[:, None] * mono[None, :], phrases


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of ``width`` samples along the last axis (same length, edges held)."""
    pad = [(0, 0)] * (x.ndim - 1) + [(width // 2, width - 1 - width // 2)]
    padded = np.pad(x, pad, mode="edge")
    cumulative = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(padded, axis=-1)], axis=-1)
    return (cumulative[..., width:] - cumulative[..., :-width]) / width


def _active_rms(audio: np.ndarray) -> float:
    """RMS of ``(channels, samples)`` over the samples where any channel is non-zero (0 if none)."""
    active = np.count_nonzero(np.any(audio != 0.0, axis=0))
    return float(np.sqrt(np.einsum("ij,ij->", audio, audio) / (audio.shape[0] * active))) if active else 0.0


def synthesize_song(rng: np.random.Generator, duration_s: float, sample_rate: int = SAMPLE_RATE,
                    arrangement: Arrangement | None = None,
                    gain_spread_db: float = GAIN_SPREAD_DB) -> tuple[np.ndarray, SongInfo]:
    """Synthesise one song of ``duration_s`` seconds: stems float32 ``(4, 2, samples)`` and its info.

    ``arrangement`` fixes which source sounds where (its duration must equal ``duration_s``);
    by default one is drawn.  The music (tempo, key, parts, timbres) comes from the same
    draws either way, so the same ``rng`` state with another arrangement changes only that.
    Per-stem gains are drawn uniformly over ``gain_spread_db`` dB around each stem's level.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    n = int(round(duration_s * sample_rate))
    music_rng, arrange_rng, mix_rng, drums_rng, bass_rng, other_rng, vocals_rng = rng.spawn(7)
    music = _sample_music(music_rng, duration_s)
    if arrangement is None:
        arrangement = sample_arrangement(arrange_rng, duration_s, music.bar_s)
    elif abs(arrangement.duration_s - duration_s) > 1e-9:
        raise ValueError(f"arrangement lasts {arrangement.duration_s} s, the song {duration_s} s")
    vocals, phrases = _render_vocals(vocals_rng, music, arrangement, n, sample_rate)
    raw = [_render_drums(drums_rng, music, arrangement, n, sample_rate), _render_bass(bass_rng, music, n, sample_rate),
           _render_other(other_rng, music, n, sample_rate), vocals]
    gains_db = STEM_LEVEL_DB + mix_rng.uniform(-0.5, 0.5, size=len(SOURCES)) * gain_spread_db
    pans = np.array([mix_rng.uniform(-0.2, 0.2), mix_rng.uniform(-0.1, 0.1), mix_rng.uniform(-0.4, 0.4),
                     mix_rng.uniform(-0.1, 0.1)])
    envelopes = arrangement.gain_envelopes(n, sample_rate)
    stems = np.empty((len(SOURCES), 2, n), dtype=np.float32)
    for i, audio in enumerate(raw):
        scale = STEM_RMS * 10.0 ** (gains_db[i] / 20.0) / max(_active_rms(audio), 1e-12)
        stems[i] = audio * (_pan_gains(pans[i]) * np.sqrt(2.0) * scale)[:, None]
        stems[i] *= envelopes[i][None, :]
    info = SongInfo(music.bpm, music.key, music.mode, gains_db, pans, arrangement, phrases)
    return stems, info


def song_with_silence(rng: np.random.Generator, duration_s: float, sample_rate: int, source_index: int,
                      silent_from_s: float) -> tuple[np.ndarray, SongInfo]:
    """A song where every source sounds throughout, except ``source_index`` which sounds until
    ``silent_from_s`` seconds and is exactly zero from sample ``round(silent_from_s * rate)`` on.

    Vocals here sing without gaps (only short breaths) and the stem gains spread over 4 dB
    only, so every source is present (``V_i`` above -30 dB) on every window where it sounds.
    """
    return synthesize_song(rng, duration_s, sample_rate, silence_arrangement(duration_s, source_index, silent_from_s),
                           gain_spread_db=4.0)


def mix(stems: np.ndarray) -> np.ndarray:
    """The mixture ``drums + bass + other + vocals`` summed left to right in float32."""
    stems = stems.astype(np.float32, copy=False)
    total = stems[0].copy()
    for stem in stems[1:]:
        total = total + stem
    return total


# ----------------------------------------------------------------------------------------------
# Writing the corpus.


def _track_rng(seed: int, group: int, index: int) -> np.random.Generator:
    """Independent generator per (seed, group, track): order and parallelism do not matter."""
    return np.random.default_rng(np.random.SeedSequence([seed, group, index]))


def _duration(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.round(rng.uniform(*bounds), 2))


def catalog_variant(index: int) -> tuple[tuple[str, str, str], int, int]:
    """(format, sample rate, channels) of catalog track ``index``.

    Any 5 consecutive tracks hold every format, any 3 every rate; tracks 0..5 hold both
    channel counts.
    """
    fmt = CATALOG_FORMATS[index % len(CATALOG_FORMATS)]
    rate = CATALOG_RATES[index % len(CATALOG_RATES)]
    channels = CATALOG_CHANNELS[(index % 2) ^ ((index // 12) % 2)]
    return fmt, rate, channels


def catalog_relpath(index: int) -> str:
    """Posix path of catalog track ``index`` relative to the catalog folder."""
    (ext, _, _), _, _ = catalog_variant(index)
    artist = "abcde"[index % 5]
    album = 1 + (index // 5) % 2
    title = f"{index:03d} {UNICODE_TITLE}" if index == 1 else f"track_{index:03d}"
    return f"artist_{artist}/album_{album}/{title}.{ext}"


def _write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str, subtype: str) -> None:
    """Write ``(channels, samples)`` atomically with an explicit format (temporary names lack suffixes);
    ``fmt = "AAC"`` writes AAC in an M4A container with PyAV (:mod:`pipeline.audio.encode`).

    Float WAV files get no PEAK chunk: libsndfile stamps it with the current time, and Ogg
    files get a fixed stream serial number (:mod:`pipeline.audio.ogg`) instead of libsndfile's
    random one: either would make re-runs differ byte-wise, and with them the catalog's
    checksums and track ids.  Audio goes in blocks of WRITE_BLOCK frames: one
    large write makes libvorbis overflow the stack (libsndfile issue #1095).
    """
    if fmt == "AAC":
        with atomic_path(path) as tmp:
            encode_audio(tmp, [audio], rate, "aac", "ipod")
        return
    frames = np.ascontiguousarray(audio.T)
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", rate, audio.shape[0], subtype=subtype, format=fmt) as fh:
            if fmt in ("WAV", "WAVEX") and subtype in ("FLOAT", "DOUBLE"):
                sf._snd.sf_command(fh._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
            for start in range(0, len(frames), WRITE_BLOCK):
                fh.write(frames[start:start + WRITE_BLOCK])
        if fmt == "OGG":  # libsndfile's serial number is random; the file name's CRC-32 is not
            tmp = Path(tmp)
            tmp.write_bytes(with_stream_serial(tmp.read_bytes(), zlib.crc32(path.name.encode())))


def _make_stem_track(out: str, split: str, index: int, seed: int, bounds: tuple[float, float], rate: int) -> dict:
    rng = _track_rng(seed, RNG_GROUPS[split], index)
    duration = _duration(rng, bounds)
    stems, info = synthesize_song(rng, duration, rate)
    peak_target = rng.uniform(0.5, 0.9)
    stems = (stems * (peak_target / max(float(np.abs(mix(stems)).max()), 1e-9))).astype(np.float32)
    name = f"demo-{split}-{index:03d}"
    folder = Path(out) / "stems" / split / name
    for part, audio in (("mixture", mix(stems)), *zip(SOURCES, stems)):
        _write_audio(folder / f"{part}.wav", audio, rate, "WAV", "FLOAT")
    return {"split": split, "name": name, "duration_s": stems.shape[-1] / rate, "bpm": info.bpm}


def catalog_stems(config: DemoConfig, index: int) -> tuple[np.ndarray, SongInfo]:
    """The stems ``(4, 2, samples)`` at ``config.sample_rate`` of catalog track ``index``, before
    the level scaling applied when it was written (relative volumes do not depend on it)."""
    rng = _track_rng(config.seed, RNG_GROUPS["catalog"], index)
    return synthesize_song(rng, _duration(rng, config.catalog_duration_s), config.sample_rate)


def catalog_stem_name(relpath: str) -> str:
    """The track folder name, in the catalog stem set, of the catalog file at ``relpath``."""
    return PurePosixPath(relpath).with_suffix("").as_posix().replace("/", "-")


def _write_catalog_stem_track(folder: Path, stems: np.ndarray, rate: int) -> None:
    """``mixture.wav`` (the sum) and one wav per source of ``stems`` ``(4, channels, samples)``:
    16-bit PCM (as MUSDB18-HQ), or float where a part would clip."""
    parts = (("mixture", mix(stems)), *zip(SOURCES, stems))
    subtype = "PCM_16" if max(float(np.abs(audio).max()) for _, audio in parts) < 1.0 else "FLOAT"
    for part, audio in parts:
        _write_audio(folder / f"{part}.wav", audio, rate, "WAV", subtype)


def _make_catalog_track(out: str, index: int, config: DemoConfig, write_file: bool = True,
                        write_stems: bool = False) -> dict:
    """Catalog track ``index``: its file and truth rows (``write_file``) and its true stems in the
    catalog stem set (``write_stems``: at the file's rate, channels and level)."""
    stems, info = catalog_stems(config, index)
    rng = _track_rng(config.seed, RNG_GROUPS["catalog level"], index)  # level of the written file
    rate = config.sample_rate
    (ext, fmt, subtype), file_rate, channels = catalog_variant(index)
    mixture = mix(stems)
    converted = match_channels(resample(mixture, rate, file_rate), channels)
    peak_target = rng.uniform(0.35, 0.85 if fmt in LOSSY_FORMATS else 0.95)
    gain = peak_target / max(float(np.abs(converted).max()), 1e-9)
    relpath = catalog_relpath(index)
    row = {"file": relpath, "duration_s": stems.shape[-1] / rate, "rate": file_rate, "channels": channels,
           "format": ext, "bpm": info.bpm, "stem_track": catalog_stem_name(relpath)}
    if write_stems:
        file_stems = np.stack([match_channels(resample(stem, rate, file_rate), channels) for stem in stems])
        _write_catalog_stem_track(Path(out) / CATALOG_STEMS_DIR / "train" / row["stem_track"],
                                  (file_stems * np.float32(gain)).astype(np.float32), file_rate)
    if not write_file:
        return row
    _write_audio(Path(out) / "catalog" / relpath, (converted * gain).astype(np.float32), file_rate, fmt, subtype)
    volumes = relative_volumes((stems * np.float32(gain)).astype(np.float32), rate)
    count = volumes.shape[1]
    truth = pd.DataFrame({"file": relpath, "window": np.arange(count, dtype=np.int32),
                          "start_s": window_start_s(np.arange(count)).astype(np.float64)})
    for i, name in enumerate(SOURCES):
        truth[f"V_{name}"] = volumes[i].astype(np.float32)
    return {**row, "truth": truth}


def _flac_audio_offset(data: bytes) -> int:
    """Byte offset where a FLAC stream's first audio frame starts (after its metadata blocks)."""
    if data[:4] != b"fLaC":
        raise ValueError("not a FLAC stream")
    offset = 4
    while True:
        header = data[offset]
        length = int.from_bytes(data[offset + 1:offset + 4], "big")
        offset += 4 + length
        if header & 0x80:
            return offset


def _write_bad_files(out: Path, rate: int) -> list[str]:
    """Empty wav, truncated flac (metadata intact, audio cut inside its first frame), text as mp3."""
    bad = out / "catalog" / "bad"
    with atomic_path(bad / BAD_FILES[0]) as tmp:
        tmp.touch()
    rng = _track_rng(0, RNG_GROUPS["bad files"], 0)
    stems, _ = synthesize_song(rng, 3.0, rate)
    audio = mix(stems)
    audio = 0.8 * audio / max(float(np.abs(audio).max()), 1e-9)
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, rate, format="FLAC", subtype="PCM_16")
    data = buffer.getvalue()
    with atomic_path(bad / BAD_FILES[1]) as tmp:
        tmp.write_bytes(data[: _flac_audio_offset(data) + 64])
    with atomic_path(bad / BAD_FILES[2]) as tmp:
        tmp.write_text("This is not an MP3 file.\nIt is a text file that a catalog may hold by mistake.\n")
    return [f"bad/{name}" for name in BAD_FILES]


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """Delete files under ``root`` that this run did not write, then empty folders."""
    if not root.exists():
        return
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_file() and path not in keep and not is_temporary(path):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def existing_corpus(out: str | os.PathLike, config: DemoConfig) -> dict[str, Any] | None:
    """The summary of a complete corpus that this generator version wrote under ``out`` with
    ``config``, or None.  ``demo.json`` is written last, so its presence with the same version
    and config, and every file it lists still there, mean the corpus is complete."""
    out = Path(out)
    try:
        summary = json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("generator_version") != GENERATOR_VERSION or summary.get("config") != config.to_dict():
        return None
    expected = [out / "catalog_truth.parquet"]
    expected += [out / "stems" / split / name / f"{part}.wav" for split, info in summary["splits"].items()
                 for name in info["track_durations_s"] for part in ("mixture", *SOURCES)]
    expected += [out / "catalog" / name for name in (*summary["catalog"]["files"], *summary["catalog"]["bad_files"])]
    return summary if all(path.is_file() for path in expected) else None


def existing_catalog_stems(out: str | os.PathLike, config: DemoConfig) -> bool:
    """Whether ``out`` holds the complete catalog stem set of ``config`` (its marker, written
    last, names this generator version, config and every track, and their files are there)."""
    folder = Path(out) / CATALOG_STEMS_DIR
    try:
        marker = json.loads((folder / CATALOG_STEMS_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("generator_version") != GENERATOR_VERSION or marker.get("config") != config.to_dict():
        return False
    return all((folder / "train" / name / f"{part}.wav").is_file()
               for name in marker.get("tracks", []) for part in ("mixture", *SOURCES))


def _run_jobs(function, jobs: list[tuple], workers: int, **options) -> list:
    """``[function(*job, **options) for job in jobs]``, in ``workers`` spawned processes if > 1."""
    if workers <= 1:
        return [function(*job, **options) for job in jobs]
    # spawn, not fork: the caller may hold threads (torch, luigi) that fork would copy mid-state
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [future.result() for future in [pool.submit(function, *job, **options) for job in jobs]]


def write_catalog_stems(out: str | os.PathLike, config: DemoConfig, workers: int = 1) -> list[str]:
    """Write the catalog's true stems of ``config`` under ``out/catalog_stems/train/`` (one track a
    catalog file: :func:`catalog_stem_name`; each file's rate, channels and level, so that its
    mixture is the catalog file before encoding) and the marker last; tracks of an earlier
    config are removed.  The pipeline reads them only when asked (``[silentmine] catalog_stems``).
    Returns the track names."""
    out = Path(out)
    rows = _run_jobs(_make_catalog_track, [(str(out), i, config) for i in range(config.n_catalog)], workers,
                     write_file=False, write_stems=True)
    return _finish_catalog_stems(out, config, [row["stem_track"] for row in rows])


def _finish_catalog_stems(out: Path, config: DemoConfig, names: list[str]) -> list[str]:
    """Remove the catalog stem tracks that are not ``names``, then write the marker."""
    folder = out / CATALOG_STEMS_DIR
    _remove_stale(folder / "train", {folder / "train" / name / f"{part}.wav" for name in names
                                     for part in ("mixture", *SOURCES)})
    write_json_atomic(folder / CATALOG_STEMS_MARKER, {"generator_version": GENERATOR_VERSION,
                                                       "config": config.to_dict(), "tracks": names})
    return names


def generate(out: str | os.PathLike, config: DemoConfig = DemoConfig(), workers: int = 1,
             force: bool = False, catalog_stems: bool = False) -> dict[str, Any]:
    """Write the demo corpus under ``out`` and return the summary also written to ``demo.json``.

    Layout: ``stems/{train,valid,calibration,test}/demo-<split>-NNN/{mixture,drums,bass,other,vocals}.wav``
    (float32, mixture = sum of stems), ``catalog/`` (mixtures in wav/flac/ogg/mp3 at 22.05 /
    44.1 / 48 kHz, mono and stereo, plus ``catalog/bad/``), ``catalog_truth.parquet`` (one row
    per grid window of every good catalog file: ``file, window, start_s, V_<source>`` in dB),
    ``demo.json``.  Every file is written atomically; re-running rewrites identical bytes
    (:func:`_write_audio`) and removes files of an earlier run that this config does not
    produce.  ``workers`` > 1 synthesises tracks in that many processes; the output does not
    depend on it.  A complete corpus of the same config already under ``out``
    (:func:`existing_corpus`) is kept as it is, unless ``force``: corpora written before Ogg
    serial numbers were fixed keep their (random) ones, hence their track ids.

    ``catalog_stems``: also the catalog's true stems (:func:`write_catalog_stems`), written with
    the catalog (or added to a complete corpus that lacks them).
    """
    if not force and (summary := existing_corpus(out, config)) is not None:
        if catalog_stems and not existing_catalog_stems(out, config):
            write_catalog_stems(out, config, workers)
        return summary
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem_jobs = [(str(out), split, i, config.seed, config.stem_duration_s, config.sample_rate)
                 for split in SPLITS for i in range(config.split_count(split))]
    catalog_jobs = [(str(out), i, config) for i in range(config.n_catalog)]
    stem_rows = _run_jobs(_make_stem_track, stem_jobs, workers)
    catalog_rows = _run_jobs(_make_catalog_track, catalog_jobs, workers, write_stems=catalog_stems)
    (out / CATALOG_STEMS_DIR / CATALOG_STEMS_MARKER).unlink(missing_ok=True)  # no longer true, or written again
    if catalog_stems:
        _finish_catalog_stems(out, config, [row["stem_track"] for row in catalog_rows])
    bad_files = _write_bad_files(out, config.sample_rate)
    truth = pd.concat([row.pop("truth") for row in catalog_rows], ignore_index=True) if catalog_rows else \
        pd.DataFrame({"file": pd.Series(dtype=str), "window": pd.Series(dtype=np.int32),
                      "start_s": pd.Series(dtype=np.float64),
                      **{f"V_{name}": pd.Series(dtype=np.float32) for name in SOURCES}})
    write_parquet_atomic(truth, out / "catalog_truth.parquet")
    keep = {out / "stems" / row["split"] / row["name"] / f"{part}.wav" for row in stem_rows
            for part in ("mixture", *SOURCES)}
    keep |= {out / "catalog" / row["file"] for row in catalog_rows}
    keep |= {out / "catalog" / name for name in bad_files}
    _remove_stale(out / "stems", keep)
    _remove_stale(out / "catalog", keep)
    splits = {}
    for split in SPLITS:
        rows = [row for row in stem_rows if row["split"] == split]
        splits[split] = {"tracks": len(rows), "duration_s": round(sum(r["duration_s"] for r in rows), 3),
                         "track_durations_s": {r["name"]: round(r["duration_s"], 3) for r in rows}}
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": config.to_dict(),
        "splits": splits,
        "catalog": {
            "tracks": len(catalog_rows),
            "duration_s": round(sum(r["duration_s"] for r in catalog_rows), 3),
            "files": {r["file"]: {"duration_s": round(r["duration_s"], 3), "format": r["format"],
                                  "sample_rate": r["rate"], "channels": r["channels"]} for r in catalog_rows},
            "bad_files": bad_files,
            "truth_rows": int(len(truth)),
        },
        "total_duration_s": round(sum(r["duration_s"] for r in stem_rows + catalog_rows), 3),
    }
    write_json_atomic(out / "demo.json", summary)
    return summary
