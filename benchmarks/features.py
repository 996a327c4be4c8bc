"""Features throughput on short and long tracks, side by side with bare Kymatio.

    .venv/bin/python benchmarks/features.py [--seconds 8 240] [--audio 240] [--threads 2] [--repeats 3]
                                            [--skip-numpy] [--smoke]

For each track length of ``--seconds``, ``--audio`` seconds of music-like 44.1 kHz stereo
16-bit wav (``--audio / seconds`` tracks: 30 of 8 s, 1 of 240 s) go through

- "stage": what the Features stage does per catalog shard
  (``pipeline.features.featurize.build_features_shard``): decode in blocks, downmix and resample
  to 16 kHz (``pipeline.audio.io.stream``), chunked scattering and log, short tracks packed
  into shared chunks (``pipeline.features.scattering.FeatureExtractor.packed``), one float16
  shard (``pipeline.features.store``);
- "bare": Kymatio's ``Scattering1D`` (torch frontend, J=8, Q=8, T=256) on each
  already-16 kHz mono track in one call, its filter bank built beforehand for that length
  (Kymatio pads an 8 s track, 128,000 samples, to 2**18 points; 240 s to 2**22).

The two alternate ``--repeats`` times; the figures are medians of wall time (seconds of audio
per second), their ratio ``stage speed / bare speed`` (the goal: at least 1) and the ratio of
their CPU times (``time.process_time``), which a busy machine disturbs less than wall time
(with one thread; with two, a descheduled thread's partner spins and bills CPU time).  Also
printed: Kymatio's numpy frontend, the stage's peak memory (before any bare object exists),
the float16 storage error and the chunked-vs-whole feature difference (on the longest length).
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

SMOKE = {"seconds": [2.0, 8.0], "audio": 8.0, "repeats": 1, "threads": 1, "skip_numpy": True}


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


def timed(call) -> tuple[float, float]:
    """``(wall s, CPU s of this process)`` of ``call()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[8.0, 240.0], help="track lengths (s)")
    parser.add_argument("--audio", type=float, default=240.0, help="seconds of audio per length")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-numpy", action="store_true", help="do not time Kymatio's numpy frontend")
    args = parse_args(parser, SMOKE)
    torch.set_num_threads(args.threads)

    from kymatio.torch import Scattering1D

    from pipeline.audio import io as audio
    from pipeline.features.featurize import build_features_shard
    from pipeline.features.scattering import SCATTERING, extract_features, log_compress, n_feature_frames, raw_to_layout
    from pipeline.features.store import FeatureShard
    from pipeline.sources import FEATURE_RATE

    print(f"{args.threads} torch threads, median of {args.repeats} alternating repeats after one untimed run of each")
    with tempfile.TemporaryDirectory() as tmp:
        shards = {}
        for seconds in args.seconds:
            count = max(1, round(args.audio / seconds))
            paths = [Path(tmp) / f"track{seconds:g}s-{i}.wav" for i in range(count)]
            for i, path in enumerate(paths):
                sf.write(path, music_like(seconds, 44_100, i), 44_100, subtype="PCM_16")
            shards[seconds] = pd.DataFrame({"track_id": [f"t{i}" for i in range(count)],
                                            "path": [str(p) for p in paths]})
        for shard in shards.values():  # builds the cached Kymatio objects each length uses, once
            build_features_shard(shard, Path(tmp) / "warmup.npy")
        stage_rss, banks = None, {}  # banks: Kymatio object per signal length, built beforehand
        for seconds, shard in shards.items():
            total_s = len(shard) * seconds
            npy = Path(tmp) / f"shard{seconds:g}.npy"

            def stage(shard=shard, npy=npy) -> None:
                build_features_shard(shard, npy)

            stage_runs = [timed(stage)]
            stage_rss = stage_rss if stage_rss is not None else peak_rss_mib()
            mono = [audio.load(p, sample_rate=FEATURE_RATE, mono=True)[0][0] for p in shard["path"]]
            started = time.perf_counter()
            banks.update({n: Scattering1D(shape=n, **SCATTERING) for n in {m.size for m in mono} - set(banks)})
            build = time.perf_counter() - started

            def bare(mono=mono) -> None:
                with torch.inference_mode():
                    for signal in mono:
                        banks[signal.size](torch.from_numpy(signal))

            bare()
            bare_runs = []
            for repeat in range(args.repeats):
                bare_runs.append(timed(bare))
                if repeat + 1 < args.repeats:
                    stage_runs.append(timed(stage))
            (stage_wall, stage_cpu), (bare_wall, bare_cpu) = (
                (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
                for runs in (stage_runs, bare_runs))
            what = f"{seconds:g} s tracks"
            print(f"\n{what}: {len(shard)} x {seconds:g} s of 44.1 kHz stereo ({total_s:g} s of audio)")
            figure(f"bare kymatio.torch, {what}", total_s / bare_wall, "s of audio per s",
                   f"{bare_wall:.2f} s, CPU {bare_cpu:.2f} s; filter banks built beforehand in {build:.1f} s")
            figure(f"features stage, {what}", total_s / stage_wall, "s of audio per s",
                   f"{stage_wall:.2f} s, CPU {stage_cpu:.2f} s")
            figure(f"stage speed / bare speed, {what}", bare_wall / stage_wall, "x",
                   f"best vs best {min(w for w, _ in bare_runs) / min(w for w, _ in stage_runs):.2f}x", digits=2)
            figure(f"stage CPU speed / bare CPU speed, {what}", bare_cpu / stage_cpu, "x", digits=2)
        figure("stage peak resident memory", stage_rss, "MiB", "whole process, before any bare object", digits=0)

        longest = max(args.seconds)
        path = shards[longest]["path"][0]
        signal = audio.load(path, sample_rate=FEATURE_RATE, mono=True)[0][0]
        if not args.skip_numpy:
            from kymatio.numpy import Scattering1D as NumpyScattering1D

            numpy_bare = NumpyScattering1D(shape=signal.size, **SCATTERING)
            started = time.perf_counter()
            numpy_bare(signal)
            figure("bare kymatio.numpy (float64)", longest / (time.perf_counter() - started),
                   "s of audio per s", f"one {longest:g} s track, for comparison")
        stored = FeatureShard(Path(tmp) / f"shard{longest:g}.npy")["t0"]
        feats = extract_features(signal)
        figure("float16 shard max |error|", np.abs(stored - feats).max(), "log1p units",
               f"on features in 0..{feats.max():.1f}", digits=4)
        figure("float16 shard size", stored.shape[-1] * stored.shape[0] * stored.shape[1] * 2 / longest / 1e3,
               "kB per s of audio")
        whole = raw_to_layout(banks[signal.size](torch.from_numpy(signal)).numpy())
        reference = whole[..., :n_feature_frames(signal.size)]
        inner = slice(32, -32)  # bare Kymatio reflects the signal at its ends, the stage zero-extends it
        error = np.abs(log_compress(reference) - feats)[..., inner].max()
        figure("chunked features vs bare whole-signal transform max |error|", error, "log1p units",
               "away from the ends", digits=4)


if __name__ == "__main__":
    main()
