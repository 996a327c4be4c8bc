"""The run journal: one JSON line per stage run, one file per process.

Every run of a pipeline stage (a whole stage, or one shard of a catalog-wide stage) appends
one line to ``<data_root>/journal/<host>-<pid>-<start>.jsonl``, where ``start`` is the
process's start time (UTC, ``YYYYmmddTHHMMSS``).  Each process writes only its own file,
so workers on several machines that share the data root never interleave writes; each
line is flushed (and fsynced) as soon as it is written, so a crash loses at most the line
of the stage that was running.  A line holds:

``stage`` (output folder name), ``family`` (task class), ``key`` (output key), ``shard`` and
``shard_key`` (``None`` for whole stages), ``status`` (``"done"`` or ``"failed"``),
``error`` (the exception, for failures), ``host``, ``pid``, ``process_start`` (ISO UTC),
``started`` / ``finished`` (Unix seconds), ``wall_s`` (the whole run, seconds), ``body_s``
(seconds inside the stage's body: the library call that does the work) and ``counts``
(the stage's own counts, e.g. ``tracks``, ``audio_seconds``).

:func:`read_journal` loads every journal file of a data root into one DataFrame, skipping
a torn last line of a killed process.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipeline.storage.outputs import plain

JOURNAL_FOLDER = "journal"
# A long stage body's progress callback: ``(items done, items in all, current item)``, e.g. tracks of a
# shard and the file being read; tasks/base.py passes it on to the scheduler (Luigi stays in tasks/).
Progress = Callable[[int, int, str], None]
COLUMNS = ["stage", "family", "key", "shard", "shard_key", "status", "error", "host", "pid", "process_start",
           "started", "finished", "wall_s", "body_s", "counts", "file"]

_start_cache: dict[int, float] = {}


def process_start(pid: int | None = None) -> float:
    """Unix time (s) at which process ``pid`` (default: this one) started.

    Read from ``/proc`` where there is one; elsewhere the time of the first call in the
    process.  A forked child is a new process with its own start.
    """
    pid = os.getpid() if pid is None else pid
    if pid not in _start_cache:
        started = time.time()
        try:
            ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime "))
            started = boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration):
            pass
        _start_cache[pid] = started
    return _start_cache[pid]


def journal_path(data_root: str | os.PathLike) -> Path:
    """This process's journal file under ``data_root``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(process_start()))
    return Path(data_root) / JOURNAL_FOLDER / f"{platform.node() or 'host'}-{os.getpid()}-{stamp}.jsonl"


def record(data_root: str | os.PathLike, stage: str, family: str, key: str, started: float, finished: float,
           body_s: float, counts: dict[str, Any] | None = None, shard: int | None = None,
           shard_key: str | None = None, status: str = "done", error: str | None = None) -> dict[str, Any]:
    """Append one line for a stage run (times in Unix seconds) to this process's journal; return it."""
    line = {
        "stage": stage, "family": family, "key": key, "shard": shard, "shard_key": shard_key,
        "status": status, "error": error, "host": platform.node(), "pid": os.getpid(),
        "process_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(process_start())),
        "started": round(started, 6), "finished": round(finished, 6), "wall_s": round(finished - started, 6),
        "body_s": round(body_s, 6), "counts": plain(counts or {}),
    }
    path = journal_path(data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return line


def read_journal(data_root: str | os.PathLike) -> pd.DataFrame:
    """Every journal line under ``data_root``, oldest first, with a ``file`` column (the
    journal file's name).  Empty (with the columns) when nothing has run.  Lines that are not
    complete JSON (the torn last line of a killed process) are skipped."""
    rows = []
    folder = Path(data_root) / JOURNAL_FOLDER
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append({**row, "file": path.name})
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    return frame.sort_values("started", kind="stable").reset_index(drop=True) if rows else frame
