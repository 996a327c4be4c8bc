"""What every script in ``benchmarks/`` shares: ``--smoke`` and the figure lines it prints.

Each figure is one line ``figure: NAME = VALUE UNIT  (NOTE)`` (other lines are context), in a
full run and with ``--smoke`` (tiny sizes, one repeat: seconds of work) alike;
``tests/test_benchmarks.py`` runs every script with ``--smoke`` and reads the lines with
:data:`FIGURE`.  Scripts run as ``python benchmarks/NAME.py`` import this module as ``_common``
(the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

FIGURE = re.compile(r"^figure: (?P<name>\S.*?) = (?P<value>\S+) (?P<unit>\S.*?)(?:  \((?P<note>.*)\))?$")


def figure(name: str, value: float, unit: str, note: str = "", digits: int = 1) -> None:
    """Print one figure line: ``value`` with ``digits`` decimals, its ``unit`` and an optional ``note``."""
    print(f"figure: {name} = {value:.{digits}f} {unit}" + (f"  ({note})" if note else ""), flush=True)


def parse_args(parser: argparse.ArgumentParser, smoke: dict[str, Any],
               argv: list[str] | None = None) -> argparse.Namespace:
    """``parser``'s arguments, plus ``--smoke``: the defaults become ``smoke`` (options given
    on the command line still win); ``args.smoke`` says which."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"seconds of work, figures printed as in a full run: {smoke}")
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def in_work(benchmark: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace, prefix: str) -> None:
    """``benchmark(args, work)`` with ``work`` = ``args.work``, or, when that is None, a temporary
    folder (named ``prefix...``) removed afterwards."""
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as work:
            benchmark(args, Path(work))
    else:
        benchmark(args, Path(args.work))


def set_options(options: dict[str, dict]) -> None:
    """Set Luigi configuration ``{section: {key: value}}`` in this process (what a luigi.cfg says)."""
    import luigi

    config = luigi.configuration.get_config()
    for section, values in options.items():
        if not config.has_section(section):
            config.add_section(section)
        for key, value in values.items():
            config.set(section, key, str(value))


def run_logged(task: str, workers: int, log: Path) -> float:
    """``silentmine run TASK`` in this process (its output appended to ``log``); its wall seconds.
    ``SystemExit`` if it fails."""
    from tasks.cli import run_tasks

    started = time.perf_counter()
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        ok = run_tasks(task, workers=workers)
    wall = time.perf_counter() - started
    if not ok:
        raise SystemExit(f"`silentmine run {task}` failed; see {log}")
    return wall
