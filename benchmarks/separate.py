"""``silentmine separate`` on long files: peak memory and speed for a 10- and a 60-minute track.

Writes a synthetic 44.1 kHz stereo FLAC of each length (``benchmarks/memory.py``'s
``write_track``), a separator checkpoint (the demo's TasNet-BLSTM: 32 filters, 2 x 32 cells,
mixture consistency, 16 kHz, random weights: speed and memory do not depend on training), then
runs :func:`pipeline.separation.apply.separate_files` on each track in a fresh Python process
and reads that process's peak RSS (``os.wait4``'s ``ru_maxrss``) and wall time.  A whole-track
separation would hold the decoded track and its four stems (about 1.9 GB of float32 for an
hour of 44.1 kHz stereo, twice that at the stems' rate while resampling); the streamed one holds
a few 8 s segments, so its peak should not grow with the length.

Run: ``.venv/bin/python benchmarks/separate.py [--minutes 10 60] [--threads 2] [--work DIR] [--smoke]``
(without ``--work`` the tracks go to a temporary folder, removed at the end).  Time figures are
only meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import figure, in_work, parse_args
from memory import write_track

SMOKE = {"minutes": [0.1, 0.2], "threads": 1}
ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = dict(filters=32, lstm_layers=2, hidden=32, sample_rate=16000, consistency=True)

_RUN = """
import sys
from pipeline.separation.apply import separate_files
report = separate_files([sys.argv[1]], sys.argv[2], sys.argv[3], progress=False)
assert report.exit_status == 0, report.lines()
"""


def measure(track: Path, checkpoint: Path, out: Path, threads: int) -> tuple[float, float]:
    """``(peak RSS in MB, wall seconds)`` of separating ``track`` in a fresh process."""
    threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(track), str(checkpoint), str(out)], cwd=ROOT,
                            env={**os.environ, **threads_env, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"separating {track} failed (status {status})")
    return usage.ru_maxrss / 1024, wall


def report(args: argparse.Namespace, work: Path) -> None:
    import torch

    from pipeline.separation.registry import build_model, checkpoint_fields
    from pipeline.storage import checkpoints

    torch.manual_seed(0)
    checkpoint = work / "best.pt"
    checkpoints.save(checkpoint, checkpoint_fields(build_model("tasnet", DEMO_MODEL)))
    for minutes in args.minutes:
        track = work / f"track-{minutes:g}min.flac"
        if not track.exists():
            write_track(track, minutes)
        peak, wall = measure(track, checkpoint, work / f"out-{minutes:g}", args.threads)
        note = f"{minutes:g} min 44.1 kHz stereo, demo TasNet at 16 kHz, {args.threads} threads"
        figure(f"separate peak RSS {minutes:g} min", peak, "MB", note, digits=0)
        figure(f"separate speed {minutes:g} min", minutes * 60 / wall, "x real time", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads of the separating process")
    parser.add_argument("--work", default=None, help="keep the tracks and stems here")
    args = parse_args(parser, SMOKE)
    in_work(report, args, "separate-")


if __name__ == "__main__":
    main()
