"""Progress suits where it goes: a live bar on a terminal, a few whole lines in a log."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from pipeline import progress
from pipeline.progress import LINE_EVERY_PERCENT, LINE_EVERY_S, LineProgress, progress_bar, wants_bars

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_few_percent():
    log = io.StringIO()
    for _ in LineProgress(range(1000), desc="features shard 3", unit="track", file=log, mininterval=0, miniters=1):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no carriage return, no cursor movement
    lines = text.splitlines()
    assert len(lines) == 100 // LINE_EVERY_PERCENT + 1  # 0 %, 10 %, ..., 100 %
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in lines] == list(range(0, 101, LINE_EVERY_PERCENT))
    assert lines[-1].startswith("features shard 3: 100%") and "1000/1000" in lines[-1]


def test_a_log_gets_a_line_every_so_often_when_the_total_is_unknown():
    log = io.StringIO()
    bar = LineProgress(desc="evaluate", file=log, mininterval=0, miniters=1)
    clock = [bar.start_t]
    bar._time = lambda: clock[0]  # tqdm's clock
    for _ in range(20):  # 20 updates, 15 s apart: 5 minutes
        clock[0] += 15.0
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert 300 / LINE_EVERY_S <= len(lines) <= 300 / LINE_EVERY_S + 2
    assert "20" in lines[-1] and "\r" not in log.getvalue()


def test_a_transient_loop_leaves_no_last_line_and_a_postfix_writes_nothing_more():
    log = io.StringIO()
    bar = LineProgress(range(50), desc="epoch 1/6", file=log, leave=False, mininterval=0, miniters=1)
    for _ in bar:
        bar.set_postfix(loss="0.5000")  # redraws a bar on every step; a log gets no extra line
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 100 // LINE_EVERY_PERCENT + 1 and "loss=0.5000" in lines[-1]


def test_a_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in LineProgress(range(10), file=log, disable=True):
        pass
    assert log.getvalue() == ""


def test_the_rule_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert wants_bars(Terminal()) and not wants_bars(io.StringIO())
    assert type(progress_bar(range(3), file=io.StringIO())) is LineProgress
    live = progress_bar(range(3), file=Terminal())
    assert not isinstance(live, LineProgress)
    live.close()
    monkeypatch.setenv(progress.PROGRESS_ENV, "lines")
    assert not wants_bars(Terminal())
    monkeypatch.setenv(progress.PROGRESS_ENV, "bars")
    assert wants_bars(io.StringIO())
    monkeypatch.setenv(progress.PROGRESS_ENV, "sometimes")
    with pytest.raises(ValueError, match="SILENTMINE_PROGRESS"):
        wants_bars(io.StringIO())


def test_every_progress_bar_goes_through_the_rule():
    """tqdm is imported by pipeline/progress.py alone: every loop's progress follows its rule."""
    users = [path.relative_to(ROOT).as_posix() for package in ("pipeline", "classifiers", "tasks", "benchmarks")
             for path in sorted((ROOT / package).rglob("*.py"))
             if re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), flags=re.M)]
    assert users == ["pipeline/progress.py"]
