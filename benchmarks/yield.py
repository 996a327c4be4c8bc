"""Do the thresholds transfer?  Every calibration rule on a large demo catalog, against its truth.

    .venv/bin/python benchmarks/yield.py [--calibration 48] [--catalog 200] [--train 24] [--valid 6]
                                         [--test 12] [--seeds 3] [--recipes plain remix]
                                         [--rules windows excerpts bound catalog] [--widths W ...]
                                         [--work DIR]
                                         [--threads 0] [--smoke]

For each seed s (0, 1, ...): a demo corpus of that seed (``pipeline.corpora.demo``: ``--train``,
``--valid``, ``--calibration`` and ``--test`` labelled songs, ``--catalog`` catalog songs with their
truth, which the pipeline never reads), then the pipeline through Luigi in this process, under
``[silentmine] seed`` s, for each detector recipe of ``--recipes`` (``benchmarks/_recipes.py``; at each
of ``--widths`` when given, rows named RECIPE@WIDTH): the detector,
its held-out ROC AUC at -20 dB (DetectorReport, test split), the catalog's detection and
Calibrate under every rule of ``--rules`` (calibration split).  Then, against the catalog's truth
(``pipeline.mining.ground_truth``: the excerpts each rule's thresholds cut, simulated with
extraction's run rule), per source and rule: the threshold, the purity the rule states (its
point estimate and lower bound at 95 % confidence), the purity on the catalog, the recall of
truly silent 5 s runs and the hours extracted; and the yield curve over a fine grid of single
thresholds, whose best threshold at >= 95 % purity (most hours) is the oracle row: what one
threshold could reach, chosen on the truth.

Prints one table row per seed, recipe, source and rule (also written to
``WORK/yield-c<calibration>-k<catalog>-s<seeds>-<row labels>.csv``),
then a summary per recipe, rule and source over the seeds: seeds whose catalog purity reached
95 %, the worst seed's purity, the mean recall and its gap to the oracle's mean recall.
Figures: per recipe, rule and source of drums, bass and vocals, the seeds reaching 95 %, the
mean recall and (where every seed extracted something) the worst purity; per recipe and source
the mean held-out AUC and the catalog detection's speed (seconds of audio per second of the
DetectCatalog tasks' bodies, features read included).  The detector's training seconds are
context lines, not figures: they depend on the machine's load.

The corpus and every stage's outputs stay under ``--work`` (default ``/tmp/silentmine-yield``), so
a second run reuses them (a new recipe trains only its detector).  ``--smoke``: a few seconds of
audio per song, a tiny detector, one seed, in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, in_work, parse_args, run_logged, set_options  # noqa: E402
from _recipes import RECIPES, recipe_options  # noqa: E402

from pipeline.corpora.demo import DemoConfig, generate  # noqa: E402

RULES = ("windows", "excerpts", "bound", "catalog")
REPORTED = ("drums", "bass", "vocals")  # the sources of the goal (the paper's "other" is not calibratable)
SMOKE = {"calibration": 2, "catalog": 3, "train": 2, "valid": 1, "test": 1, "seeds": 1, "stem_seconds": [6.0, 8.0],
         "catalog_seconds": [8.0, 10.0], "work": None, "threads": 1, "min_windows": 5, "smoke_recipes": True,
         "curve_step": 0.05}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=int, default=48, help="calibration songs (choose the thresholds)")
    parser.add_argument("--catalog", type=int, default=200, help="catalog songs (measured against their truth)")
    parser.add_argument("--train", type=int, default=24, help="training songs of the detector")
    parser.add_argument("--valid", type=int, default=6, help="validation songs (early stopping)")
    parser.add_argument("--test", type=int, default=12, help="test songs (the held-out AUC)")
    parser.add_argument("--seeds", type=int, default=3, help="corpus and pipeline seeds 0, 1, ...")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--widths", nargs="+", type=float, default=[],
                        help="train each recipe at each of these widths (channel multipliers; rows named "
                             "RECIPE@WIDTH), instead of the recipe's own")
    parser.add_argument("--stem-seconds", type=float, nargs=2, default=[20.0, 40.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--catalog-seconds", type=float, nargs=2, default=[20.0, 60.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--min-windows", type=int, default=100, help="[Calibrate] min_windows")
    parser.add_argument("--curve-step", type=float, default=0.01,
                        help="the yield curve's thresholds: every STEP, and every STEP / 10 above 1 - STEP")
    parser.add_argument("--threads", type=int, default=0, help="[silentmine] threads (0: every core)")
    parser.add_argument("--work", default="/tmp/silentmine-yield", help="corpora and outputs (kept, reused)")
    parser.add_argument("--smoke-recipes", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE, argv)
    if args.seeds < 1 or args.calibration < 1 or args.catalog < 1 or args.train < 1:
        parser.error("--seeds, --calibration, --catalog and --train must be >= 1")
    in_work(benchmark, args, "silentmine-yield-")


def variants(args: argparse.Namespace) -> dict[str, dict]:
    """Row label -> ``[TrainDetector]`` parameters: each recipe, at each of ``--widths`` if given."""
    recipes = {name: recipe_options(name, args.smoke_recipes) for name in args.recipes}
    if not args.widths:
        return recipes
    return {f"{name}@{width:g}": {**options, "width": width}
            for name, options in recipes.items() for width in args.widths}


def curve_thresholds(step: float) -> tuple[float, ...]:
    """Every ``step`` from ``step`` to ``1 - step``, then every ``step / 10`` up to 1 (excluded)."""
    coarse = np.arange(step, 1.0 - 1.5 * step, step)
    return tuple(np.round(np.concatenate([coarse, np.arange(1.0 - step, 1.0 - step / 20, step / 10)]), 4))


def run_seed(args: argparse.Namespace, work: Path, seed: int) -> tuple[list[dict], list[str]]:
    """Rows of the table (and context lines) of one seed, every recipe and rule."""
    import tasks
    from pipeline.mining.calibration import read_thresholds
    from pipeline.mining.ground_truth import oracle_rows, rule_table, yield_curve
    from pipeline.storage.journal import read_journal

    tag = f"c{args.calibration}-k{args.catalog}"
    corpus = work / f"corpus-{tag}-s{seed}"
    started = time.perf_counter()
    config = DemoConfig(seed=seed, n_train=args.train, n_valid=args.valid, n_calibration=args.calibration,
                        n_test=args.test, n_catalog=args.catalog, stem_duration_s=tuple(args.stem_seconds),
                        catalog_duration_s=tuple(args.catalog_seconds))
    summary = generate(corpus, config, workers=2)
    context = [f"seed {seed}: corpus {corpus} ({time.perf_counter() - started:.0f} s)"]
    data_root = work / f"data-{tag}-s{seed}"
    truth = pd.read_parquet(corpus / "catalog_truth.parquet")
    rows = []
    for recipe, options in variants(args).items():
        set_options({"silentmine": {"data_root": data_root, "stem_root": corpus / "stems",
                                    "catalog": corpus / "catalog", "seed": seed, "threads": args.threads},
                     "ScanCatalog": {"shard_size": 8},
                     "TrainDetector": options,
                     "Calibrate": {"min_windows": args.min_windows, "target_fraction": 0.95, "target_db": -20.0,
                                   "run_rule": '{"min_seconds": 5.0, "max_gap": 0}'}})
        log = work / f"run-{tag}-s{seed}.log"
        run_logged("DetectorReport", 1, log)
        quality = pd.read_parquet(tasks.DetectorReport().folder / "quality.parquet").set_index("source")
        tables = {}
        for rule in ("catalog", *[r for r in args.rules if r != "catalog"]):  # the catalog rule runs the detection
            set_options({"Calibrate": {"rule": rule}})
            run_logged("Calibrate", 1, log)
            if rule in args.rules:
                tables[rule] = pd.read_parquet(tasks.Calibrate().thresholds).set_index("source")
        detections = tasks.Calibrate(rule="catalog").shard_jobs()
        probabilities = pd.concat([pd.read_parquet(job.probabilities) for job in detections],
                                  ignore_index=True)
        tracks = pd.read_parquet(tasks.ScanCatalog().tracks_file, columns=["track_id", "path"])
        catalog_root = corpus / "catalog"
        measured = rule_table(probabilities, tracks, {r: read_thresholds(tasks.Calibrate(rule=r).thresholds)
                                                      for r in args.rules}, truth, catalog_root)
        curve = yield_curve(probabilities, tracks, truth, catalog_root, thresholds=curve_thresholds(args.curve_step))
        measured = pd.concat([measured, oracle_rows(curve)], ignore_index=True)
        detector = tasks.TrainDetector()
        journal = read_journal(data_root)
        trained = journal[(journal["stage"] == "detector") & (journal["key"] == detector.key)
                          & (journal["status"] == "done")]
        detected = journal[(journal["stage"] == "detect") & (journal["key"] == detections[0].key)
                           & (journal["status"] == "done")]
        speed = summary["catalog"]["duration_s"] / detected.drop_duplicates("shard")["body_s"].sum()
        counts = detector.manifest["counts"]
        context.append(f"seed {seed} {recipe}: detector {detector.key}, {counts['epochs']} epochs (best "
                       f"{counts['best_epoch']}), trained in {trained['body_s'].min():.0f} s here (machine load "
                       f"varies), remix audio featurised {counts.get('remix_seconds', 0):.0f} s; catalog detection "
                       f"{speed:.0f} s of audio per s")
        for r in measured.itertuples():
            stated = tables.get(r.rule)
            row = {"seed": seed, "recipe": recipe, "source": r.source, "rule": r.rule, "threshold": r.threshold,
                   "estimate": np.nan, "bound": np.nan, "purity": r.fraction_silent, "recall": r.recall,
                   "hours": r.extracted_hours, "n_true_runs": r.n_true_runs,
                   "auc_20": float(quality.loc[r.source, "auc_20"]), "detect_speed": speed}
            if stated is not None:
                row["estimate"] = float(stated.loc[r.source, "estimate"])
                row["bound"] = float(stated.loc[r.source, "bound"])
            rows.append(row)
    return rows, context


def benchmark(args: argparse.Namespace, work: Path) -> None:
    from pipeline.mining.ground_truth import ORACLE_RULE

    work.mkdir(parents=True, exist_ok=True)
    rows, context = [], []
    for seed in range(args.seeds):
        seed_rows, seed_context = run_seed(args, work, seed)
        rows += seed_rows
        context += seed_context
        for line in seed_context:
            print(line, flush=True)
    table = pd.DataFrame(rows)
    # named by everything that selects its rows, so that runs of other recipes, widths or seeds
    # sharing --work do not overwrite each other's table
    out = work / f"yield-c{args.calibration}-k{args.catalog}-s{args.seeds}-{'+'.join(variants(args))}.csv"
    table.to_csv(out, index=False)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 1000)
    print(f"\nevery seed, recipe, source and rule ({out}):")
    shown = table.assign(**{c: (100 * table[c]).round(1) for c in ("estimate", "bound", "purity", "recall")},
                         hours=table["hours"].round(3), threshold=table["threshold"].round(3))
    print(shown.drop(columns=["auc_20", "n_true_runs", "detect_speed"]).to_string(index=False))
    summary = summarise(table, args.seeds)
    print(f"\nover {args.seeds} seed(s): purity and recall on the catalog, % "
          "(recall gap: the oracle's mean recall - the rule's)")
    print(summary.to_string(index=False))
    for r in summary[summary["source"].isin(REPORTED)].itertuples():
        name = f"{r.recipe}, {r.rule}, {r.source}"
        if r.rule == ORACLE_RULE:
            figure(f"mean recall: {r.recipe}, oracle, {r.source}", r.mean_recall, "%")
            continue
        figure(f"seeds with catalog purity >= 95 %: {name}", r.seeds_pure, f"of {args.seeds}", digits=0)
        figure(f"mean recall: {name}", r.mean_recall, "%", f"gap to the oracle {r.recall_gap:+.1f} points")
        if np.isfinite(r.worst_purity):
            figure(f"worst seed's catalog purity: {name}", r.worst_purity, "%")
    for recipe, speed in table.groupby("recipe", sort=False)["detect_speed"].mean().items():
        figure(f"catalog detection, mean: {recipe}", speed, "s of audio per s", "the journal's body seconds of "
               "DetectCatalog, features read included; machine load varies", digits=0)
    for (recipe, source), auc in table.groupby(["recipe", "source"])["auc_20"].mean().items():
        if source in REPORTED and np.isfinite(auc):
            figure(f"held-out ROC AUC at -20 dB, mean: {recipe}, {source}", auc, "AUC", digits=3)
    print(json.dumps({"table": str(out)}))


def summarise(table: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """Per recipe, rule and source over the seeds: seeds whose purity reached 95 %, the worst
    purity (NaN when a seed extracted nothing), mean recall, mean threshold and the gap of the
    mean recall to the oracle's."""
    from pipeline.mining.ground_truth import ORACLE_RULE

    oracle = table[table["rule"] == ORACLE_RULE].groupby(["recipe", "source"])["recall"].mean()
    rows = []
    for (recipe, rule, source), group in table.groupby(["recipe", "rule", "source"], sort=False):
        purity = group["purity"].to_numpy(np.float64)
        mean_recall = 100 * float(group["recall"].fillna(0).mean())
        rows.append({"recipe": recipe, "rule": rule, "source": source,
                     "seeds_pure": int((purity >= 0.95 - 1e-12).sum()),
                     "worst_purity": 100 * float(purity.min()) if np.isfinite(purity).all() else np.nan,
                     "mean_recall": mean_recall, "recall_gap": 100 * float(oracle[(recipe, source)]) - mean_recall,
                     "mean_threshold": float(group["threshold"].mean()), "mean_hours": float(group["hours"].mean()),
                     "seeds": seeds})
    return pd.DataFrame(rows).round(3)


if __name__ == "__main__":
    main()
