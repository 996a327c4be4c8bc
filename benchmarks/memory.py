"""Peak memory of each catalog stage body for a 10- and a 60-minute track.

Writes a synthetic 44.1 kHz stereo FLAC (16-bit) of each length (gated noise bursts, tones
and a bass line, generated and encoded in 10 s blocks), then runs every stage body on it in a
fresh Python process and reads that process's peak RSS (``os.wait4``'s ``ru_maxrss``):

- ``baseline``: the imports of all stage bodies, nothing run (the fixed cost);
- ``scan``: SHA-256 checksum + probe (what ScanCatalog does per track);
- ``features``: ``build_features_shard`` on a one-track shard (decode, 16 kHz mono, scatter,
  write the ``.npy``);
- ``detect``: ``classifiers.runs.build_detect`` on that shard with a width-0.125 detector (random
  init, normalisation fitted on the first 5000 frames of the shard);
- ``extract``: ``extract_track`` with probabilities that give four long excerpts (one per
  source, each 3/16 of the track, overlapping; kept when at least ``--min-seconds`` long).

``--old`` also runs the whole-track code paths that the streaming ones replaced (features: ``audio.load``
of the whole track then one feature array; detect: ``FeatureShard.get`` copy; extract: the
whole file decoded as one block), to show what grew with the length.

Run: ``.venv/bin/python benchmarks/memory.py [--minutes 10 60] [--old] [--workdir DIR] [--smoke]``
(without ``--workdir`` the tracks go to a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import figure, parse_args

SMOKE = {"minutes": [0.2, 0.4], "min_seconds": 1.0}
ROOT = Path(__file__).resolve().parents[1]
RATE = 44_100
STAGES = ("baseline", "scan", "features", "detect", "extract")


def write_track(path: Path, minutes: float, seed: int = 0, block_s: float = 10.0) -> None:
    """A music-like 44.1 kHz stereo 16-bit FLAC of ``minutes``, written block by block."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(round(minutes * 60 * RATE))
    block = int(block_s * RATE)
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, format="FLAC", subtype="PCM_16") as out:
        for first in range(0, total, block):
            t = (first + np.arange(min(block, total - first))) / RATE
            gate = np.sin(2 * np.pi * 0.7 * t) > 0.2
            left = (0.15 * rng.standard_normal(t.size) * gate + 0.2 * np.sin(2 * np.pi * 220 * t) * (t % 4 < 2.5)
                    + 0.1 * np.sin(2 * np.pi * 55 * t))
            right = 0.8 * left + 0.1 * np.sin(2 * np.pi * 330 * t) * (t % 3 < 1)
            out.write(np.clip(np.stack([left, right], axis=1), -0.99, 0.99).astype(np.float32))


def _probabilities(n_frames: int) -> np.ndarray:
    """``(n_frames, 4)``: source i silent over ``[i/8, i/8 + 1/8)`` of the track (+ a 1/16 overlap)."""
    probs = np.full((n_frames, 4), 0.1, np.float32)
    for i in range(4):
        first = i * n_frames // 8
        probs[first:first + n_frames // 8 + n_frames // 16, i] = 0.9
    return probs


def run_stage(stage: str, track: Path, work: Path, old: bool, min_seconds: float) -> None:
    """The body of one stage, run inside the measured child process."""
    import pandas as pd

    from classifiers.detector import DetectorConfig, SilentSourceDetector, save_checkpoint
    from classifiers.inference import predict, probabilities_frame
    from classifiers.runs import build_detect
    from pipeline.audio import io as audio
    from pipeline.features.featurize import build_features_shard
    from pipeline.features.scattering import FeatureExtractor, fit_normalisation
    from pipeline.features.store import FeatureShard, FeatureShardWriter
    from pipeline.mining.extraction import RunRule, extract_track
    from pipeline.sources import FEATURE_RATE, n_windows

    shard_path = work / "features.npy"
    if stage == "baseline":
        return
    if stage == "scan":
        audio.file_checksum(track)
        audio.probe(track)
    elif stage == "features" and not old:
        build_features_shard(pd.DataFrame({"track_id": ["t"], "path": [str(track)]}), shard_path)
    elif stage == "features":
        mono = audio.load(track, sample_rate=FEATURE_RATE, mono=True)[0][0]
        with FeatureShardWriter(shard_path) as writer:
            writer.add("t", FeatureExtractor()(mono))
    elif stage == "detect":
        import torch

        torch.manual_seed(0)
        model = SilentSourceDetector(DetectorConfig(width=0.125)).eval()
        shard = FeatureShard(shard_path)
        mean, std = fit_normalisation([np.moveaxis(np.asarray(shard.data[:5000], np.float32), 0, -1)])
        model.set_normalisation(mean, std)
        checkpoint = work / "detector.pt"
        save_checkpoint(checkpoint, model, model.config)
        if old:
            probabilities_frame("t", predict(model, shard.get("t")))
        else:
            build_detect(checkpoint, shard_path, work / "probabilities.parquet")
    elif stage == "extract":
        info = audio.probe(track)
        probs = _probabilities(n_windows(info.frames, info.sample_rate))
        thresholds = {"drums": 0.5, "bass": 0.5, "other": 0.5, "vocals": 0.5}
        rows = extract_track(track, "tt01", None, probs, thresholds, RunRule(min_seconds), work / "extract", "d", "c",
                             **({"block_frames": 1 << 40} if old else {}))
        if len(rows) != 4:
            raise RuntimeError(f"expected 4 excerpts, got {len(rows)}")
    else:
        raise ValueError(f"unknown stage {stage!r}")


def measure(stage: str, track: Path, work: Path, old: bool, min_seconds: float) -> tuple[float, float]:
    """Peak RSS in MiB and wall seconds of one stage body in a fresh process."""
    cmd = [sys.executable, __file__, "--child", stage, str(track), str(work), "--min-seconds", str(min_seconds)]
    cmd += ["--old"] if old else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stage {stage} failed on {track}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs=2, default=[10.0, 60.0])
    parser.add_argument("--old", action="store_true", help="also run the whole-track code paths")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the tracks for the next run")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="shortest excerpt the extract stage keeps")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "TRACK", "WORK"), help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.child:
        stage, track, work = args.child
        run_stage(stage, Path(track), Path(work), args.old, args.min_seconds)
        return
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="silentmine-memory-") as base:
            report(args, Path(base))


def report(args: argparse.Namespace, base: Path) -> None:
    """Measure every stage on a track of each of ``args.minutes`` (written into ``base``) and print."""
    modes = [False, True] if args.old else [False]
    results: dict[tuple[bool, str, float], tuple[float, float]] = {}
    for minutes in args.minutes:
        track = base / f"track-{minutes:g}min.flac"
        if not track.exists():
            started = time.perf_counter()
            write_track(track, minutes)
            print(
                f"wrote {track.name}: {track.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        for old in modes:
            work = base / f"work-{minutes:g}min-{'old' if old else 'new'}"
            work.mkdir(exist_ok=True)
            for stage in STAGES:
                results[old, stage, minutes] = measure(stage, track, work, old, args.min_seconds)
                rss, sec = results[old, stage, minutes]
                figure(
                    f"peak RSS, {'old' if old else 'new'} {stage}, {minutes:g} min",
                    rss,
                    "MiB",
                    f"{sec:.1f} s",
                    digits=0,
                )
    short, long = args.minutes
    print(
        f"\npeak RSS (MiB) of each stage body in a fresh process, {short:g} vs {long:g} minutes of 44.1 kHz stereo FLAC"
    )
    print(f"{'code':<5} {'stage':<9} {short:>7g} min {long:>7g} min {'ratio':>6}  {'time s':>13}")
    for old in modes:
        for stage in STAGES:
            (a, ta), (b, tb) = results[old, stage, short], results[old, stage, long]
            print(f"{'old' if old else 'new':<5} {stage:<9} {a:11.0f} {b:11.0f} {b / a:6.2f}  {ta:6.0f} {tb:6.0f}")
    for old in modes:
        for stage in STAGES:
            figure(
                f"peak RSS ratio {long:g} / {short:g} min, {'old' if old else 'new'} {stage}",
                results[old, stage, long][0] / results[old, stage, short][0],
                "x",
                digits=2,
            )
    print(json.dumps({f"{'old' if o else 'new'}/{s}/{m:g}": round(v[0]) for (o, s, m), v in results.items()}))


if __name__ == "__main__":
    main()
