"""Features throughput: seconds of audio per wall second, and the stage's cost over bare Kymatio.

    .venv/bin/python benchmarks/features.py [--seconds 120] [--tracks 2] [--threads 2]

Both are measured in this run on the same audio: "bare" is Kymatio's Scattering1D (torch
frontend, J=8, Q=8, T=256) applied to each already-16 kHz mono track in one call, filter
bank built beforehand; "stage" is what the Features stage does per track (decode a 44.1 kHz
stereo wav, downmix, resample to 16 kHz, chunked scattering, log, write the shard).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each track")
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from kymatio.torch import Scattering1D

    from pipeline import audio
    from pipeline.featurize import featurize
    from pipeline.features import SCATTERING
    from pipeline.sources import FEATURE_RATE

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths, mono = [], []
        for i in range(args.tracks):
            n = int(args.seconds * 44100)
            t = np.arange(n) / 44100
            x = 0.1 * rng.standard_normal((n, 2)) + 0.3 * np.sin(2 * np.pi * 220 * (1 + i) * t)[:, None]
            path = Path(tmp) / f"track{i}.wav"
            sf.write(path, x.astype(np.float32), 44100, subtype="PCM_16")
            paths.append(path)
            mono.append(audio.load(path, sample_rate=FEATURE_RATE, mono=True)[0][0])
        total_s = args.tracks * args.seconds

        scatterings = [Scattering1D(shape=len(m), **SCATTERING) for m in mono]  # built outside the timing
        started = time.perf_counter()
        with torch.inference_mode():
            for scattering, signal in zip(scatterings, mono):
                scattering(torch.from_numpy(signal))
        bare = time.perf_counter() - started

        items = [(f"t{i}", str(p), (lambda p=p: audio.load(p, sample_rate=FEATURE_RATE, mono=True)[0][0]))
                 for i, p in enumerate(paths)]
        featurize(items[:1], Path(tmp) / "warmup.npy")  # builds the cached filter banks once per process
        started = time.perf_counter()
        featurize(items, Path(tmp) / "shard.npy", total=len(items))
        stage = time.perf_counter() - started

    print(f"audio: {args.tracks} tracks x {args.seconds:.0f} s, {args.threads} threads")
    print(f"bare kymatio : {total_s / bare:8.1f} s of audio per s ({bare:.2f} s)")
    print(f"stage        : {total_s / stage:8.1f} s of audio per s ({stage:.2f} s)")
    print(f"stage / bare : {stage / bare:8.2f}x")


if __name__ == "__main__":
    main()
