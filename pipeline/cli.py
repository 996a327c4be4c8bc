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
    from pipeline.demo_data import DemoConfig, generate

    config = DemoConfig.tiny(seed=args.seed) if args.tiny else DemoConfig(seed=args.seed)
    started = time.time()
    summary = generate(Path(args.out), config)
    print(f"demo data in {args.out} ({time.time() - started:.0f} s): {json.dumps(summary, default=str)}")
    return 0


def _set_threads() -> None:
    """Give torch the configured thread count before any stage runs."""
    import torch

    from tasks.base import config

    threads = config().threads or os.cpu_count() or 1
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


def run_tasks(task: str, workers: int = 1, scheduler_host: str | None = None,
              scheduler_port: int | None = None, extra: list[str] | None = None) -> bool:
    """Run ``task`` (a class of the ``tasks`` package) and its dependencies; True on success.

    Without ``scheduler_host`` the local scheduler is used; with it, workers join the
    central ``luigid`` scheduler there, so several machines can share one catalog run.
    """
    import luigi
    import luigi.interface

    import tasks  # noqa: F401  (registers every task class)
    from tasks.inputs import forget_inputs

    forget_inputs()  # see the catalog and stem set as they are now
    _install_progress()
    _set_threads()
    args = ["--module", "tasks", task, "--workers", str(workers), *(extra or [])]
    if scheduler_host:
        args += ["--scheduler-host", scheduler_host]
        if scheduler_port:
            args += ["--scheduler-port", str(scheduler_port)]
    else:
        args += ["--local-scheduler"]
    result = luigi.interface._run(cmdline_args=args, detailed_summary=True)
    print(result.summary_text)
    return result.status in (luigi.execution_summary.LuigiStatusCode.SUCCESS,
                             luigi.execution_summary.LuigiStatusCode.SUCCESS_WITH_RETRY)


def _run(args: argparse.Namespace) -> int:
    ok = run_tasks(args.task, args.workers, args.scheduler_host, args.scheduler_port, args.luigi_args)
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    from pipeline.demo_data import DemoConfig, generate
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
    from pipeline.verify import verify_cli

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
        from pipeline.audit import write_audit

        report = write_audit(args.run_dir, args.calibration, args.out, per_source=args.per_source)
    else:
        if not run_tasks("Audit", workers=args.workers):
            return 1
        report = _current("Audit").report
    print(f"audit report: {Path(report).resolve()}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipeline.verify import verify_cli

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
