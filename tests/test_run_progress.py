"""`silentmine run` counts the tasks it finished, in forked worker processes too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DONE = re.compile(r"\[silentmine\] done \((\d+)\): (\S+)$", re.MULTILINE)


def _run(tmp_path: Path, stem_root: Path, *args: str) -> tuple[int, str]:
    """``silentmine run TrainDetector ARGS`` (as ``python -m tasks.cli``) on the tiny stem set, data under
    ``tmp_path``; the exit status and the output."""
    config = tmp_path / "luigi.cfg"
    config.write_text(f"[silentmine]\ndata_root = {tmp_path / 'data'}\nstem_root = {stem_root}\nthreads = 1\n"
                      "[TrainDetector]\nwidth = 0.0625\nepochs = 1\npatience = 1\ncrop_seconds = 2.0\n")
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    done = subprocess.run([sys.executable, "-m", "tasks.cli", "run", "TrainDetector", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, (done.stdout + done.stderr).replace("\r", "\n")  # tqdm ends lines with \r


@pytest.mark.parametrize("workers", ["2", "1"])
def test_every_finished_task_is_counted_once(tmp_path, small_stem_set, workers):
    # Labels, StemFeatures(train), StemFeatures(valid), TrainDetector; with 2 worker processes
    # (forked by Luigi) the first three run side by side.
    code, out = _run(tmp_path, small_stem_set, "--workers", workers)
    assert code == 0, out
    lines = DONE.findall(out)
    assert [int(n) for n, _ in lines] == [1, 2, 3, 4], out
    families = [task_id.split("_")[0] for _, task_id in lines]
    assert sorted(families[:3]) == ["Labels", "StemFeatures", "StemFeatures"] and families[3] == "TrainDetector"

    # Nothing left to do: nothing is counted.
    code, out = _run(tmp_path, small_stem_set, "--workers", workers)
    assert code == 0, out
    assert DONE.findall(out) == [], out


def test_a_task_failing_in_a_worker_process_is_counted_as_failed(tmp_path, small_stem_set):
    (small_stem_set / "train" / "train-0" / "drums.wav").write_bytes(b"not audio" * 100)  # Labels reads every stem
    code, out = _run(tmp_path, small_stem_set, "--workers", "2")
    assert code == 1, out
    assert [int(n) for n, _ in DONE.findall(out)] == [1, 2], out  # the two StemFeatures (a bad stem is not read)
    failed = re.findall(r"\[silentmine\] FAILED \((\d+)\): (Labels_\S+): \S.*$", out, re.MULTILINE)
    assert [n for n, _ in failed] == ["1"], out
    assert "TrainDetector" not in "".join(task_id for _, task_id in DONE.findall(out))
