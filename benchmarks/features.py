"""Features throughput: seconds of audio per wall second, and the stage's cost over bare Kymatio.

    .venv/bin/python benchmarks/features.py [--seconds 120] [--tracks 2] [--threads 2] [--repeats 3]

Both are measured in this run on the same audio.  "stage" is what the Features stage does
per track (``pipeline.features.featurize.featurize``): decode a 44.1 kHz stereo wav, downmix and
resample to 16 kHz (``pipeline.audio.io.load``), chunked scattering and log
(``pipeline.features.scattering.FeatureExtractor``), one float16 shard (``pipeline.features.store``).
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
import soundfile as sf
import torch


def music_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Stereo float32 ``(samples, 2)``: noise bursts, a gated chord and a bass line."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    bursts = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2.1 * t) > 0.6) * 0.15
    chord = sum(0.05 * np.sin(2 * np.pi * f * (1 + 0.1 * seed) * t) for f in (262.0, 330.0, 392.0)) * (t % 4 < 2.5)
    mono = bursts + chord + 0.2 * np.sin(2 * np.pi * 55.0 * t)
    return np.stack([mono, 0.8 * mono + 0.02 * rng.standard_normal(t.size)], axis=1).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each track (s)")
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-numpy", action="store_true", help="do not time Kymatio's numpy frontend")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pipeline.audio import io as audio
    from pipeline.features.store import FeatureShard
    from pipeline.features.scattering import SCATTERING, extract_features, log_compress, n_feature_frames, raw_to_layout
    from pipeline.features.featurize import featurize
    from pipeline.sources import FEATURE_RATE

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.tracks):
            paths.append(Path(tmp) / f"track{i}.wav")
            sf.write(paths[-1], music_like(args.seconds, 44_100, i), 44_100, subtype="PCM_16")
        items = [(f"t{i}", str(p), (lambda p=p: audio.load(p, sample_rate=FEATURE_RATE, mono=True)[0][0]))
                 for i, p in enumerate(paths)]
        total_s = args.tracks * args.seconds
        featurize(items[:1], Path(tmp) / "warmup.npy")  # builds the cached filter banks once per process
        started = time.perf_counter()
        featurize(items, Path(tmp) / "shard.npy", total=len(items))
        first_stage = time.perf_counter() - started
        stage_rss = peak_rss_mb()

        from kymatio.torch import Scattering1D

        mono = [load() for _, _, load in items]
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
                featurize(items, Path(tmp) / "shard.npy", total=len(items))
                stage_s.append(time.perf_counter() - started)
        stage, plain = statistics.median(stage_s), statistics.median(bare_s)

        print(f"audio: {args.tracks} tracks x {args.seconds:.0f} s of 44.1 kHz stereo, {args.threads} threads, "
              f"median of {args.repeats}")
        print(f"bare kymatio : {total_s / plain:8.1f} s of audio per s ({plain:.2f} s; best {min(bare_s):.2f} s; "
              f"filter banks built beforehand in {build:.1f} s)")
        print(f"stage        : {total_s / stage:8.1f} s of audio per s ({stage:.2f} s; best {min(stage_s):.2f} s)")
        print(f"stage / bare : {stage / plain:8.2f}x (best vs best {min(stage_s) / min(bare_s):.2f}x)")
        print(f"stage peak resident memory: {stage_rss:.0f} MB (whole process, before any bare object)")

        if not args.skip_numpy:
            from kymatio.numpy import Scattering1D as NumpyScattering1D

            numpy_bare = NumpyScattering1D(shape=len(mono[0]), **SCATTERING)
            started = time.perf_counter()
            numpy_bare(mono[0])
            print(f"bare kymatio.numpy (float64), for comparison: "
                  f"{args.seconds / (time.perf_counter() - started):8.1f} s of audio per s")

        stored = FeatureShard(Path(tmp) / "shard.npy")["t0"]
        feats = extract_features(mono[0])
        print(f"float16 shard: max |error| {np.abs(stored - feats).max():.4f} on features in 0..{feats.max():.1f}; "
              f"{stored.shape[-1] * stored.shape[0] * stored.shape[1] * 2 / args.seconds / 1e3:.1f} kB per second of audio")
        reference = raw_to_layout(scatterings[0](torch.from_numpy(mono[0])).numpy())[..., :n_feature_frames(len(mono[0]))]
        inner = slice(32, -32)  # bare Kymatio reflects the signal at its ends, the stage zero-extends it
        error = np.abs(log_compress(reference) - feats)[..., inner].max()
        print(f"chunked features vs bare whole-signal transform, away from the ends: max |error| {error:.4f} (log1p units)")


if __name__ == "__main__":
    main()
