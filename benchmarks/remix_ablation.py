"""Does mining pay?  The mining value ladder on a demo corpus, at a size that can answer.

    .venv/bin/python benchmarks/remix_ablation.py [--labelled 24] [--valid 4] [--calibration 16] [--test 8]
        [--catalog 450] [--catalog-seconds 30 60] [--seeds 3] [--epochs 80] [--batches-per-epoch 25]
        [--batch 8] [--window 3] [--rungs plain,remix,oracle,stems] [--remix-config JSON] [--remix-epochs 0]
        [--schemes none] [--detector-recipe remix] [--rule bound] [--max-gap 0] [--repeat-mining]
        [--model tasnet] [--model-config JSON] [--rate 16000] [--workers 2] [--work DIR] [--smoke]

Generates a demo corpus (``pipeline.corpora.demo``): a small labelled stem set (``--labelled``
train songs, ``--valid`` valid songs, ``--calibration`` songs on which the thresholds are
chosen, ``--test`` songs that Evaluate scores) and a larger unlabelled catalog (``--catalog``
songs of ``--catalog-seconds``) with its ground truth (relative volumes, and the true stems
when the ``stems`` rung is asked), runs the whole pipeline through Luigi in this process
(labels, features, the ``--detector-recipe`` detector, calibration under ``--rule``, extraction
of the D_i, the oracle D_i) and
``Evaluate`` with one row per rung of the mining value ladder (docs/evaluation.md), each
trained under every one of ``--seeds`` seeds:

- ``plain``: the supervised recipe on the labelled songs alone;
- ``remix``: plus the remix step on the mined D_i;
- ``oracle``: plus the remix step on the oracle D_i (the run rule on the true V_i <= -20 dB):
  what a perfect detector would have mined;
- ``stems``: the labelled songs plus the catalog's true stems, supervised: what the catalog
  would bring as labelled data.

One detector mines the D_i that every seed of ``remix`` reads, so that row's interval holds the
separator's training noise but not the detector's; ``--repeat-mining`` trains, calibrates and
extracts once per seed (``[Evaluate] repeat_mining``) and prints each seed's D_i.

The protocol is the paper's: every run makes ``--epochs`` x ``--batches-per-epoch`` main steps
(no update budget, no early stop), and the remix step (p = 0.25 after each main step) comes on
top (what ``budget = main`` counts when a budget is set); every row states its main steps, the
remix steps on top and its examples.  ``--remix-config`` and ``--remix-epochs`` change the remix
rungs only (their rows are named after them): ``--remix-config '{"remix_probability": 1.0,
"remix_lr_factor": 1.0}' --remix-epochs 40`` against ``--epochs 80`` is the remix step at full
strength at plain's number of updates.  The model's own schedule runs (the demo's
TasNet: learning rate halved after 3 epochs without a better validation loss).  Whether
``plain`` was trained until its validation loss stopped improving is checked on its histories
and printed: per seed, the epoch of its best validation loss, the epochs since (at least 10,
the TasNet recipe's early-stopping patience, read "stopped improving") and the share of the
run's gain that its last quarter of epochs brought (under 2 % reads "stopped improving" too:
a plateau).

It prints the minutes of each D_i per source (the bar for an answer: at least 20 minutes for every
calibrated source), the mined D_i against the catalog truth (per calibrated source, the share of
its windows truly <= -20 dB and the recall of the true silent runs), the comparison (reference
rows, each rung's median SDR per source, mean, spread across seeds, steps and examples) and
every rung minus ``plain`` with its interval (a two-level bootstrap over tracks and seeds:
``pipeline.separation.comparison``), the method line and the too-small warning.  Figures: each
D_i's fewest minutes over the sources it has, the mined D_i's lowest purity, each row's median
SDR over all sources, each contrast's median difference (its interval in the note), plain's
seeds that stopped improving and the largest share of its gain in a last quarter, and the wall
time.

The default size takes about 90 minutes on 2 CPU cores with 2 Luigi workers (docs/performance.md); scale up on a
GPU with e.g. ``--labelled 50 --catalog 2000 --test 50 --epochs 400 --batches-per-epoch 100 --model demucs
--model-config '{}' --channels 48 --depth 6 --window 5 --batch 64 --rate 44100``.  The demo-sized models run
at ``--rate`` 16 kHz (the stems are resampled on reading, and Evaluate scores at that rate, reference rows
included).  ``--smoke``: seconds of audio, tiny mono models at 8 kHz, one seed, one epoch
of two batches, every rung, in a temporary folder (removed at the end) unless ``--work`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, in_work, parse_args, run_logged, set_options  # noqa: E402
from _recipes import RECIPES, recipe_options  # noqa: E402

from pipeline.corpora.demo import CATALOG_STEMS_DIR, DemoConfig, generate  # noqa: E402
from pipeline.mining.calibration import RULES  # noqa: E402
from pipeline.threads import available_cores  # noqa: E402

# The demo's TasNet (luigi.cfg's model_config without its sample rate, which comes from --rate).
DEMO_TASNET = {"filters": 32, "lstm_layers": 2, "hidden": 32, "consistency": True}
# The ladder's rungs: row label and TrainSeparator parameters (tasks.ladder for d_i and catalog_stems).
RUNGS = {
    "plain": ("plain", {"remix": False}),
    "remix": ("remix (mined D_i)", {"remix": True}),
    "oracle": ("remix (oracle D_i)", {"remix": True, "d_i": "oracle"}),
    "stems": ("supervised + catalog stems", {"remix": False, "catalog_stems": True}),
}
CONVERGED_EPOCHS = 10  # epochs without a better validation loss that read "stopped improving"
# ... or a last quarter of the epochs that improved the best validation loss by less than this share of
# the whole run's improvement (its first epoch to its best): a plateau, whatever the loss's units.
CONVERGED_SHARE = 0.02
MIN_D_I_MINUTES = 20.0  # what a D_i must hold per calibrated source for the experiment to say anything
SMOKE = {"labelled": 2, "valid": 1, "calibration": 1, "catalog": 4, "test": 1, "seeds": 1, "epochs": 1,
         "batches_per_epoch": 2,
         "window": 1.0, "batch": 2, "rate": 8000, "stem_seconds": [5.0, 6.0], "catalog_seconds": [8.0, 10.0],
         "smoke_recipes": True, "min_windows": 10, "target_fraction": 0.5, "work": None, "workers": 1, "threads": 1,
         "repeat_mining": True,  # one seed: the default detector, through the per-seed path
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
    parser.add_argument("--labelled", type=int, default=24, help="labelled train songs (the supervised set)")
    parser.add_argument("--valid", type=int, default=4, help="labelled valid songs (validation loss, best.pt)")
    parser.add_argument("--calibration", type=int, default=16,
                        help="labelled calibration songs (the thresholds are chosen on them, never on test songs)")
    parser.add_argument("--test", type=int, default=8, help="labelled test songs (Evaluate scores them)")
    parser.add_argument("--catalog", type=int, default=450, help="unlabelled catalog songs (mined for the D_i)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=80, help="epochs of every run (main steps: x batches)")
    parser.add_argument("--remix-epochs", type=int, default=0,
                        help="epochs of the remix rungs (0: --epochs, the paper's protocol); e.g. half of --epochs "
                             "with a remix step after every main step gives them plain's number of updates")
    parser.add_argument("--batches-per-epoch", type=int, default=25, help="main steps per epoch")
    parser.add_argument("--rungs", default="plain,remix,oracle,stems",
                        help=f"comma-separated rungs of the ladder among {list(RUNGS)} (plain always)")
    parser.add_argument("--model", default="tasnet", help="registered separator (demucs, demucs2019, tasnet)")
    parser.add_argument("--model-config", default=json.dumps(DEMO_TASNET),
                        help="JSON over the model's defaults (sample_rate comes from --rate); the default is the "
                             "demo's TasNet, 32 filters, 2 x 32 cells and mixture consistency")
    parser.add_argument("--critic-config",
                        default='{"critic_width": 4, "critic_hop": 1024, "unlabelled_batch_size": 1}',
                        help="train_config JSON of the adversarial schemes (--schemes); the default is the demo's "
                             "vocals critic")
    parser.add_argument("--remix-config", default="{}",
                        help="train_config JSON over the recipe for the remix rungs only (e.g. "
                             "'{\"remix_probability\": 1.0, \"remix_lr_factor\": 1.0}' to see whether the D_i can help "
                             "at all); plain and the other rows, as trained before, are reused from --work")
    parser.add_argument("--channels", type=int, default=8, help="Demucs C_1 (the paper's 48)")
    parser.add_argument("--depth", type=int, default=4, help="Demucs L (the paper's 6)")
    parser.add_argument("--window", type=float, default=3.0, help="training window (s; the paper's 5)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (the paper's 128)")
    parser.add_argument("--rate", type=int, default=16_000, help="the models' sample rate (Hz; the paper's 44100)")
    parser.add_argument("--schemes", choices=["single", "all", "none"], default="none",
                        help="further rows beside the ladder: each scheme alone, every combination, or none")
    parser.add_argument("--stem-seconds", type=float, nargs=2, default=[20.0, 40.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--catalog-seconds", type=float, nargs=2, default=[30.0, 60.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--detector-recipe", choices=list(RECIPES), default="remix",
                        help="the detector's recipe (benchmarks/_recipes.py; remix: trained on remixes of the "
                             "labelled stems, the one that mined the most at 95 %% purity in benchmarks/yield.py)")
    parser.add_argument("--min-windows", type=int, default=100, help="[Calibrate] min_windows")
    parser.add_argument("--target-fraction", type=float, default=0.95, help="[Calibrate] target_fraction")
    parser.add_argument("--rule", choices=RULES, default="bound",
                        help="[Calibrate] rule (bound: the rule recommended for catalogs, docs/calibration.md)")
    parser.add_argument("--max-gap", type=int, default=0, help="[Extract] max_gap (frames)")
    parser.add_argument("--repeat-mining", action="store_true",
                        help="each seed's mined run reads the D_i of a detector trained under that seed "
                             "([Evaluate] repeat_mining: the detector's noise in the interval)")
    parser.add_argument("--workers", type=int, default=2,
                        help="Luigi worker processes (the demo's TasNet: 2 runs of 1 thread make 1.2x the steps of 1 "
                             "run of 2 threads on 2 cores, docs/performance.md)")
    parser.add_argument("--threads", type=int, default=0, help="[silentmine] threads (0: cores / workers)")
    parser.add_argument("--work", default="/tmp/silentmine-ablation", help="corpus and runs (kept, reused)")
    parser.add_argument("--smoke-recipes", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE, argv)
    rungs = ["plain", *dict.fromkeys(r for r in args.rungs.split(",") if r and r != "plain")]
    unknown = set(rungs) - set(RUNGS)
    if unknown:
        parser.error(f"unknown rungs {sorted(unknown)}; known: {list(RUNGS)}")
    if args.seeds < 1 or args.epochs < 1 or args.batches_per_epoch < 1 or args.remix_epochs < 0:
        parser.error("--seeds, --epochs and --batches-per-epoch must be >= 1, --remix-epochs >= 0")
    args.rung_list = rungs
    in_work(benchmark, args, "silentmine-ablation-")


TRAIN_CONFIG = {"early_stop_patience": None}  # the protocol: every run makes all its epochs


def _runs(args: argparse.Namespace) -> dict[str, dict]:
    """Evaluate's runs: the rungs asked for (the remix rungs with ``--remix-config``, renamed
    after it when it is not empty), then the further schemes."""
    remix = json.loads(args.remix_config)
    epochs = args.remix_epochs if args.remix_epochs not in (0, args.epochs) else None
    runs = {}
    for name in args.rung_list:
        label, params = RUNGS[name]
        if remix and params.get("remix"):
            label = f"{label} {json.dumps(remix, sort_keys=True)}"
            params = {**params, "train_config": {**TRAIN_CONFIG, **remix}}
        if epochs and params.get("remix"):
            label = f"{label}, {epochs} epochs"
            params = {**params, "epochs": epochs}
        runs[label] = params
    critic = json.loads(args.critic_config)
    runs.update({name: {"scheme": name, **({"train_config": critic} if "adversarial" in name and critic else {})}
                 for name in schemes(args.schemes)})
    return runs


def convergence(history_files: dict[int, Path]) -> list[tuple[int, int, int, float, float]]:
    """Per seed of a run: ``(seed, best epoch, epochs run, gain, share)`` of its validation loss (the
    history's ``valid_loss``; for TasNet, minus SI-SNR in dB): ``gain`` is the best minus the best
    of the first three quarters of the epochs, ``share`` that gain over the whole run's (the best
    minus the first epoch's), 1 when the run never improved (no plateau shown)."""
    import pandas as pd

    rows = []
    for seed, path in sorted(history_files.items()):
        history = pd.read_csv(path)
        valid = history["valid_loss"].to_numpy()
        best = int(history["epoch"].iloc[int(valid.argmin())])
        gain = float(valid.min() - valid[: max(1, (3 * len(valid)) // 4)].min())
        whole = float(valid.min() - valid[0])
        rows.append((seed, best, int(history["epoch"].iloc[-1]), gain, gain / whole if whole < 0 else 1.0))
    return rows


def stopped_improving(best: int, last: int, share: float) -> bool:
    """Whether a seed's run had stopped improving: :data:`CONVERGED_EPOCHS` epochs or more since its
    best validation loss, or a last quarter that brought under :data:`CONVERGED_SHARE` of its gain."""
    return last - best >= CONVERGED_EPOCHS or share < CONVERGED_SHARE


def print_mined_purity(name: str, extract, corpus: Path, calibrated: list[str]) -> None:
    """The mined D_i against the catalog truth (what MeasureExtraction measures): per calibrated
    source, the share of its windows truly <= -20 dB and the recall of the true silent runs."""
    import pandas as pd

    from pipeline.mining.datasets import DatasetRun
    from pipeline.mining.ground_truth import measure_extraction
    from pipeline.sources import TRULY_SILENT_DB

    table = measure_extraction(DatasetRun.of(extract.dataset).index(),
                               pd.read_parquet(corpus / "catalog_truth.parquet"), corpus / "catalog",
                               run_rule=extract.run_rule).set_index("source")
    rows = table.loc[calibrated]
    print(f"{name} D_i against the catalog truth: " + ", ".join(
        f"{s} {100 * r.fraction_silent:.1f} % of windows <= {TRULY_SILENT_DB:g} dB, recall {100 * r.recall:.0f} % "
        f"({int(r.n_recovered)}/{int(r.n_true_runs)} silent runs)" for s, r in rows.iterrows()))
    worst = rows["fraction_silent"].idxmin()
    figure(f"{name} D_i, lowest purity against the catalog truth", 100 * rows.loc[worst, "fraction_silent"], "%",
           f"{worst}; calibration's target is 95 %", digits=1)


def benchmark(args: argparse.Namespace, work: Path) -> None:
    """Generate (or reuse) the corpus under ``work``, run the pipeline, print the ladder."""
    tag = f"l{args.labelled}-v{args.valid}-k{args.calibration}-c{args.catalog}-t{args.test}"
    corpus = work / f"corpus-{tag}"
    started = time.perf_counter()
    wants_stems = "stems" in args.rung_list
    config = DemoConfig(seed=11, n_train=args.labelled, n_valid=args.valid, n_calibration=args.calibration,
                        n_test=args.test, n_catalog=args.catalog,
                        stem_duration_s=tuple(args.stem_seconds), catalog_duration_s=tuple(args.catalog_seconds))
    summary = generate(corpus, config, workers=available_cores(), catalog_stems=wants_stems)  # same corpus anyway
    print(f"corpus {corpus}: {args.labelled} labelled + {args.valid} valid + {args.calibration} calibration + "
          f"{args.test} test songs, "
          f"{args.catalog} catalog songs, {summary['catalog']['duration_s'] / 3600:.2f} h "
          f"({time.perf_counter() - started:.0f} s)", flush=True)

    runs = _runs(args)
    set_options({
        "silentmine": {"data_root": work / f"data-{tag}", "stem_root": corpus / "stems", "catalog": corpus / "catalog",
                       "threads": args.threads, "catalog_truth": corpus / "catalog_truth.parquet",
                       "catalog_stems": corpus / CATALOG_STEMS_DIR if wants_stems else ""},
        "TrainDetector": recipe_options(args.detector_recipe, args.smoke_recipes),
        "Calibrate": {"min_windows": args.min_windows, "target_fraction": args.target_fraction, "rule": args.rule},
        "Extract": {"max_gap": args.max_gap},
        "TrainSeparator": {"channels": args.channels, "depth": args.depth, "epochs": args.epochs,
                           "model": args.model,
                           "model_config": json.dumps({**json.loads(args.model_config), "sample_rate": args.rate}),
                           "train_config": json.dumps(TRAIN_CONFIG),
                           "batches_per_epoch": args.batches_per_epoch, "batch_size": args.batch,
                           "window_s": args.window, "lr_decay_every": 100_000, "max_updates": 0},
        "Evaluate": {"max_tracks": 0, "runs": json.dumps(runs), "seeds": json.dumps(list(range(args.seeds))),
                     "repeat_mining": args.repeat_mining,
                     "contrasts": json.dumps([[name, RUNGS["plain"][0]] for name in runs if name != "plain"])},
    })
    log = work / f"run-{tag}.log"
    wall = run_logged("Evaluate", args.workers, log)

    import tasks

    evaluate = tasks.Evaluate()
    manifest = evaluate.manifest
    print(f"\npipeline + {len(runs)} rows x {args.seeds} seeds x {args.epochs} epochs of {args.batches_per_epoch} "
          f"main steps of {args.batch} x {args.window:g} s, {args.model} {args.model_config} at {args.rate} Hz: "
          f"{wall:.0f} s (log {log})")
    from pipeline.mining.calibration import read_thresholds
    from pipeline.sources import SOURCES

    datasets = {}  # name -> (its Extract or OracleDatasets, the sources it was calibrated for)
    if "remix" in args.rung_list:
        for seed in (range(args.seeds) if args.repeat_mining else [None]):
            extract = tasks.Extract(detector_seed=seed)
            calibrated = [s for s, p in read_thresholds(extract.calibration_task().thresholds).items()
                          if p is not None]
            datasets["mined" if seed is None else f"mined (detector seed {seed})"] = (extract, calibrated)
    if "oracle" in args.rung_list:
        datasets["oracle"] = (tasks.OracleDatasets(), list(SOURCES))
    for name, (task, calibrated) in datasets.items():
        counts = task.manifest["counts"]
        minutes = {s: 60 * counts.get(f"hours_{s}", 0.0) for s in SOURCES}
        shown = ", ".join(f"{s} {m:.1f} min ({counts.get(f'excerpts_{s}', 0)})" for s, m in minutes.items())
        mined = name.startswith("mined")
        print(f"{name} D_i: {shown}" + (f"; calibrated: {', '.join(calibrated) or 'none'}" if mined else ""))
        have = [s for s in calibrated if minutes[s] > 0]
        if have:
            fewest = min(have, key=minutes.get)
            figure(f"{name} D_i, fewest minutes of a source it has", minutes[fewest], "min",
                   f"{fewest}; the bar is {MIN_D_I_MINUTES:g} min per calibrated source", digits=1)
        if mined and calibrated:
            print_mined_purity(name, task, corpus, calibrated)
    plain = evaluate.run_tasks()[RUNGS["plain"][0]]
    checks = convergence({task.run_seed: task.folder / "history.csv" for task in plain.values()})
    stopped = 0
    for seed, best, last, gain, share in checks:
        plateau = stopped_improving(best, last, share)
        stopped += plateau
        verdict = "stopped improving" if plateau else "still improving"
        print(f"plain, seed {seed}: best validation loss at epoch {best} of {last} ({last - best} epochs since; "
              f"{gain:+.3f} against the best of the first three quarters, {100 * share:.1f} % of the run's gain): "
              f"{verdict}")
    figure("plain: seeds that stopped improving", stopped,
           "seeds", f"of {len(checks)}: {CONVERGED_EPOCHS} epochs since the best validation loss, or a last quarter "
           f"under {100 * CONVERGED_SHARE:g} % of the run's gain", digits=0)
    figure("plain: largest share of its gain in the last quarter", 100 * max(sh for *_, sh in checks), "%",
           f"over {len(checks)} seed(s)", digits=1)
    print()
    for line in manifest["summary"]:
        print(line)
    counts = manifest["counts"]
    for run, row in counts["comparison"].items():
        figure(f"median SDR, all sources: {run}", row["all"], "dB", f"{counts['tracks']} test tracks", digits=2)
    for name, scopes in counts["contrasts"].items():
        low, high = scopes["all"]["ci"]
        shown = "nan" if low is None else f"[{low:+.2f}, {high:+.2f}]"
        p = "nan" if scopes["all"]["p"] is None else f"{scopes['all']['p']:.3g}"
        figure(f"{name}, median SDR difference", scopes["all"]["median_diff"], "dB",
               f"95 % interval {shown}, Wilcoxon p {p}, {scopes['all']['tracks']} tracks, {args.seeds} seeds",
               digits=2)
    figure("wall time", wall, "s", f"{args.workers} Luigi worker(s)", digits=0)


if __name__ == "__main__":
    main()
