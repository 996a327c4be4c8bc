"""Noise-like stem tracks and stem sets in the MUSDB18-HQ layout, written in-process (the conftest
fixtures' stem sets and the separation tests' are made of them), and noise excerpts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.sources import SOURCES

RATE = 44_100  # Hz, the stem sets' rate unless a test asks for another


def stem_track(folder: Path, rng: np.random.Generator, seconds: float, rate: int = RATE,
               silent: dict[int, tuple[float, float]] | None = None) -> np.ndarray:
    """Write ``<folder>/{mixture,drums,bass,other,vocals}.wav`` of noise-like stems; return stems."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    stems = np.stack([
        rng.standard_normal((2, n)) * 0.1 * (np.sin(2 * np.pi * 2 * t) > 0.5),  # pulses
        np.stack([0.2 * np.sin(2 * np.pi * 55 * t)] * 2),  # bass tone
        rng.standard_normal((2, n)) * 0.05,  # broadband "other"
        np.stack([0.1 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 5 * t))] * 2),  # voice-ish
    ]).astype(np.float32)
    for index, (start, stop) in (silent or {}).items():
        stems[index, :, int(start * rate): int(stop * rate)] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(SOURCES, stems):
        sf.write(folder / f"{name}.wav", stem.T, rate, subtype="FLOAT")
    sf.write(folder / "mixture.wav", stems.sum(0).T, rate, subtype="FLOAT")
    return stems


def write_stem_set(root: Path, splits: dict[str, int], seconds: float = 2.0, rate: int = RATE, seed: int = 0,
                   silent: tuple[tuple[str, int, str], ...] = ()) -> Path:
    """A stem set in the MUSDB18-HQ layout, ``<root>/<split>/<split>-<kk>/``, tracks made by
    :func:`stem_track`; ``silent`` lists ``(split, track number, source)`` stems that
    are digital silence over the whole track."""
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for k in range(count):
            mute = {SOURCES.index(name): (0.0, seconds) for s, j, name in silent if (s, j) == (split, k)}
            stem_track(root / split / f"{split}-{k:02d}", rng, seconds, rate, silent=mute)
    return root


def noise(channels: int, seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Uniform noise in [-0.3, 0.3), shape (channels, seconds * rate samples), float32."""
    return np.random.default_rng(seed).uniform(-0.3, 0.3, (channels, int(seconds * rate))).astype(np.float32)
