"""What every script in ``benchmarks/`` shares: ``--smoke`` and the figure lines it prints.

Each figure is one line ``figure: NAME = VALUE UNIT  (NOTE)`` (other lines are context), in a
full run and with ``--smoke`` (tiny sizes, one repeat: seconds of work) alike;
``tests/test_benchmarks.py`` runs every script with ``--smoke`` and reads the lines with
:data:`FIGURE`.  Scripts run as ``python benchmarks/NAME.py`` import this module as ``_common``
(the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

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
