"""Catalog throughput through Luigi: features, detection and extraction of N short tracks.

    .venv/bin/python benchmarks/catalog.py [--tracks 1000] [--seconds 8] [--shard-size 50]
                                           [--width 0.125] [--workers 1] [--threads 0]
                                           [--work /tmp/silentmine-bench] [--smoke]

Builds (once, cached under ``--work``) a tiny labelled stem set and a catalog of ``--tracks``
FLAC tracks (44.1 kHz stereo, ``--seconds`` long: a pool of synthesised demo songs, each copy
at its own gain so every file is a distinct track), trains a detector for one epoch (throughput
does not depend on its quality) and calibrates it, then times ``silentmine run Extract`` (scan,
features, detection, extraction of the whole catalog) in this process with the local scheduler,
and prints, from the wall clock and the run journal (``pipeline.storage.journal``):

- end to end: catalog audio seconds per wall second of the whole ``Extract`` run;
- the features stage's own throughput: audio seconds per second inside its bodies;
- their ratio (the goal: at least 0.6 at the demo width 0.125);
- the Luigi / bookkeeping overhead: wall time minus the time inside task bodies;
- a rerun with nothing to do, and adding ``--add`` (10) tracks and rerunning.

``--smoke`` runs it all on a handful of short tracks and a smaller stem set, in a temporary
folder (removed at the end) unless ``--work`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, in_work, parse_args, run_logged, set_options  # noqa: E402

from pipeline.corpora.demo import DemoConfig, generate, mix, synthesize_song  # noqa: E402
from pipeline.storage.journal import read_journal  # noqa: E402

RATE = 44_100
SMOKE = {"tracks": 4, "seconds": 3.0, "shard_size": 2, "pool": 2, "add": 2, "work": None, "threads": 1,
         "stem_tracks": [2, 1, 1], "stem_seconds": [4.0, 5.0], "crop_seconds": 2.0}


def song_pool(count: int, seconds: float, seed: int = 7) -> list[np.ndarray]:
    """``count`` synthesised mixtures ``(2, samples)`` of ``seconds`` each, peak 0.9."""
    pool = []
    for index in range(count):
        stems, _ = synthesize_song(np.random.default_rng([seed, index]), seconds, RATE)
        mixture = mix(stems)
        pool.append(0.9 * mixture / max(float(np.abs(mixture).max()), 1e-9))
    return pool


def write_tracks(folder: Path, pool: list[np.ndarray], first: int, count: int) -> float:
    """Write tracks ``first .. first + count - 1`` (skipping existing files); return seconds spent."""
    started = time.perf_counter()
    for index in range(first, first + count):
        path = folder / f"{index // 100:03d}" / f"track_{index:05d}.flac"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gain = 0.5 + 0.5 * ((index * 0.6180339887) % 1.0)  # distinct bytes per copy
        sf.write(path, (pool[index % len(pool)] * gain).T, RATE, format="FLAC", subtype="PCM_16")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--width", type=float, default=0.125, help="detector width (the paper's: 1.0)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="[silentmine] threads (0: cores / workers)")
    parser.add_argument("--pool", type=int, default=40, help="distinct synthesised songs behind the catalog")
    parser.add_argument("--add", type=int, default=10, help="tracks added before the last rerun")
    parser.add_argument("--stem-tracks", type=int, nargs=3, default=[3, 1, 2],
                        metavar=("TRAIN", "VALID", "CALIBRATION"),
                        help="stem-set tracks per split (the detector's training and calibration data)")
    parser.add_argument("--stem-seconds", type=float, nargs=2, default=[8.0, 12.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--crop-seconds", type=float, default=3.0, help="detector training crops (s)")
    parser.add_argument("--work", default="/tmp/silentmine-bench", help="cache of the corpus and the runs")
    in_work(benchmark, parse_args(parser, SMOKE, argv), "silentmine-catalog-")


def benchmark(args: argparse.Namespace, work: Path) -> None:
    """Build (or reuse) the corpus under ``work``, time the runs, print the figures."""
    tag = f"{args.tracks}x{args.seconds:g}s-shard{args.shard_size}-w{args.width:g}-{args.workers}workers"
    data_root = work / f"data-{tag}-{int(time.time())}"
    log = work / f"{data_root.name}.log"
    catalog = work / f"catalog-{args.tracks}x{args.seconds:g}s"
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    train, valid, calibration = args.stem_tracks  # kept when a complete stem set of this config is there
    generate(work / "stems", DemoConfig(seed=5, n_train=train, n_valid=valid, n_calibration=calibration, n_test=0,
                                        n_catalog=0,
                                        stem_duration_s=tuple(args.stem_seconds)))
    pool = song_pool(args.pool, args.seconds)
    synth_s = time.perf_counter() - started
    write_s = write_tracks(catalog, pool, 0, args.tracks)
    print(f"corpus: stem set + {args.pool} songs synthesised in {synth_s:.1f} s; catalog of {args.tracks} x "
          f"{args.seconds:g} s FLAC written in {write_s:.1f} s ({catalog})")

    set_options({
        "silentmine": {"data_root": data_root, "stem_root": work / "stems" / "stems", "catalog": catalog,
                       "threads": args.threads},
        "ScanCatalog": {"shard_size": args.shard_size},
        "TrainDetector": {"width": args.width, "epochs": 1, "patience": 1, "crop_seconds": args.crop_seconds},
        "Calibrate": {"min_windows": 5, "target_fraction": 0.5, "target_db": -10,
                      "splits": '["valid", "calibration"]'},
    })
    setup_s = run_logged("Calibrate", args.workers, log)
    print(f"setup (labels, stem features, detector of width {args.width:g}, calibration): {setup_s:.1f} s")

    t0 = time.time()
    wall = run_logged("Extract", args.workers, log)
    journal = read_journal(data_root)
    this_run = journal[(journal["started"] >= t0) & (journal["status"] == "done")]
    features = this_run[this_run["family"] == "CatalogFeatures"]
    audio_s = float(sum(c.get("audio_seconds", 0.0) for c in features["counts"]))
    feature_body = float(features["body_s"].sum())
    body = float(this_run["body_s"].sum())
    end_to_end = audio_s / wall
    feature_rate = audio_s / feature_body
    print(f"\ncatalog run ({args.tracks} tracks, {audio_s:.0f} s of audio, {features.shape[0]} shards, "
          f"{len(this_run)} tasks, {args.workers} worker(s)):")
    for family, seconds in this_run.groupby("family")["body_s"].sum().sort_values(ascending=False).items():
        print(f"  {family:<16} body {seconds:8.1f} s")
    figure("end to end", end_to_end, "audio s per wall s", f"wall {wall:.1f} s")
    figure("features stage alone", feature_rate, "audio s per body s")
    figure("end to end / features", end_to_end / feature_rate, "x", digits=2)
    figure("Luigi + bookkeeping", wall - body, "s", f"wall {wall:.1f} s - bodies {body:.1f} s; "
           f"{(wall - body) / max(len(this_run), 1) * 1000:.0f} ms per task")

    noop = run_logged("Extract", args.workers, log)
    figure("rerun with nothing to do", noop, "s", digits=2)
    write_tracks(catalog, pool, args.tracks, args.add)
    try:
        t1 = time.time()
        grown = run_logged("Extract", args.workers, log)
        ran = read_journal(data_root)
        ran = ran[ran["started"] >= t1]
        figure(f"add {args.add} tracks, rerun", grown, "s", "tasks run: " + ", ".join(
            f"{k} {v}" for k, v in ran["family"].value_counts().sort_index().items()), digits=2)
    finally:
        for index in range(args.tracks, args.tracks + args.add):  # leave the cached catalog as it was
            (catalog / f"{index // 100:03d}" / f"track_{index:05d}.flac").unlink(missing_ok=True)
    if args.work is not None:  # else a temporary folder, removed at the end
        print(f"\nlog: {log}; journal: {data_root / 'journal'}")


if __name__ == "__main__":
    main()
