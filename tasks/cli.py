"""The ``silentmine`` command: demo data, pipeline runs, and the demo end to end.

    silentmine demo-data [--out data/demo] [--seed 0] [--tiny]
    silentmine run [TASK] [--workers N] [--scheduler-host H --scheduler-port P] [luigi args...]
    silentmine demo            # demo-data, then `run All`, then a summary of what was made
    silentmine audit           # the HTML report of the D_i (runs what it needs)
    silentmine verify [RUN]    # check the D_i index against its audio and the catalog
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _demo_data(args: argparse.Namespace) -> int:
    from pipeline.corpora.demo import DemoConfig, generate

    config = DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed)
    started = time.time()
    summary = generate(Path(args.out), config, force=args.force)
    print(f"demo data in {args.out} ({time.time() - started:.0f} s): {json.dumps(summary, default=str)}")
    return 0


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def effective_threads(configured: int, workers: int, cores: int) -> int:
    """torch/BLAS threads per worker process: ``configured`` when it is positive, else the
    ``cores`` shared among the ``workers`` processes of this machine (at least 1)."""
    return configured if configured > 0 else max(1, cores // max(1, workers))


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    for name in variables:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


_progress = {"done": 0, "failed": 0}


def _install_progress() -> None:
    """Print one line per finished task, so a long run shows where it is."""
    import luigi

    if getattr(_install_progress, "installed", False):
        return
    _install_progress.installed = True

    @luigi.Task.event_handler(luigi.Event.SUCCESS)
    def _success(task):
        _progress["done"] += 1
        print(f"[silentmine] done ({_progress['done']}): {task.task_id}", flush=True)

    @luigi.Task.event_handler(luigi.Event.FAILURE)
    def _failure(task, exception):
        _progress["failed"] += 1
        print(f"[silentmine] FAILED: {task.task_id}: {exception}", file=sys.stderr, flush=True)


def print_summary(wall_s: float) -> None:
    """What the run produced and where: every final stage's folder and its counts."""
    from tasks import All

    print(f"\nsilentmine: pipeline finished in {wall_s:.0f} s")
    for name, task in All().requires().items():
        manifest = json.loads(Path(task.output().path).read_text())
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if not isinstance(v, (dict, list)))
        print(f"  {name:<12} {task.folder}  {counts}")
        for line in manifest.get("summary", []):
            print(f"      {line}")


def _worker_factory():
    """Luigi's worker factory, with workers that wait while other workers run their tasks.

    A Luigi worker with nothing to run exits (``[worker] keep_alive = false``), even when
    another worker attached to the same ``luigid`` is running a task whose dependents it could
    take; this one stays while any task it scheduled is running elsewhere, and leaves when all
    are done, or when what is left waits on a failure.
    """
    import luigi.interface
    import luigi.worker

    class SharingWorker(luigi.worker.Worker):
        def _keep_alive(self, get_work_response) -> bool:
            return super()._keep_alive(get_work_response) or bool(get_work_response.running_tasks)

    class Factory(luigi.interface._WorkerSchedulerFactory):
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
    import luigi.interface
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
    with CmdlineParser.global_instance(args) as parser:  # imports `tasks`; sees --Task-param options
        from tasks.base import config
        from tasks.inputs import forget_inputs

        threads = effective_threads(config().threads, workers, cores)
        _set_threads(threads, unset)
        print(f"[silentmine] {workers} worker process{'es' if workers > 1 else ''} of {threads} "
              f"torch/BLAS thread{'s' if threads > 1 else ''} each ({cores} cores)", flush=True)
        forget_inputs()  # see the catalog and stem set as they are now
        _install_progress()
        factory = _worker_factory()
        root = parser.get_task_obj()
        for scan in _scans(root):
            if not scan.complete():
                result = luigi.interface._schedule_and_run([scan], factory)
                if not scan.complete():
                    print(result.summary_text)
                    return False
        forget_inputs()  # the catalog stages now see the scan, and list its shards
        root = parser.get_task_obj()
        result = luigi.interface._schedule_and_run([root], factory)
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
    generate(demo_root, DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed))
    started = time.time()
    ok = run_tasks("All", workers=args.workers)
    if not ok:
        print("demo: the pipeline failed; see the log above", file=sys.stderr)
        return 1
    print_summary(time.time() - started)
    from pipeline.mining.verify import verify_cli

    status = verify_cli(_current("Extract").folder)
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


def _verify(args: argparse.Namespace) -> int:
    from pipeline.mining.verify import verify_cli

    run_dir = args.run_dir or _current("Extract").folder
    return verify_cli(run_dir, check_catalog=not args.no_catalog)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="silentmine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    demo_data = commands.add_parser("demo-data", help="generate the synthetic demo stem set and catalog")
    demo_data.add_argument("--out", default="data/demo")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--tiny", action="store_true", help="a few short tracks, for smoke tests")
    demo_data.add_argument("--force", action="store_true",
                           help="write the corpus again even if a complete one of the same config is there")
    demo_data.set_defaults(func=_demo_data)

    run = commands.add_parser("run", help="run a pipeline task and its dependencies (default: All)")
    run.add_argument("task", nargs="?", default="All")
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--scheduler-host", default=None, help="central luigid host (default: local scheduler)")
    run.add_argument("--scheduler-port", type=int, default=None)
    run.add_argument("luigi_args", nargs=argparse.REMAINDER, help="further Luigi arguments, e.g. --Calibrate-target-db -25")
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

    verify = commands.add_parser("verify", help="check a D_i run: audio, checksums, catalog files, counts")
    verify.add_argument("run_dir", nargs="?", default=None, help="extraction run folder (default: the configured run)")
    verify.add_argument("--no-catalog", action="store_true", help="skip re-hashing the catalog files")
    verify.set_defaults(func=_verify)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
