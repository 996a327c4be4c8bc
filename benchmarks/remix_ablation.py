"""Does mining pay?  The Demucs paper's ablation (table 1, with and without remix) at a chosen scale.

    .venv/bin/python benchmarks/remix_ablation.py [--labelled 6] [--catalog 200] [--test 8] [--seeds 3]
                                                  [--updates 600] [--model tasnet] [--model-config JSON]
                                                  [--critic-config JSON] [--channels 8] [--depth 4] [--window 2]
                                                  [--batch 8] [--workers 1] [--work DIR] [--smoke]

Generates a demo corpus (``pipeline.corpora.demo``): a small labelled stem set (``--labelled``
train songs, 2 valid songs, ``--test`` test songs and as many calibration songs) and a
larger unlabelled catalog (``--catalog`` songs), then runs the whole pipeline through Luigi
in this process (labels, features, detector, calibration, extraction of the D_i) and
``Evaluate`` with these runs, each trained under every one of ``--seeds`` seeds at the same
budget of ``--updates`` main steps of ``--batch`` examples (the paper's protocol: the remix
steps and critic steps come on top, and every row states them):

- ``plain``: the supervised recipe alone (``remix = false``);
- ``remix``: with the remix step on the mined D_i;
- one row per further training scheme (``--schemes single``: each of
  ``pipeline.separation.config.SCHEME_PARTS`` alone; ``all``: every registered
  combination, ``SCHEMES``; ``none``).

It prints the comparison (the trivial and oracle rows, each run's median SDR per source, mean,
spread across seeds, updates and examples) and every run minus ``plain``: the median paired
difference over test tracks with its bootstrap 95 % interval and Wilcoxon p-value
(``pipeline.separation.comparison``).  Figures: each row's median SDR over all sources, and
each contrast's median difference (its interval in the note).

The defaults are meant for about an hour on 2 CPU cores (docs/performance.md); scale up on a GPU
with e.g.
``--labelled 50 --catalog 2000 --test 50 --updates 20000 --model demucs --model-config '{}' --channels 48
--depth 6 --window 5 --batch 64 --rate 44100``.  The demo-sized models run at ``--rate`` 16 kHz (the stems are
resampled on reading, and Evaluate scores at that rate, reference rows included).
``--smoke``: a few seconds of audio, tiny models at 8 kHz, one seed, plain and remix only, in a temporary
folder (removed at the end) unless ``--work`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, in_work, parse_args, run_logged, set_options  # noqa: E402

from pipeline.corpora.demo import DemoConfig, generate  # noqa: E402

# The demo's TasNet (luigi.cfg's model_config without its sample rate, which comes from --rate).
DEMO_TASNET = {"filters": 32, "lstm_layers": 2, "hidden": 32, "consistency": True}
SMOKE = {"labelled": 2, "catalog": 4, "test": 1, "seeds": 1, "schemes": "none", "updates": 3, "channels": 4, "depth": 3,
         "window": 1.0, "batch": 2, "rate": 8000, "stem_seconds": [5.0, 6.0], "catalog_seconds": [8.0, 10.0],
         "detector_width": 0.0625, "detector_epochs": 1, "crop_seconds": 2.0, "min_windows": 10,
         "target_fraction": 0.5, "work": None, "threads": 1,
         # mono: museval's projection solves, most of the smoke's Evaluate, are 8x cheaper than stereo
         "model_config": json.dumps({**DEMO_TASNET, "audio_channels": 1})}


def schemes(which: str) -> list[str]:
    """The training schemes besides ``supervised`` and ``remix`` (``pipeline.separation.config``):
    ``single`` ones, ``all`` registered combinations, or ``none``."""
    from pipeline.separation.config import SCHEME_PARTS, SCHEMES

    names = {"single": SCHEME_PARTS, "all": SCHEMES, "none": ()}[which]
    return [name for name in names if name not in ("supervised", "remix")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=6, help="labelled train songs (the supervised set)")
    parser.add_argument("--catalog", type=int, default=200, help="unlabelled catalog songs (mined for the D_i)")
    parser.add_argument("--test", type=int, default=8, help="test songs (Evaluate); as many calibration songs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run (0, 1, ...)")
    parser.add_argument("--updates", type=int, default=600, help="main steps per run (extra steps on top)")
    parser.add_argument("--model", default="tasnet", help="registered separator (demucs, demucs2019, tasnet)")
    parser.add_argument("--model-config",
                        default=json.dumps(DEMO_TASNET),
                        help="JSON over the model's defaults (sample_rate comes from --rate); the default is the "
                             "demo's TasNet, 32 filters, 2 x 32 cells and mixture consistency")
    parser.add_argument("--critic-config",
                        default='{"critic_width": 4, "critic_hop": 1024, "unlabelled_batch_size": 1}',
                        help="train_config JSON of the adversarial schemes; the default is the demo's vocals critic "
                             "(the paper's width 32, STFT hop 512 and a full unlabelled batch: '{}', 3.5 s per "
                             "update on 2 cores at the default size)")
    parser.add_argument("--channels", type=int, default=8, help="Demucs C_1 (the paper's 48)")
    parser.add_argument("--depth", type=int, default=4, help="Demucs L (the paper's 6)")
    parser.add_argument("--window", type=float, default=2.0, help="training window (s; the paper's 5)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (the paper's 128)")
    parser.add_argument("--rate", type=int, default=16_000, help="the models' sample rate (Hz; the paper's 44100)")
    parser.add_argument("--schemes", choices=["single", "all", "none"], default="single",
                        help="further runs: each scheme alone, every registered combination, or none")
    parser.add_argument("--stem-seconds", type=float, nargs=2, default=[20.0, 40.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--catalog-seconds", type=float, nargs=2, default=[20.0, 40.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--detector-width", type=float, default=0.125)
    parser.add_argument("--detector-epochs", type=int, default=6)
    parser.add_argument("--crop-seconds", type=float, default=5.0, help="detector training crops (s)")
    parser.add_argument("--min-windows", type=int, default=100, help="[Calibrate] min_windows")
    parser.add_argument("--target-fraction", type=float, default=0.95, help="[Calibrate] target_fraction")
    parser.add_argument("--workers", type=int, default=1, help="Luigi worker processes")
    parser.add_argument("--threads", type=int, default=0, help="[silentmine] threads (0: cores / workers)")
    parser.add_argument("--work", default="/tmp/silentmine-ablation", help="corpus and runs (kept, reused)")
    args = parse_args(parser, SMOKE, argv)
    if args.seeds < 1 or args.updates < 1:
        parser.error("--seeds and --updates must be >= 1")
    in_work(benchmark, args, "silentmine-ablation-")


def benchmark(args: argparse.Namespace, work: Path) -> None:
    """Generate (or reuse) the corpus under ``work``, run the pipeline, print the comparison."""
    tag = f"l{args.labelled}-c{args.catalog}-t{args.test}"
    corpus = work / f"corpus-{tag}"
    started = time.perf_counter()
    # as many calibration songs as test songs: thresholds are chosen on songs Evaluate does not score
    generate(corpus, DemoConfig(seed=11, n_train=args.labelled, n_valid=2, n_calibration=args.test, n_test=args.test,
                                n_catalog=args.catalog,
                                stem_duration_s=tuple(args.stem_seconds),
                                catalog_duration_s=tuple(args.catalog_seconds)))
    print(f"corpus {corpus}: {args.labelled} labelled + 2 valid + {args.test} test songs, {args.catalog} catalog "
          f"songs ({time.perf_counter() - started:.0f} s)", flush=True)

    runs = {"plain": {"remix": False}, "remix": {"remix": True}}
    critic = json.loads(args.critic_config)
    runs.update({name: {"scheme": name, **({"train_config": critic} if "adversarial" in name and critic else {})}
                 for name in schemes(args.schemes)})
    set_options({
        "silentmine": {"data_root": work / f"data-{tag}", "stem_root": corpus / "stems", "catalog": corpus / "catalog",
                       "threads": args.threads},
        "TrainDetector": {"width": args.detector_width, "epochs": args.detector_epochs,
                          "patience": args.detector_epochs, "crop_seconds": args.crop_seconds},
        "Calibrate": {"min_windows": args.min_windows, "target_fraction": args.target_fraction},
        "TrainSeparator": {"channels": args.channels, "depth": args.depth, "epochs": 100_000,
                           "model": args.model,
                           "model_config": json.dumps({**json.loads(args.model_config), "sample_rate": args.rate}),
                           "batches_per_epoch": 50, "batch_size": args.batch, "window_s": args.window,
                           "lr_decay_every": 100_000, "max_updates": args.updates},
        "Evaluate": {"max_tracks": 0, "runs": json.dumps(runs), "seeds": json.dumps(list(range(args.seeds))),
                     "contrasts": json.dumps([[name, "plain"] for name in runs if name != "plain"])},
    })
    log = work / f"run-{tag}.log"
    wall = run_logged("Evaluate", args.workers, log)

    import tasks

    evaluate, extract = tasks.Evaluate(), tasks.Extract()
    manifest, excerpts = evaluate.manifest, extract.manifest["counts"]
    print(f"\npipeline + {len(runs)} runs x {args.seeds} seeds at {args.updates} main steps of {args.batch} examples, "
          f"{args.model} {args.model_config}, {args.window:g} s windows: {wall:.0f} s (log {log})")
    print(f"D_i mined from the catalog: {json.dumps({k: v for k, v in excerpts.items() if 'excerpt' in k})}")
    for line in manifest["summary"]:
        print(line)
    counts = manifest["counts"]
    for run, row in counts["comparison"].items():
        figure(f"median SDR, all sources: {run}", row["all"], "dB", f"{counts['tracks']} test tracks", digits=2)
    for name, scopes in counts["contrasts"].items():
        low, high = scopes["all"]["ci"]
        figure(f"{name}, median SDR difference", scopes["all"]["median_diff"], "dB",
               f"95 % CI [{low:+.2f}, {high:+.2f}], Wilcoxon p {scopes['all']['p']:.3g}, "
               f"{scopes['all']['pairs']} pairs, {args.seeds} seeds", digits=2)
    figure("wall time", wall, "s", f"{args.workers} Luigi worker(s)", digits=0)


if __name__ == "__main__":
    main()
