"""Progress that suits where it goes: tqdm's live bar on a terminal, a plain line now and then in
a log.

A live bar redraws itself many times a second with carriage returns; sent to a file or a pipe (a
scheduler's log, a CI job, ``nohup``) every redraw stays in the file.  :func:`progress_bar` is
the one place that chooses: where the bar's stream is a terminal it is tqdm's bar (``tqdm.auto``);
elsewhere it is a :class:`LineProgress`, which writes the same text as whole lines, one each time
the loop passes another ``LINE_EVERY_PERCENT`` % and at least every ``LINE_EVERY_S`` seconds,
and a last one when the loop ends.  ``SILENTMINE_PROGRESS=bars`` or ``=lines`` forces one or the
other.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm
from tqdm.auto import tqdm as live_tqdm

PROGRESS_ENV = "SILENTMINE_PROGRESS"  # "bars", "lines", or unset: bars on a terminal, lines elsewhere
LINE_EVERY_PERCENT = 10  # a line each time the loop passes another multiple of this, %
LINE_EVERY_S = 60.0  # and at least one this often while it runs, seconds
CHECK_EVERY_S = 1.0  # how often a line progress looks whether a line is due, seconds


class LineProgress(tqdm):
    """A tqdm that writes whole lines (no carriage return, no redraw): one when the loop passes
    another ``LINE_EVERY_PERCENT`` % of ``total``, one at least every ``LINE_EVERY_S`` seconds
    (the only rule when ``total`` is unknown), and a last one when it closes (unless ``leave`` is
    false: a transient inner loop then writes only its progress lines)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._leave_line = kwargs.get("leave", True) is not False
        kwargs["leave"] = False  # close() writes the last line itself, as a line
        kwargs.setdefault("mininterval", CHECK_EVERY_S)
        iterable = args[0] if args else kwargs.get("iterable")
        if kwargs.get("total") is not None or hasattr(iterable, "__len__"):
            kwargs.setdefault("bar_format", "{l_bar}{r_bar}")  # the text of a bar without the bar
        self._line_step: int | None = None
        self._line_time = -math.inf
        self._line_n: float | None = None
        super().__init__(*args, **kwargs)

    def _step(self) -> int:
        if not self.total:
            return 0
        return int(100 * min(self.n, self.total) / self.total // LINE_EVERY_PERCENT)

    def _write_line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._line_step, self._line_time, self._line_n = self._step(), self._time(), self.n

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing or printing over the bar: nothing to clear in a log
            return False
        if self._line_step is None or self._step() > self._line_step or self._time() - self._line_time >= LINE_EVERY_S:
            self._write_line()
        return True

    def close(self) -> None:
        if not self.disable and self._leave_line and self.n != self._line_n:
            self._write_line()
        super().close()


def wants_bars(stream: TextIO | None = None) -> bool:
    """True where progress should be a live bar: ``SILENTMINE_PROGRESS=bars``, or unset and
    ``stream`` (default: standard error, tqdm's) is a terminal."""
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if choice in ("bars", "lines"):
        return choice == "bars"
    if choice:
        raise ValueError(f"{PROGRESS_ENV}={choice!r}: expected 'bars' or 'lines'")
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or one updated by hand) with tqdm's arguments (``total``,
    ``desc``, ``unit``, ``leave``, ``disable``, ``file``, ...): a live bar on a terminal, a
    :class:`LineProgress` elsewhere (module docstring)."""
    cls = live_tqdm if wants_bars(kwargs.get("file")) else LineProgress
    return cls(iterable, **kwargs)
