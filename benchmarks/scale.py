"""Scale: the bookkeeping of a catalog of N tracks, and the stage bodies' cost per real-length track.

    .venv/bin/python benchmarks/scale.py [--tracks 1000 10000 100000] [--shard-size 64] [--track-seconds 0]
                                         [--work /tmp/silentmine-scale] [--skip-luigid] [--plan-only]
                                         [--stage-seconds 240] [--stage-tracks 2] [--widths 0.125 1.0]
                                         [--machines 10] [--skip-stages] [--smoke]

Part 1, for each N of ``--tracks``: a synthetic catalog of N small files (cached under
``--work``: WAV files of ``--track-seconds`` of a tone, each with its own bytes; with the
default 0, header-only WAVs without samples, which every stage handles as a real file and
the features stage rejects, so the run's work is the pipeline's bookkeeping alone), a tiny
stem set, detector and calibration (width 0.125, one epoch: what they hold does not matter
here), and, each as its own ``silentmine`` process (``LUIGI_CONFIG_PATH`` = a luigi.cfg
written under ``--work``), timed by wall clock:

- the scan (``build_catalog`` in a child process): files per second and peak memory, first
  (every file read) and again (every checksum reused);
- planning: the tasks of ``Extract`` and the CPU seconds of building its graph
  (``tasks.graph.walk``, what ``status`` and ``gc`` do first), and the seconds from starting
  ``silentmine run Extract --workers 2`` until its first shard task starts (the run journal's
  ``started``), with a ``luigid`` on loopback (then stopped: its peak memory, from
  ``/proc/PID/status``) and with the local scheduler (then run to the end);
- ``silentmine run Extract`` again (a no-op rerun), ``silentmine status Extract`` and
  ``silentmine verify`` (``--plan-only``: ``silentmine status Extract`` before the run instead,
  and no run: what comparing shard sizes needs).

Part 2 (``--skip-stages`` leaves it out): ``--stage-tracks`` music-like 44.1 kHz stereo FLAC
tracks of ``--stage-seconds`` through the features, detection (a randomly initialised detector
of each ``--widths``: the cost does not depend on the weights) and extraction bodies (with
probabilities that cut four excerpts per track, each 3/16 of it), one torch thread, in this
process.  Their CPU seconds per track (``time.process_time``: what a busy machine disturbs
least) are extrapolated to 100,000 four-minute songs: hours on one 2-core machine running two
workers of one thread, and on ``--machines`` of them (the CPU time divided evenly: scheduling
and imbalance not counted).  Part 1's figures are wall times: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import figure, parse_args

REPO = Path(__file__).resolve().parent.parent
SHARD_FAMILIES = ("CatalogFeatures", "DetectCatalog", "ExtractShard")
SMOKE = {"tracks": [24], "shard_size": 8, "stage_seconds": 6.0, "stage_tracks": 1, "widths": [0.125],
         "work": None}
SONG_SECONDS = 240.0  # what the extrapolation is to: 100,000 songs of four minutes
SONGS = 100_000
THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
CHILDREN: set[subprocess.Popen] = set()  # every process started here, stopped with this one (stop_children)


def wav_bytes(index: int, seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of ``seconds`` of a tone (none: header only), with a ``LIST`` chunk
    naming ``index``, so that every file has its own bytes (its own track id)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (3000 * np.sin(2 * np.pi * (110.0 + index % 2000) * t)).astype("<i2").tobytes()
    note = f"silentmine scale track {index:07d}".encode()
    info = b"INFO" + b"ICMT" + struct.pack("<I", len(note)) + note
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", len(info)) + info
            + b"data" + struct.pack("<I", len(samples)) + samples)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def make_catalog(folder: Path, count: int, seconds: float) -> float:
    """``count`` files in folders of 1000 under ``folder`` (kept when complete); seconds spent."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{count} {seconds}":
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    for index in range(count):
        path = folder / f"{index // 1000:04d}" / f"track_{index:07d}.wav"
        if index % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(index, seconds))
    done.write_text(f"{count} {seconds}")
    return time.perf_counter() - started


def write_config(path: Path, data_root: Path, catalog: Path, stems: Path, shard_size: int) -> None:
    """The luigi.cfg of a run (on top of the repository's)."""
    path.write_text(f"""[silentmine]
data_root = {data_root}
stem_root = {stems}
catalog = {catalog}
threads = 1

[ScanCatalog]
shard_size = {shard_size}

[TrainDetector]
width = 0.125
epochs = 1
patience = 1
crop_seconds = 2.0

[Calibrate]
min_windows = 5
target_fraction = 0.5
target_db = -10
splits = ["valid", "calibration"]
""")


class Runner:
    """``silentmine`` commands under one configuration, each a fresh process, output to a log."""

    def __init__(self, config: Path, log: Path):
        self.env = {**os.environ, **THREAD_ENV, "LUIGI_CONFIG_PATH": str(config), "PYTHONPATH": str(REPO)}
        self.log = log

    def start(self, *args: str) -> subprocess.Popen:
        with open(self.log, "a") as out:
            out.write(f"\n$ silentmine {' '.join(args)}\n")
            out.flush()
            return spawn([sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=self.env, stdout=out,
                         stderr=subprocess.STDOUT)

    def run(self, *args: str, check: bool = True) -> tuple[float, int]:
        """Wall seconds and exit status of ``silentmine ARGS``."""
        started = time.perf_counter()
        status = self.start(*args).wait()
        wall = time.perf_counter() - started
        if check and status != 0:
            raise SystemExit(f"`silentmine {' '.join(args)}` exited {status}; see {self.log}")
        return wall, status


def journal_rows(data_root: Path, since: float):
    from pipeline.storage.journal import read_journal

    journal = read_journal(data_root)
    return journal[journal["started"].astype(float) >= since]


def first_shard_task(runner: Runner, data_root: Path, args: tuple[str, ...], timeout_s: float = 3600) -> float:
    """Start ``silentmine ARGS``; seconds until its first shard task started (from the journal,
    written when that task ends); then stop the run (its whole process group)."""
    since = time.time()
    proc = runner.start(*args)
    try:
        while time.time() - since < timeout_s:
            rows = journal_rows(data_root, since)
            rows = rows[rows["family"].isin(SHARD_FAMILIES)]
            if len(rows):
                return float(rows["started"].astype(float).min()) - since
            if proc.poll() is not None:
                raise SystemExit(f"`silentmine {' '.join(args)}` ended before a shard task ran; see {runner.log}")
            time.sleep(0.2)
        raise SystemExit(f"no shard task started within {timeout_s:.0f} s; see {runner.log}")
    finally:
        stop(proc)


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` in a session of its own (so that :func:`stop` ends its
    children too), remembered in :data:`CHILDREN`."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    CHILDREN.add(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started by :func:`spawn`, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    CHILDREN.discard(proc)


def stop_children(signum: int | None = None, frame=None) -> None:
    """Stop every process this one started and has not stopped; as the SIGTERM / SIGINT handler,
    then exit (a benchmark killed by ``timeout`` leaves no silentmine or luigid behind)."""
    for proc in list(CHILDREN):
        stop(proc)
    if signum is not None:
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def children_stopped_on_exit():
    """Within: SIGTERM and SIGINT stop every child (:func:`stop_children`) and exit; on leaving,
    however, the children still running are stopped."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_children)
    try:
        yield
    finally:
        stop_children()


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (``VmHWM``) of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_luigid(work: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """A ``luigid`` on loopback with the settings docs/operations.md gives for large runs."""
    port = free_port()
    (work / "luigid.pickle").unlink(missing_ok=True)  # a fresh scheduler, not the last run's state
    config = work / "luigid.cfg"
    config.write_text("[scheduler]\nrecord_task_history = false\nremove_delay = 600\nworker_disconnect_delay = 60\n")
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    with open(log, "a") as out:
        proc = spawn([sys.executable, "-c", "from luigi.cmdline import luigid; luigid()", "--address", "127.0.0.1",
                      "--port", str(port), "--state-path", str(work / "luigid.pickle")],
                     cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"luigid did not start; see {log}")


def scan_child(catalog: str, shard_size: int, out: str, previous: str) -> None:
    """The scan body, run inside the measured child process (no ``catalog``: the imports only)."""
    from pipeline.corpora.catalog import build_catalog

    if catalog:
        build_catalog(catalog, shard_size, Path(out), previous or None)


def measure_scan(catalog: Path | None, shard_size: int, out: Path, previous: Path | None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one scan in a fresh process (``catalog`` None: the
    process with the imports alone, the baseline)."""
    cmd = [sys.executable, __file__, "--child-scan", str(catalog or ""), str(shard_size), str(out),
           str(previous or "")]
    started = time.perf_counter()
    proc = spawn(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    CHILDREN.discard(proc)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the scan of {catalog} failed")
    return wall, usage.ru_maxrss / 1024


def task_count(config: Path) -> tuple[int, dict[str, int], float]:
    """The tasks of Extract's DAG once its scan has run, by family, and the CPU seconds of
    building it (``tasks.graph.walk``, what ``silentmine status`` does first), in a child process
    with the run's configuration."""
    code = ("import collections, json, time, tasks\nfrom tasks.graph import walk\n"
            "from tasks.inputs import forget_inputs\nstarted = time.process_time()\nforget_inputs()\n"
            "found = walk(tasks.Extract())\ncpu = time.process_time() - started\n"
            "print(json.dumps([collections.Counter(t.task_family for t in found), cpu]))")
    env = {**os.environ, **THREAD_ENV, "LUIGI_CONFIG_PATH": str(config), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    families, cpu = json.loads(done.stdout.strip().splitlines()[-1])
    return sum(families.values()), families, cpu


def bookkeeping(args: argparse.Namespace, work: Path, count: int) -> None:
    """Part 1 for a catalog of ``count`` tracks."""
    catalog = work / f"catalog-{count}-{args.track_seconds:g}s"
    made = make_catalog(catalog, count, args.track_seconds)
    if made:
        figure(f"catalog written, {count} files", count / made, "files per s", f"{made:.1f} s", digits=0)
    setup = work / "setup"
    data_root = work / f"data-{count}-{args.track_seconds:g}s-shard{args.shard_size}"
    shutil.rmtree(data_root, ignore_errors=True)
    shutil.copytree(setup / "data", data_root, ignore=shutil.ignore_patterns("journal"))
    config = work / f"{data_root.name}.cfg"
    write_config(config, data_root, catalog, setup / "stems" / "stems", args.shard_size)
    runner = Runner(config, work / f"{data_root.name}.log")
    print(f"\n{count} tracks, shards of {args.shard_size} (log: {runner.log})")

    with tempfile.TemporaryDirectory(prefix="scan-", dir=work) as scans:
        first_wall, first_rss = measure_scan(catalog, args.shard_size, Path(scans) / "first", None)
        again_wall, again_rss = measure_scan(catalog, args.shard_size, Path(scans) / "again",
                                             Path(scans) / "first" / "tracks.parquet")
    _, baseline_rss = measure_scan(None, args.shard_size, Path(scans), None)
    figure(f"scan, {count} files, every file read", count / first_wall, "files per s",
           f"{first_wall:.1f} s in a fresh process", digits=0)
    figure(f"scan, {count} files, checksums reused", count / again_wall, "files per s",
           f"{again_wall:.1f} s in a fresh process", digits=0)
    rss = max(first_rss, again_rss)
    figure(f"scan peak memory, {count} files", rss, "MiB", f"whole process; {baseline_rss:.0f} MiB after the imports",
           digits=0)
    figure(f"scan memory per file, {count} files", (rss - baseline_rss) * 2**20 / count, "bytes",
           "peak over the imports' baseline", digits=0)

    runner.run("run", "ScanCatalog")
    tasks, families, walk_cpu = task_count(config)
    shards = families.get("ExtractShard", 0)
    figure(f"tasks planned, {count} tracks", tasks, "tasks", f"{shards} shards x 3 shard families + "
           f"{tasks - 3 * shards} others", digits=0)
    figure(f"DAG built, {count} tracks", walk_cpu, "CPU s", "tasks.graph.walk(Extract()), as status and gc do",
           digits=1)

    run_args = ("run", "Extract", "--workers", "2")
    if not args.skip_luigid:
        luigid_log = work / f"{data_root.name}.luigid.log"
        luigid, port = start_luigid(work, luigid_log)
        try:
            wait = first_shard_task(runner, data_root, (*run_args, "--scheduler-host", "127.0.0.1",
                                                        "--scheduler-port", str(port)))
            rss = peak_rss_mib(luigid.pid)
        finally:
            stop(luigid)
        figure(f"first task starts, luigid on loopback, {count} tracks", wait, "s",
               "from `silentmine run Extract --workers 2`", digits=1)
        figure(f"luigid peak memory, {count} tracks", rss, "MiB", f"{tasks} tasks", digits=0)

    wait = first_shard_task(runner, data_root, run_args)
    figure(f"first task starts, local scheduler, {count} tracks", wait, "s",
           "from `silentmine run Extract --workers 2`", digits=1)
    if args.plan_only:
        wall, _ = runner.run("status", "Extract")
        figure(f"status, {count} tracks, before the run", wall, "s", "`silentmine status Extract`", digits=1)
        return
    since = time.time()
    wall, _ = runner.run(*run_args)
    ran = journal_rows(data_root, since)
    figure(f"whole run, {count} tracks", wall, "s", f"{len(ran)} tasks run, 2 worker processes", digits=0)
    since = time.time()
    wall, _ = runner.run(*run_args)
    if len(journal_rows(data_root, since)):
        raise SystemExit("the rerun ran tasks: it was not a no-op")
    figure(f"no-op rerun, {count} tracks", wall, "s", "`silentmine run Extract --workers 2`", digits=1)
    wall, _ = runner.run("status", "Extract")
    figure(f"status, {count} tracks", wall, "s", "`silentmine status Extract`", digits=1)
    wall, status = runner.run("verify", check=False)
    figure(f"verify, {count} tracks", wall, "s", "`silentmine verify`" + (" found problems" if status else ""),
           digits=1)


def prepare_setup(work: Path) -> None:
    """The stem set, detector and calibration every catalog size shares (kept under ``work/setup``)."""
    from pipeline.corpora.demo import DemoConfig, generate

    setup = work / "setup"
    if (setup / "complete").is_file():
        return
    shutil.rmtree(setup, ignore_errors=True)
    setup.mkdir(parents=True)
    generate(setup / "stems", DemoConfig(seed=5, n_train=2, n_valid=1, n_calibration=1, n_test=0, n_catalog=0,
                                         stem_duration_s=(4.0, 5.0)))
    empty = setup / "empty-catalog"
    empty.mkdir()
    config = setup / "luigi.cfg"
    write_config(config, setup / "data", empty, setup / "stems" / "stems", 8)
    wall, _ = Runner(config, setup / "setup.log").run("run", "Calibrate")
    print(f"setup (tiny stem set, detector of width 0.125, calibration): {wall:.0f} s")
    (setup / "complete").write_text("")


def stage_costs(args: argparse.Namespace, work: Path) -> None:
    """Part 2: CPU seconds per track of the stage bodies on real-length audio, extrapolated."""
    import pandas as pd
    import soundfile as sf
    import torch

    from classifiers.detector import DetectorConfig, SilentSourceDetector, save_checkpoint
    from classifiers.inference import probabilities_frame
    from classifiers.runs import build_detect
    from pipeline.audio.io import file_checksum
    from pipeline.features.featurize import build_features_shard
    from pipeline.features.scattering import fit_normalisation
    from pipeline.features.store import FeatureShard
    from pipeline.mining.extraction import PAPER_RUN_RULE, build_excerpts
    from pipeline.sources import SOURCES, n_windows

    torch.set_num_threads(1)
    folder = work / "stage-costs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rate, paths = 44_100, []
    for index in range(args.stage_tracks):
        paths.append(folder / f"song{index}.flac")
        with sf.SoundFile(str(paths[-1]), "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_16") as out:
            rng = np.random.default_rng(index)
            for first in range(0, int(args.stage_seconds * rate), 10 * rate):
                t = (first + np.arange(min(10 * rate, int(args.stage_seconds * rate) - first))) / rate
                left = (0.15 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.7 * t) > 0.2)
                        + 0.2 * np.sin(2 * np.pi * (220 + 20 * index) * t) * (t % 4 < 2.5)
                        + 0.1 * np.sin(2 * np.pi * 55 * t))
                out.write(np.stack([left, 0.8 * left], axis=1).astype(np.float32))
    tracks = pd.DataFrame({"path": [str(p) for p in paths], "checksum": [file_checksum(p) for p in paths]})
    tracks["track_id"] = tracks["checksum"].str[:16]

    def cpu(call) -> tuple[float, object]:
        started = time.process_time()
        result = call()
        return (time.process_time() - started) / len(paths), result

    npy = folder / "features.npy"
    build_features_shard(tracks[:1], folder / "warmup.npy")  # the cached Kymatio objects
    features_s, _ = cpu(lambda: build_features_shard(tracks, npy))
    shard = FeatureShard(npy)
    detect_s = {}
    for width in args.widths:
        torch.manual_seed(0)
        model = SilentSourceDetector(DetectorConfig(width=width)).eval()
        model.set_normalisation(*fit_normalisation([shard.get(t) for t in shard.track_ids]))
        save_checkpoint(folder / f"detector-{width:g}.pt", model, model.config)
        detect_s[width], _ = cpu(lambda w=width: build_detect(folder / f"detector-{w:g}.pt", npy,
                                                              folder / f"probabilities-{w:g}.parquet", 1))
    frames = {tid: n_windows(int(args.stage_seconds * rate), rate) for tid in tracks["track_id"]}
    probabilities = []
    for track_id, count in frames.items():  # source i silent over [i/8, i/8 + 3/16) of the track
        probs = np.full((count, len(SOURCES)), 0.1, np.float32)
        for i in range(len(SOURCES)):
            probs[i * count // 8:i * count // 8 + 3 * count // 16, i] = 0.9
        probabilities.append(probabilities_frame(track_id, probs))
    pd.concat(probabilities).to_parquet(folder / "synthetic.parquet")
    extract_s, result = cpu(lambda: build_excerpts(
        tracks, folder / "synthetic.parquet", thresholds={s: 0.5 for s in SOURCES}, run_rule=PAPER_RUN_RULE,
        run_dir=folder / "excerpts", shard_key="k", detector_key="d", calibration_key="c"))
    print(f"\nstage bodies, one torch thread, {len(paths)} tracks of {args.stage_seconds:g} s "
          f"(44.1 kHz stereo FLAC); CPU seconds per track, then per {SONG_SECONDS:g} s song")
    scale = SONG_SECONDS / args.stage_seconds
    figure("features CPU per song", features_s * scale, "s", f"{features_s:.2f} s per track", digits=2)
    for width, seconds in detect_s.items():
        figure(f"detection CPU per song, width {width:g}", seconds * scale, "s", f"{seconds:.2f} s per track",
               digits=2)
    figure("extraction CPU per song", extract_s * scale, "s",
           f"{extract_s:.2f} s per track, {result.counts.get('excerpts', 0) / len(paths):g} excerpts per track",
           digits=2)
    for width, seconds in detect_s.items():
        song_cpu = (features_s + seconds + extract_s) * scale
        hours = SONGS * song_cpu / 2 / 3600  # two one-thread workers per 2-core machine
        figure(f"{SONGS:,} four-minute songs, one 2-core machine, width {width:g}", hours, "h",
               f"{song_cpu:.1f} CPU s per song", digits=1)
        figure(f"{SONGS:,} four-minute songs, {args.machines} 2-core machines, width {width:g}",
               hours / args.machines, "h", "CPU time divided evenly", digits=2)


def benchmark(args: argparse.Namespace, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if args.tracks:
        prepare_setup(work)
        for count in args.tracks:
            bookkeeping(args, work, count)
    if not args.skip_stages:
        stage_costs(args, work)


def main(argv: list[str] | None = None) -> None:
    from _common import in_work

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, nargs="*", default=[1000, 10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--track-seconds", type=float, default=0.0,
                        help="seconds of tone per catalog file (0: header-only WAVs, rejected by features)")
    parser.add_argument("--work", default="/tmp/silentmine-scale", help="keeps the catalogs and the runs")
    parser.add_argument("--skip-luigid", action="store_true", help="measure planning with the local scheduler only")
    parser.add_argument("--plan-only", action="store_true",
                        help="part 1 up to the first task and `status`: no whole run, no-op rerun or verify")
    parser.add_argument("--stage-seconds", type=float, default=240.0, help="length of part 2's tracks (s)")
    parser.add_argument("--stage-tracks", type=int, default=2)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0], help="detector widths")
    parser.add_argument("--machines", type=int, default=10, help="the N of the extrapolation")
    parser.add_argument("--skip-stages", action="store_true", help="leave part 2 out")
    parser.add_argument("--child-scan", nargs=4, help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE, argv)
    if args.child_scan:
        catalog, shard_size, out, previous = args.child_scan
        scan_child(catalog, int(shard_size), out, previous)
        return
    with children_stopped_on_exit():
        in_work(benchmark, args, "silentmine-scale-")


if __name__ == "__main__":
    main()
