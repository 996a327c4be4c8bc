"""The ``silentmine`` command: demo data, pipeline runs, and the demo end to end.

    silentmine demo-data [--out data/demo] [--seed 0] [--tiny] [--n-train N] [--n-valid N]
                         [--n-calibration N] [--n-test N] [--n-catalog N] [--catalog-stems]
    silentmine run [TASK] [--workers N] [--scheduler-host H --scheduler-port P] [luigi args...]
    silentmine demo            # demo-data, then `run All`, then a summary of what was made
    silentmine audit           # the HTML report of the D_i (runs what it needs)
    silentmine verify [RUN] [--rehash]  # check the D_i (shards, audio, catalog) and the DAG's other outputs
    silentmine status [TASK] [--json]        # each stage: complete, partial, missing, and why
    silentmine gc [--delete] [--keep CFG...] # outputs the configuration no longer reaches
    silentmine export --format lhotse|hf|webdataset|nemo|csv|musdb|remix-pairs [--out DIR] [--run-dir RUN]
    silentmine report [--out PNG] [--all]    # the journal: timeline, throughput, time left
    silentmine separate FILE... --run RUN --out DIR [--device cpu]  # stems of any file, FLAC
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from pipeline.threads import THREAD_VARIABLES, available_cores, effective_threads, set_process_threads

# DemoConfig fields settable on the command line
DEMO_COUNTS = ("n_train", "n_valid", "n_calibration", "n_test", "n_catalog")


def _demo_data(args: argparse.Namespace) -> int:
    from pipeline.corpora.demo import DemoConfig, generate

    config = DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed)
    counts = {name: getattr(args, name) for name in DEMO_COUNTS if getattr(args, name) is not None}
    try:
        config = dataclasses.replace(config, **counts)
    except ValueError as err:  # DemoConfig validates the counts
        print(f"silentmine demo-data: {err}", file=sys.stderr)
        return 2
    started = time.time()
    summary = generate(Path(args.out), config, workers=available_cores(), force=args.force,
                       catalog_stems=args.catalog_stems)
    print(f"demo data in {args.out} ({time.time() - started:.0f} s): {json.dumps(summary, default=str)}")
    return 0


def _configured_threads() -> int:
    """``[silentmine] threads`` from the Luigi configuration files (before torch is imported)."""
    import luigi.configuration

    return luigi.configuration.get_config().getint("silentmine", "threads", 0)


def _set_option(section: str, name: str, value: str) -> None:
    """Set an option of the live Luigi configuration (this process and the workers it forks)."""
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not config.has_section(section):
        config.add_section(section)
    config.set(section, name, value)


def _set_threads(threads: int, variables: tuple[str, ...] = ()) -> None:
    """Make ``threads`` the thread count of every stage this process (and the worker processes
    Luigi forks from it) runs: the ``[silentmine] threads`` option every stage reads, torch's
    intra-op pool, and the environment ``variables`` (OpenMP/MKL/OpenBLAS: they act only on
    libraries loaded after they are set)."""
    _set_option("silentmine", "threads", str(threads))
    set_process_threads(threads, variables)


_results = None  # while `run_tasks` runs: shared counts (done, failed) of the tasks its workers ran


def _count_result(task, failed: bool, reason: object = None) -> None:
    """Count and print one task result, in the process that ran the task.

    A Luigi event handler: it fires in this process (``--workers 1``) or in the worker process
    Luigi forked for the task, which shares the counts with this one (``multiprocessing``
    memory made before the fork); it does nothing outside ``run_tasks``.  With a central
    ``luigid`` each ``silentmine run`` counts what its own workers ran.  ``reason``: the
    failure's exception or message.
    """
    if _results is None:
        return
    with _results.get_lock():
        if failed:
            _results[1] += 1
            lines = [line for line in str(reason or "").splitlines() if line.strip()]
            text = f"{type(reason).__name__}: {lines[-1]}" if isinstance(reason, BaseException) and lines else \
                (lines[-1] if lines else "no reason given")
            print(f"[silentmine] FAILED ({_results[1]}): {task.task_id}: {text}", file=sys.stderr, flush=True)
        else:
            _results[0] += 1
            print(f"[silentmine] done ({_results[0]}): {task.task_id}", flush=True)


def _watch_results() -> None:
    """Make fresh shared counts and, once per process, hang `_count_result` on Luigi's events:
    success and failure (fired where the task ran), a worker process that died or timed out
    (fired in the worker)."""
    import multiprocessing

    import luigi

    global _results
    if _results is None:
        for event, failed in ((luigi.Event.SUCCESS, False), (luigi.Event.FAILURE, True),
                              (luigi.Event.PROCESS_FAILURE, True), (luigi.Event.TIMEOUT, True)):
            luigi.Task.event_handler(event)(
                lambda task, reason=None, failed=failed: _count_result(task, failed, reason))
    _results = multiprocessing.Array("i", 2)


def counted() -> tuple[int, int]:
    """``(done, failed)``: the tasks the workers of the last ``run_tasks`` ran."""
    return (int(_results[0]), int(_results[1])) if _results is not None else (0, 0)


def print_summary(wall_s: float) -> None:
    """What the run produced and where: every final stage's folder and its counts."""
    from tasks import All

    done, failed = counted()
    failed_text = f", {failed} failed" if failed else ""
    print(f"\nsilentmine: pipeline finished in {wall_s:.0f} s ({done} tasks run{failed_text})")
    for name, task in All().requires().items():
        manifest = json.loads(Path(task.output().path).read_text())
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if not isinstance(v, (dict, list)))
        print(f"  {name:<12} {task.folder}  {counts}")
        for line in manifest.get("summary", []):
            print(f"      {line}")


def _scans(root) -> list:
    """The catalog scans ``root`` depends on (found through ``requires()``, shards skipped)."""
    import luigi.task

    from tasks.base import ShardStage
    from tasks.catalog import ScanCatalog

    seen, stack, found = set(), [root], []
    while stack:
        task = stack.pop()
        if task.task_id in seen or isinstance(task, ShardStage):
            continue
        seen.add(task.task_id)
        if isinstance(task, ScanCatalog):
            found.append(task)
        else:
            stack.extend(luigi.task.flatten(task.requires()))
    return found


def run_tasks(task: str, workers: int = 1, scheduler_host: str | None = None,
              scheduler_port: int | None = None, extra: list[str] | None = None) -> bool:
    """Run ``task`` (a class of the ``tasks`` package) and its dependencies; True on success.

    Without ``scheduler_host`` the local scheduler is used; with it, workers join the
    central ``luigid`` scheduler there, so several processes (on one or several machines
    sharing the data root) split one run: every task runs once, in whichever worker the
    scheduler hands it to.  The catalog scan runs first, on its own, so that every worker
    then sees all the catalog's shards.  Each of the ``workers`` processes gets
    ``[silentmine] threads`` torch/BLAS threads, or, when that is 0, the cores divided by
    ``workers``.  True when no task failed and ``task`` is complete (parts may have been run
    by other workers).

    The workers keep alive (``[worker] keep_alive``): one with nothing to run waits while tasks
    it scheduled are pending, run by other workers, and leaves when they are done or only wait
    on a failed stage (a stage is not retried: ``Stage.retry_count``); while what is left runs in
    other workers, it looks again (:func:`_build_while_others_run`).
    """
    from luigi.cmdline_parser import CmdlineParser
    from luigi.execution_summary import LuigiStatusCode

    args = ["--module", "tasks", task, "--workers", str(workers), "--no-lock", "--worker-keep-alive", *(extra or [])]
    if scheduler_host:
        args += ["--scheduler-host", scheduler_host]
        if scheduler_port:
            args += ["--scheduler-port", str(scheduler_port)]
    else:
        args += ["--local-scheduler"]
    cores = available_cores()
    unset = tuple(name for name in THREAD_VARIABLES if name not in os.environ)  # the user's are kept
    for name in unset:  # before torch and numpy are imported (command-line options are seen below)
        os.environ[name] = str(effective_threads(_configured_threads(), workers, cores))
    success = (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY)
    _watch_results()
    with CmdlineParser.global_instance(args) as parser:  # imports `tasks`; sees --Task-param options
        from tasks.base import config
        from tasks.inputs import forget_inputs

        threads = effective_threads(config().threads, workers, cores)
        _set_threads(threads, unset)
        print(f"[silentmine] {workers} worker process{'es' if workers > 1 else ''} of {threads} "
              f"torch/BLAS thread{'s' if threads > 1 else ''} each ({cores} cores)", flush=True)
        forget_inputs()  # see the catalog and stem set as they are now
        env = dict(workers=workers, no_lock=True, local_scheduler=not scheduler_host)
        if scheduler_host:
            env.update(scheduler_host=scheduler_host, **({"scheduler_port": scheduler_port} if scheduler_port else {}))
        root = parser.get_task_obj()
        for scan in _scans(root):
            result = _build_while_others_run(scan, env)
            if not scan.complete():
                print(result.summary_text)
                return False
        forget_inputs()  # the catalog stages now see the scan, and list its shards
        root = parser.get_task_obj()
        result = _build_while_others_run(root, env)
        print(result.summary_text)
        if result.status in success:
            return True
        forget_inputs()
        return result.status == LuigiStatusCode.NOT_RUN and parser.get_task_obj().complete()


OTHERS_POLL_S = 2.0  # how often a worker left without work looks again at a task other workers run


def _build_while_others_run(task, env: dict):
    """``luigi.build([task])`` again, every :data:`OTHERS_POLL_S` seconds, for as long as it ends
    without a failure while ``task`` is not complete: what is left is running in other workers
    (a worker keeps alive only while it has pending tasks, and one that another worker runs is
    not pending for it).  If that worker dies, the scheduler hands the task to this one.  With the
    local scheduler there are no other workers: one build."""
    import luigi
    from luigi.execution_summary import LuigiStatusCode

    while True:
        result = luigi.build([task], detailed_summary=True, **env)
        if (env["local_scheduler"] or task.complete()
                or result.status not in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY)):
            return result
        time.sleep(OTHERS_POLL_S)


def _run_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--workers", type=int, default=None)
    options.add_argument("--scheduler-host", default=None)
    options.add_argument("--scheduler-port", type=int, default=None)
    return options


def _run(args: argparse.Namespace) -> int:
    # Options after TASK land in the Luigi arguments (argparse.REMAINDER): take ours back out.
    late, luigi_args = _run_options().parse_known_args(args.luigi_args)
    for name in ("workers", "scheduler_host", "scheduler_port"):
        if getattr(late, name) is not None:
            setattr(args, name, getattr(late, name))
    ok = run_tasks(args.task, args.workers, args.scheduler_host, args.scheduler_port, luigi_args)
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    from pipeline.corpora.demo import DemoConfig, generate
    from tasks.base import config

    stems = Path(config().stem_root)
    demo_root = stems.parent
    # one synthesis process per core: the corpus does not depend on it (pipeline.corpora.demo)
    # the catalog's true stems only when the configuration reads them (a ladder rung: [silentmine] catalog_stems)
    generate(demo_root, DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed),
             workers=available_cores(), catalog_stems=bool(config().catalog_stems))
    # the demo catalog's known volumes, which generate() writes beside the catalog
    _set_option("silentmine", "catalog_truth", str(demo_root / "catalog_truth.parquet"))
    started = time.time()
    ok = run_tasks("All", workers=args.workers)
    if not ok:
        print("demo: the pipeline failed; see the log above", file=sys.stderr)
        return 1
    print_summary(time.time() - started)
    status = verify_configured()
    print(f"\naudit report: {_current('Audit').report.resolve()}")
    return status


def _current(task_name: str):
    """The task instance of the current configuration (to find its output folder)."""
    import tasks
    from tasks.inputs import forget_inputs

    forget_inputs()
    return getattr(tasks, task_name)()


def _audit(args: argparse.Namespace) -> int:
    if args.run_dir:
        from pipeline.mining.audit import write_audit

        report = write_audit(args.run_dir, args.calibration, args.out, per_source=args.per_source)
    else:
        if not run_tasks("Audit", workers=args.workers):
            return 1
        report = _current("Audit").report
    print(f"audit report: {Path(report).resolve()}")
    return 0


def stage_output_problems(root) -> tuple[list, list[str]]:
    """Cheap checks of the finished outputs under ``root`` besides the D_i: every finished feature
    shard against its index and marker, every detector and separator checkpoint loads with
    ``torch.load(weights_only=True)``.  Returns the problems and what was checked, in words."""
    from pipeline.mining.verify import check_checkpoint, check_feature_shard
    from tasks.detector import TrainDetector
    from tasks.features import CatalogFeatures
    from tasks.graph import walk
    from tasks.separator import TrainSeparator

    problems, shards, checkpoints = [], 0, 0
    for task in walk(root):
        if isinstance(task, CatalogFeatures) and task.complete():
            marker = json.loads(task.marker.read_text())
            problems += check_feature_shard(task.store, (marker.get("counts") or {}).get("tracks"))
            shards += 1
        elif isinstance(task, (TrainDetector, TrainSeparator)) and task.complete():
            problems += check_checkpoint(task.checkpoint if isinstance(task, TrainDetector) else task.best)
            checkpoints += 1
    return problems, [f"{shards} feature shard{'s' * (shards != 1)}",
                      f"{checkpoints} checkpoint{'s' * (checkpoints != 1)}"]


def verify_configured(check_catalog: bool = True, rehash_scan: bool = False) -> int:
    """``silentmine verify`` of the configured catalog's D_i and the other outputs of ``All``."""
    from pipeline.mining.verify import verify_cli

    extract = _current("Extract")
    if not extract.folder.is_dir():
        print(
            f"verify: the configured catalog has no D_i yet ({extract.folder}); run `silentmine run Extract`",
            file=sys.stderr,
        )
        return 1
    others, checked = stage_output_problems(_current("All"))
    return verify_cli(extract.dataset, check_catalog=check_catalog, others=others, checked=checked,
                      rehash_scan=rehash_scan)


def _verify(args: argparse.Namespace) -> int:
    if args.run_dir:
        from pipeline.mining.verify import verify_cli

        return verify_cli(args.run_dir, check_catalog=not args.no_catalog, rehash_scan=args.rehash)
    return verify_configured(check_catalog=not args.no_catalog, rehash_scan=args.rehash)


def _status(args: argparse.Namespace) -> int:
    from luigi.cmdline_parser import CmdlineParser

    from pipeline.storage.status import format_status

    as_json = args.json or "--json" in args.luigi_args  # also after TASK (argparse.REMAINDER)
    luigi_args = [a for a in args.luigi_args if a != "--json"]
    with CmdlineParser.global_instance(["--module", "tasks", args.task, *luigi_args]) as parser:
        from tasks.graph import pipeline_status

        try:
            statuses = pipeline_status(parser.get_task_obj())
        except (OSError, ValueError) as err:  # a configured input that is not there, a bad option
            print(f"status: {err}", file=sys.stderr)
            return 2
    print(json.dumps([s.to_json() for s in statuses], indent=2) if as_json else format_status(statuses))
    return 0


def _gc(args: argparse.Namespace) -> int:
    from pipeline.storage.gc import delete, format_plan
    from tasks.graph import gc_plan

    try:
        entries, root, notes = gc_plan(args.keep)
    except (OSError, ValueError) as err:
        print(f"gc: {err}", file=sys.stderr)
        return 2
    errors = delete(entries) if args.delete else []
    print("\n".join([*notes, format_plan(entries, root, deleted=args.delete)]))
    for line in errors:
        print(f"gc: {line}", file=sys.stderr)
    return 1 if errors else 0


def _separate(args: argparse.Namespace) -> int:
    from pipeline.separation.apply import separate_files
    from pipeline.storage.checkpoints import CheckpointError
    from tasks.base import config

    try:
        report = separate_files(args.files, args.run, args.out, config().data_root, device=args.device)
    except (CheckpointError, ValueError) as err:  # SeparateError is a ValueError
        print(f"silentmine separate: {err}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return report.exit_status


def _export_options(args: argparse.Namespace) -> dict:
    """The ``Export`` task's parameters that ``args`` gives for its format (``tasks.export``)."""
    from tasks.export import FORMAT_OPTIONS

    return {name: getattr(args, name) for name in FORMAT_OPTIONS.get(args.format, ())
            if getattr(args, name) is not None}


def _export(args: argparse.Namespace) -> int:
    from pipeline.exports import build_exports
    from pipeline.exports.remix_pairs import PAIRS, VALID_PAIRS

    options = _export_options(args)
    if args.run_dir and not args.out:
        print("export: --run-dir needs --out (a D_i folder holds only the D_i)", file=sys.stderr)
        return 2
    if args.run_dir or args.out:
        from tasks.base import config

        if args.run_dir:
            run = args.run_dir
        else:
            if not run_tasks("Extract", workers=args.workers):
                return 1
            run = _current("Extract").dataset
        if args.format in ("musdb", "remix-pairs"):
            options["seed"] = config().seed if args.seed is None else args.seed
        if args.format == "remix-pairs":
            options["stem_root"] = args.stem_root or config().stem_root
            options["pairs"] = {"train": options.pop("pairs", PAIRS), "valid": options.pop("valid_pairs", VALID_PAIRS)}
        try:
            result = build_exports(run, args.format, args.out, **options)
        except (OSError, ValueError) as err:
            print(f"export: {err}", file=sys.stderr)
            return 2
        print("\n".join(result.summary))
        return 0
    if args.stem_root:
        print("export: --stem-root goes with --out (the stage reads [silentmine] stem_root)", file=sys.stderr)
        return 2
    extra = ["--Export-format", args.format]
    for name, value in options.items():
        extra += [f"--Export-{name.replace('_', '-')}", str(value)]
    if not run_tasks("Export", workers=args.workers, extra=extra):
        return 1
    from luigi.cmdline_parser import CmdlineParser

    with CmdlineParser.global_instance(["--module", "tasks", "Export", *extra]) as parser:
        task = parser.get_task_obj()
        print("\n".join(task.manifest.get("summary") or []))
        print(f"export: {task.folder.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from luigi.cmdline_parser import CmdlineParser

    from pipeline.storage.journal import read_journal
    from pipeline.storage.report import latest_run, throughput, throughput_lines, time_left, timeline_png
    from tasks.base import config

    root = Path(config().data_root)
    journal = read_journal(root)
    if journal.empty:
        print(f"report: no journal under {root}: nothing has run", file=sys.stderr)
        return 1
    shown = journal if args.all else latest_run(journal)
    picture = timeline_png(
        shown, args.out or root / "report" / "timeline.png", title=f"silentmine: {len(shown)} task runs under {root}"
    )
    lines = throughput_lines(throughput(shown))
    remaining: dict[str, int] = {}
    try:
        with CmdlineParser.global_instance(["--module", "tasks", args.task]) as parser:
            from tasks.graph import pipeline_status

            for status in pipeline_status(parser.get_task_obj()):
                if status.state == "complete":
                    continue
                left = (status.shards_total - status.shards_done) if status.shards_total is not None else 1
                remaining[status.description.stage] = remaining.get(status.description.stage, 0) + left
    except (OSError, ValueError) as err:  # no catalog or stem set configured here: no estimate
        lines.append(f"time left: not estimated ({err})")
    else:
        lines += time_left(shown, remaining).lines()
    print("\n".join(lines))
    print(f"timeline: {Path(picture).resolve()}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from tasks.docs import main as docs_main

    return docs_main(["--check"] if args.check else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="silentmine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo_data = commands.add_parser("demo-data", help="generate the synthetic demo stem set and catalog")
    demo_data.add_argument("--out", default="data/demo")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--tiny", action="store_true", help="a few short tracks, for smoke tests")
    for name in DEMO_COUNTS:  # the first songs of each split do not depend on the counts
        demo_data.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                               help=f"songs ({name.removeprefix('n_')}; default: the demo's or --tiny's)")
    demo_data.add_argument(
        "--force", action="store_true", help="write the corpus again even if a complete one of the same config is there"
    )
    demo_data.add_argument("--catalog-stems", action="store_true",
                           help="also the catalog's true stems (catalog_stems/: the ladder's supervised + catalog "
                                "stems rung reads them through [silentmine] catalog_stems)")
    demo_data.set_defaults(func=_demo_data)

    run = commands.add_parser("run", help="run a pipeline task and its dependencies (default: All)")
    run.add_argument("task", nargs="?", default="All")
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--scheduler-host", default=None, help="central luigid host (default: local scheduler)")
    run.add_argument("--scheduler-port", type=int, default=None)
    run.add_argument(
        "luigi_args", nargs=argparse.REMAINDER, help="further Luigi arguments, e.g. --Calibrate-target-db -25"
    )
    run.set_defaults(func=_run)

    demo = commands.add_parser("demo", help="generate demo data, run the whole pipeline, summarise")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--tiny", action="store_true")
    demo.add_argument("--workers", type=int, default=1)
    demo.set_defaults(func=_demo)

    audit = commands.add_parser("audit", help="write the HTML audit report of the D_i (runs what it needs)")
    audit.add_argument("--run-dir", default=None, help="an extraction run folder (default: the configured run)")
    audit.add_argument("--calibration", default=None, help="its calibration folder (with --run-dir)")
    audit.add_argument("--out", default="audit-report", help="report folder (with --run-dir)")
    audit.add_argument("--per-source", type=int, default=50)
    audit.add_argument("--workers", type=int, default=1)
    audit.set_defaults(func=_audit)

    verify = commands.add_parser(
        "verify",
        help="check a D_i: shards, markers, audio, checksums, catalog files, "
        "counts; and feature shards and checkpoints of the configured DAG",
    )
    verify.add_argument(
        "run_dir",
        nargs="?",
        default=None,
        help="a D_i folder, data/datasets/<key> (default: the configured catalog's, and the DAG)",
    )
    verify.add_argument("--no-catalog", action="store_true", help="skip re-hashing the catalog files")
    verify.add_argument("--rehash", action="store_true",
                        help="also re-hash every file of the catalog scan (a rescan reuses the checksums of "
                             "files whose size and mtime are unchanged)")
    verify.set_defaults(func=_verify)

    status = commands.add_parser("status", help="each stage of the DAG: complete, partial, missing, and why")
    status.add_argument("task", nargs="?", default="All")
    status.add_argument("--json", action="store_true", help="a machine-readable list")
    status.add_argument("luigi_args", nargs=argparse.REMAINDER, help="Luigi arguments, e.g. --Calibrate-target-db -25")
    status.set_defaults(func=_status)

    collect = commands.add_parser("gc", help="list (and with --delete remove) outputs the configuration does not reach")
    collect.add_argument("--delete", action="store_true", help="remove what is listed as unreachable")
    collect.add_argument(
        "--keep", nargs="+", default=[], metavar="CFG", help="luigi.cfg files whose reachable outputs are kept too"
    )
    collect.set_defaults(func=_gc)

    from pipeline.exports import FORMATS
    from pipeline.exports.nemo import NEMO_REFERENCES
    from pipeline.exports.records import SHARD_SIZE

    export = commands.add_parser("export", help="the D_i in a format training code reads (runs what it needs)")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", default=None, help="write here (default: the keyed stage data/exports/<key>/)")
    export.add_argument(
        "--run-dir",
        default=None,
        help="a D_i folder, data/datasets/<key> (default: the configured catalog's), with --out",
    )
    export.add_argument(
        "--shard-size", type=int, default=SHARD_SIZE, help="excerpts per file (webdataset tars, hf parquet)"
    )
    export.add_argument(
        "--nemo-reference",
        choices=NEMO_REFERENCES,
        default="excerpt",
        help="nemo: the excerpt files, or the catalog files with offsets",
    )
    tracks = export.add_argument_group("musdb and remix-pairs (track folders; defaults: the Export task's)")
    tracks.add_argument("--pairs", type=int, default=None, help="remix-pairs: train pairs per source (default 100)")
    tracks.add_argument("--valid-pairs", type=int, default=None,
                        help="remix-pairs: valid pairs per source (default 10)")
    tracks.add_argument("--pair-seconds", type=float, default=None, help="remix-pairs: seconds per pair (default 5)")
    tracks.add_argument("--stem-root", default=None, help="remix-pairs with --out: the labelled stem set "
                                                          "(default: [silentmine] stem_root)")
    tracks.add_argument("--min-target-db", type=float, default=None,
                        help="remix-pairs: skip a pair whose stem is at most this loud in it (default -30 dB)")
    tracks.add_argument("--sample-rate", type=int, default=None, help="Hz of the written tracks (default 44100)")
    tracks.add_argument("--channels", type=int, default=None, help="channels of the written tracks (default 2)")
    tracks.add_argument("--valid-fraction", type=float, default=None,
                        help="share of catalog files whose excerpts go to valid/ (default 0.1)")
    tracks.add_argument("--seed", type=int, default=None, help="default: [silentmine] seed")
    export.add_argument("--workers", type=int, default=1)
    export.set_defaults(func=_export)

    report = commands.add_parser("report", help="the run journal: timeline PNG, throughput per stage, time left")
    report.add_argument("--out", default=None, help="the PNG (default: data/report/timeline.png)")
    report.add_argument("--all", action="store_true", help="the whole journal, not only the latest run")
    report.add_argument("--task", default="All", help="the task whose stages left give the time left")
    report.set_defaults(func=_report)

    docs = commands.add_parser("docs", help="rewrite the generated parts of docs/ from the code (tasks.docs)")
    docs.add_argument("--check", action="store_true", help="only say which pages differ; exit 1 if any")
    docs.set_defaults(func=_docs)

    separate = commands.add_parser("separate", help="separate audio files into one FLAC per source with a trained "
                                                    "separator (pipeline/separation/apply.py)")
    separate.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format the catalog reads)")
    separate.add_argument("--run", required=True,
                          help="a TrainSeparator key (or a unique prefix), its output folder, or a checkpoint file")
    separate.add_argument("--out", required=True, help="folder of the stems: OUT/<file name>/<source>.flac")
    separate.add_argument("--device", default="cpu", help="cpu or cuda")
    separate.set_defaults(func=_separate)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
