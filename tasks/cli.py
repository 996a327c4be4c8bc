"""The ``silentmine`` command: demo data, pipeline runs, and the demo end to end.

    silentmine demo-data [--out data/demo] [--seed 0] [--tiny] [--n-train N] [--n-valid N]
                         [--n-calibration N] [--n-test N] [--n-catalog N]
    silentmine run [TASK] [--workers N] [--scheduler-host H --scheduler-port P] [luigi args...]
    silentmine demo            # demo-data, then `run All`, then a summary of what was made
    silentmine audit           # the HTML report of the D_i (runs what it needs)
    silentmine verify [RUN]    # check the D_i (shards, audio, catalog) and the DAG's other outputs
    silentmine status [TASK] [--json]        # each stage: complete, partial, missing, and why
    silentmine gc [--delete] [--keep CFG...] # outputs the configuration no longer reaches
    silentmine export --format lhotse|hf|webdataset|nemo|csv [--out DIR] [--run-dir RUN]
    silentmine report [--out PNG] [--all]    # the journal: timeline, throughput, time left
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
    summary = generate(Path(args.out), config, workers=available_cores(), force=args.force)
    print(f"demo data in {args.out} ({time.time() - started:.0f} s): {json.dumps(summary, default=str)}")
    return 0


def _configured_threads() -> int:
    """``[silentmine] threads`` from the Luigi configuration files (before torch is imported)."""
    import luigi.configuration

    return luigi.configuration.get_config().getint("silentmine", "threads", 0)


def _set_threads(threads: int, variables: tuple[str, ...] = ()) -> None:
    """Make ``threads`` the thread count of every stage this process (and the worker processes
    Luigi forks from it) runs: the ``[silentmine] threads`` option every stage reads, torch's
    intra-op pool, and the environment ``variables`` (OpenMP/MKL/OpenBLAS: they act only on
    libraries loaded after they are set)."""
    import luigi.configuration

    config = luigi.configuration.get_config()
    if not config.has_section("silentmine"):
        config.add_section("silentmine")
    config.set("silentmine", "threads", str(threads))
    set_process_threads(threads, variables)


_progress = {"done": 0, "failed": 0}  # tasks finished by this process's workers in this run


def _report_result(task_id: str, status: str, explanation: object) -> None:
    """Count and print one task result received by a worker of this process.

    Called in this process for every task its workers ran, in this process (``--workers 1``)
    or in a worker process Luigi forked: those send their results back through Luigi's result
    queue (a task's own events fire in the process that ran it, where a counter would not
    reach this one).  With a central ``luigid`` each ``silentmine run`` counts what its own
    workers ran.  ``status`` is Luigi's (DONE, FAILED; PENDING, for a task that yielded new
    dependencies, is not a result); ``explanation`` is the failure's traceback text.
    """
    from luigi.task_status import DONE, FAILED

    if status == DONE:
        _progress["done"] += 1
        print(f"[silentmine] done ({_progress['done']}): {task_id}", flush=True)
    elif status == FAILED:
        _progress["failed"] += 1
        lines = [line for line in str(explanation or "").splitlines() if line.strip()]
        print(f"[silentmine] FAILED ({_progress['failed']}): {task_id}: {lines[-1] if lines else 'no reason given'}",
              file=sys.stderr, flush=True)


def print_summary(wall_s: float) -> None:
    """What the run produced and where: every final stage's folder and its counts."""
    from tasks import All

    failed = f", {_progress['failed']} failed" if _progress["failed"] else ""
    print(f"\nsilentmine: pipeline finished in {wall_s:.0f} s ({_progress['done']} tasks run{failed})")
    for name, task in All().requires().items():
        manifest = json.loads(Path(task.output().path).read_text())
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if not isinstance(v, (dict, list)))
        print(f"  {name:<12} {task.folder}  {counts}")
        for line in manifest.get("summary", []):
            print(f"      {line}")


def _worker_factory():
    """A worker-scheduler factory for ``luigi.build``, whose workers wait while other workers
    run their tasks and count the results they receive.

    A Luigi worker with nothing to run exits (``[worker] keep_alive = false``), even when
    another worker attached to the same ``luigid`` is running a task whose dependents it could
    take; this one stays while any task it scheduled is running elsewhere, and leaves when all
    are done, or when what is left waits on a failure.
    """
    import luigi.rpc
    import luigi.scheduler
    import luigi.worker

    class SharingWorker(luigi.worker.Worker):
        def _keep_alive(self, get_work_response) -> bool:
            return super()._keep_alive(get_work_response) or bool(get_work_response.running_tasks)

        def _add_task(self, *args, **kwargs):
            # Telling the scheduler the status of one of this worker's running tasks is passing
            # on its result (Worker._handle_next_task), here in the parent wherever it ran.
            running = kwargs.get("task_id") in self._running_tasks
            super()._add_task(*args, **kwargs)
            if running:
                _report_result(kwargs["task_id"], kwargs["status"], json.loads(kwargs.get("expl") or "null"))

    class Factory:  # the three methods luigi.build asks a worker_scheduler_factory for
        def create_local_scheduler(self):
            return luigi.scheduler.Scheduler(prune_on_get_work=True, record_task_history=False)

        def create_remote_scheduler(self, url):
            return luigi.rpc.RemoteScheduler(url)

        def create_worker(self, scheduler, worker_processes, assistant=False):
            return SharingWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant)

    return Factory()


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
    """
    import luigi
    from luigi.cmdline_parser import CmdlineParser
    from luigi.execution_summary import LuigiStatusCode

    args = ["--module", "tasks", task, "--workers", str(workers), "--no-lock", *(extra or [])]
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
    _progress.update(done=0, failed=0)
    with CmdlineParser.global_instance(args) as parser:  # imports `tasks`; sees --Task-param options
        from tasks.base import config
        from tasks.inputs import forget_inputs

        threads = effective_threads(config().threads, workers, cores)
        _set_threads(threads, unset)
        print(f"[silentmine] {workers} worker process{'es' if workers > 1 else ''} of {threads} "
              f"torch/BLAS thread{'s' if threads > 1 else ''} each ({cores} cores)", flush=True)
        forget_inputs()  # see the catalog and stem set as they are now
        factory = _worker_factory()
        env = dict(workers=workers, no_lock=True, local_scheduler=not scheduler_host)
        if scheduler_host:
            env.update(scheduler_host=scheduler_host, **({"scheduler_port": scheduler_port} if scheduler_port else {}))
        root = parser.get_task_obj()
        for scan in _scans(root):
            if not scan.complete():
                result = luigi.build([scan], worker_scheduler_factory=factory, detailed_summary=True, **env)
                if not scan.complete():
                    print(result.summary_text)
                    return False
        forget_inputs()  # the catalog stages now see the scan, and list its shards
        root = parser.get_task_obj()
        result = luigi.build([root], worker_scheduler_factory=factory, detailed_summary=True, **env)
        print(result.summary_text)
        if result.status in success:
            return True
        forget_inputs()
        return result.status == LuigiStatusCode.NOT_RUN and parser.get_task_obj().complete()


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
    generate(demo_root, DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed),
             workers=available_cores())
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


def verify_configured(check_catalog: bool = True) -> int:
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
    return verify_cli(extract.dataset, check_catalog=check_catalog, others=others, checked=checked)


def _verify(args: argparse.Namespace) -> int:
    if args.run_dir:
        from pipeline.mining.verify import verify_cli

        return verify_cli(args.run_dir, check_catalog=not args.no_catalog)
    return verify_configured(check_catalog=not args.no_catalog)


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


def _export(args: argparse.Namespace) -> int:
    from pipeline.mining.export import build_exports

    options = dict(shard_size=args.shard_size, nemo_reference=args.nemo_reference)
    if args.run_dir and not args.out:
        print("export: --run-dir needs --out (a D_i folder holds only the D_i)", file=sys.stderr)
        return 2
    if args.run_dir or args.out:
        if args.run_dir:
            run = args.run_dir
        else:
            if not run_tasks("Extract", workers=args.workers):
                return 1
            run = _current("Extract").dataset
        try:
            result = build_exports(run, args.format, args.out, **options)
        except (OSError, ValueError) as err:
            print(f"export: {err}", file=sys.stderr)
            return 2
        print("\n".join(result.summary))
        return 0
    extra = [
        "--Export-format",
        args.format,
        "--Export-shard-size",
        str(args.shard_size),
        "--Export-nemo-reference",
        args.nemo_reference,
    ]
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
    from pipeline.storage.report import last_session, throughput, throughput_lines, time_left, timeline_png
    from tasks.base import config

    root = Path(config().data_root)
    journal = read_journal(root)
    if journal.empty:
        print(f"report: no journal under {root}: nothing has run", file=sys.stderr)
        return 1
    shown = journal if args.all else last_session(journal)
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

    from pipeline.mining.export import FORMATS, NEMO_REFERENCES, SHARD_SIZE

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
    export.add_argument("--workers", type=int, default=1)
    export.set_defaults(func=_export)

    report = commands.add_parser("report", help="the run journal: timeline PNG, throughput per stage, time left")
    report.add_argument("--out", default=None, help="the PNG (default: data/report/timeline.png)")
    report.add_argument("--all", action="store_true", help="the whole journal, not its latest session")
    report.add_argument("--task", default="All", help="the task whose stages left give the time left")
    report.set_defaults(func=_report)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
