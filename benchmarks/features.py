"""Features throughput: seconds of audio per wall second, and the stage's cost over bare Kymatio.

    .venv/bin/python benchmarks/features.py [--seconds 120] [--tracks 2] [--threads 2] [--repeats 3] [--smoke]

Both are measured in this run on the same audio.  "stage" is what the Features stage does
per catalog shard (``pipeline.features.featurize.build_features_shard``): decode a 44.1 kHz
stereo wav in blocks, downmix and resample to 16 kHz (``pipeline.audio.io.stream``), chunked
scattering and log (``pipeline.features.scattering.FeatureExtractor.stream``), one float16
shard (``pipeline.features.store``).
"bare" is Kymatio's ``Scattering1D`` (torch frontend, J=8, Q=8, T=256) applied to each
already-16 kHz mono track in one call, filter bank built beforehand for that length.  The
two alternate ``--repeats`` times and medians are compared, so a busy machine slows both
alike.  Also printed: Kymatio's numpy frontend, the stage's peak memory (before any bare
object exists), the float16 storage error and the chunked-vs-whole feature difference.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from _common import figure, parse_args

SMOKE = {"seconds": 4.0, "tracks": 1, "repeats": 1, "threads": 1}


def music_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Stereo float32 ``(samples, 2)``: noise bursts, a gated chord and a bass line."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    bursts = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2.1 * t) > 0.6) * 0.15
    chord = sum(0.05 * np.sin(2 * np.pi * f * (1 + 0.1 * seed) * t) for f in (262.0, 330.0, 392.0)) * (t % 4 < 2.5)
    mono = bursts + chord + 0.2 * np.sin(2 * np.pi * 55.0 * t)
    return np.stack([mono, 0.8 * mono + 0.02 * rng.standard_normal(t.size)], axis=1).astype(np.float32)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each track (s)")
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-numpy", action="store_true", help="do not time Kymatio's numpy frontend")
    args = parse_args(parser, SMOKE)
    torch.set_num_threads(args.threads)

    from pipeline.audio import io as audio
    from pipeline.features.featurize import build_features_shard
    from pipeline.features.scattering import SCATTERING, extract_features, log_compress, n_feature_frames, raw_to_layout
    from pipeline.features.store import FeatureShard
    from pipeline.sources import FEATURE_RATE

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.tracks):
            paths.append(Path(tmp) / f"track{i}.wav")
            sf.write(paths[-1], music_like(args.seconds, 44_100, i), 44_100, subtype="PCM_16")
        shard = pd.DataFrame({"track_id": [f"t{i}" for i in range(len(paths))], "path": [str(p) for p in paths]})
        total_s = args.tracks * args.seconds
        build_features_shard(shard[:1], Path(tmp) / "warmup.npy")  # builds the cached filter banks once
        started = time.perf_counter()
        build_features_shard(shard, Path(tmp) / "shard.npy")
        first_stage = time.perf_counter() - started
        stage_rss = peak_rss_mib()

        from kymatio.torch import Scattering1D

        mono = [audio.load(p, sample_rate=FEATURE_RATE, mono=True)[0][0] for p in paths]
        started = time.perf_counter()
        scatterings = [Scattering1D(shape=len(m), **SCATTERING) for m in mono]
        build = time.perf_counter() - started

        def bare() -> None:
            with torch.inference_mode():
                for scattering, signal in zip(scatterings, mono):
                    scattering(torch.from_numpy(signal))

        bare()
        stage_s, bare_s = [first_stage], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            bare()
            bare_s.append(time.perf_counter() - started)
            if repeat + 1 < args.repeats:
                started = time.perf_counter()
                build_features_shard(shard, Path(tmp) / "shard.npy")
                stage_s.append(time.perf_counter() - started)
        stage, plain = statistics.median(stage_s), statistics.median(bare_s)

        print(f"audio: {args.tracks} tracks x {args.seconds:.0f} s of 44.1 kHz stereo, {args.threads} threads, "
              f"median of {args.repeats}")
        figure("bare kymatio.torch", total_s / plain, "s of audio per s",
               f"{plain:.2f} s; best {min(bare_s):.2f} s; filter banks built beforehand in {build:.1f} s")
        figure("features stage", total_s / stage, "s of audio per s", f"{stage:.2f} s; best {min(stage_s):.2f} s")
        figure("stage time / bare time", stage / plain, "x", f"best vs best {min(stage_s) / min(bare_s):.2f}x",
               digits=2)
        figure("stage peak resident memory", stage_rss, "MiB", "whole process, before any bare object", digits=0)

        if not args.skip_numpy:
            from kymatio.numpy import Scattering1D as NumpyScattering1D

            numpy_bare = NumpyScattering1D(shape=len(mono[0]), **SCATTERING)
            started = time.perf_counter()
            numpy_bare(mono[0])
            figure("bare kymatio.numpy (float64)", args.seconds / (time.perf_counter() - started),
                   "s of audio per s", "one track, for comparison")

        stored = FeatureShard(Path(tmp) / "shard.npy")["t0"]
        feats = extract_features(mono[0])
        figure("float16 shard max |error|", np.abs(stored - feats).max(), "log1p units",
               f"on features in 0..{feats.max():.1f}", digits=4)
        figure("float16 shard size", stored.shape[-1] * stored.shape[0] * stored.shape[1] * 2 / args.seconds / 1e3,
               "kB per s of audio")
        whole = raw_to_layout(scatterings[0](torch.from_numpy(mono[0])).numpy())
        reference = whole[..., :n_feature_frames(len(mono[0]))]
        inner = slice(32, -32)  # bare Kymatio reflects the signal at its ends, the stage zero-extends it
        error = np.abs(log_compress(reference) - feats)[..., inner].max()
        figure(
            "chunked features vs bare whole-signal transform max |error|",
            error,
            "log1p units",
            "away from the ends",
            digits=4,
        )


if __name__ == "__main__":
    main()
