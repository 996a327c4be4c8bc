"""Every script in benchmarks/ runs with --smoke and prints its figure lines (benchmarks/_common.py)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.threads import THREAD_VARIABLES

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(path.name for path in (REPO / "benchmarks").glob("*.py") if not path.name.startswith("_"))
SMOKE_TIMEOUT_S = 300  # per script; each takes seconds
# Started first, longest first, so that the two workers finish together (alone, 1 thread: scale.py
# about 45 s, it starts a dozen silentmine processes; memory.py 30 s, ten fresh processes;
# yield.py and remix_ablation.py about 25 s, catalog.py and features.py 15 s; the others 3-6 s).
SLOWEST_SMOKES = ("scale.py", "memory.py", "yield.py", "remix_ablation.py", "catalog.py", "features.py")


def _load_common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", REPO / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


def _smoke(script: str, tmp: Path, *options: str) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT --smoke [OPTIONS]`` from the repository root, its temporary files
    under ``tmp/tmp`` (torch's compile cache under ``tmp/torch``)."""
    (tmp / "tmp").mkdir(parents=True)
    threads = {name: "1" for name in THREAD_VARIABLES}  # two run side by side
    env = {**os.environ, **threads, "TMPDIR": str(tmp / "tmp"), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "torch"),
           "MPLBACKEND": "Agg"}
    try:
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", *options], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, -1, err.stdout or "", f"timed out after {SMOKE_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The smoke runs of the scripts whose tests were selected, two at a time (each is mostly one
    core's work); ``{script: (completed process, its TMPDIR)}``."""
    selected = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec and "script" in callspec.params:
            selected.add(callspec.params["script"])
    root = tmp_path_factory.mktemp("benchmarks")
    order = sorted(selected, key=lambda script: (SLOWEST_SMOKES.index(script) if script in SLOWEST_SMOKES
                                                 else len(SLOWEST_SMOKES), script))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {script: pool.submit(_smoke, script, root / script.removesuffix(".py")) for script in order}
        return {script: (future.result(), root / script.removesuffix(".py")) for script, future in futures.items()}


def test_there_are_benchmarks():
    assert {"features.py", "detect.py", "catalog.py", "memory.py", "scale.py"} <= set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS)
def test_smoke_run_prints_its_figures(script, smoke_runs):
    done, tmp = smoke_runs[script]
    assert done.returncode == 0, f"{script} --smoke exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("figure:")]
    assert lines, f"{script} --smoke printed no figure line:\n{done.stdout}"
    names = []
    for line in lines:
        match = common.FIGURE.match(line)
        assert match, f"{script}: not a figure line (figure: NAME = VALUE UNIT  (NOTE)): {line!r}"
        assert math.isfinite(float(match["value"])), line
        names.append(match["name"])
    assert len(names) == len(set(names)), f"{script} printed a figure twice: {names}"
    left = sorted((tmp / "tmp").iterdir())
    assert not left, f"{script} --smoke left files behind: {left}"


def test_scale_stops_the_processes_it_started_when_it_is_stopped():
    # scale.py starts silentmine runs and a luigid in sessions of their own; stopped (as
    # `timeout` stops it), it must not leave them running.
    code = ("import sys, time; sys.path.insert(0, 'benchmarks'); import scale\n"
            "with scale.children_stopped_on_exit():\n"
            "    child = scale.spawn([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "    print(child.pid, flush=True)\n"
            "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.terminate()
    assert parent.wait(timeout=60) == 128 + 15
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_figure_lines_read_back(capsys):
    common.figure("stage time / bare time", 0.8149, "x", "best vs best 0.79x", digits=2)
    common.figure("peak RSS, new features, 10 min", 351.6, "MiB", digits=0)
    first, second = capsys.readouterr().out.splitlines()
    assert common.FIGURE.match(first).groupdict() == {
        "name": "stage time / bare time",
        "value": "0.81",
        "unit": "x",
        "note": "best vs best 0.79x",
    }
    assert common.FIGURE.match(second).groupdict() == {
        "name": "peak RSS, new features, 10 min",
        "value": "352",
        "unit": "MiB",
        "note": None,
    }
    assert common.FIGURE.match("stage: 80 s of audio per s") is None


def test_smoke_sets_defaults_and_given_options_win():
    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.add_argument("--seconds", type=float, default=120.0)
        p.add_argument("--tracks", type=int, default=2)
        return p

    smoke = {"seconds": 4.0, "tracks": 1}
    assert vars(common.parse_args(parser(), smoke, [])) == {"seconds": 120.0, "tracks": 2, "smoke": False}
    assert vars(common.parse_args(parser(), smoke, ["--smoke"])) == {"seconds": 4.0, "tracks": 1, "smoke": True}
    assert vars(common.parse_args(parser(), smoke, ["--smoke", "--tracks", "3"])) == {
        "seconds": 4.0,
        "tracks": 3,
        "smoke": True,
    }


@pytest.mark.slow
def test_detect_scores_a_feature_shard(tmp_path):
    # real features are what a trained detector's numeric paths are compared on (--features)
    import numpy as np

    from pipeline.features.store import write_feature_shard

    rng = np.random.default_rng(0)
    shard = tmp_path / "shard.npy"
    write_feature_shard(shard, [(f"t{i}", rng.uniform(0, 8, (7, 54, 200)).astype(np.float32)) for i in range(2)])
    done = _smoke("detect.py", tmp_path / "run", "--features", str(shard))
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"of the 2 tracks of {shard}" in done.stdout
    assert sum(line.startswith("figure:") for line in done.stdout.splitlines()) == 4
