"""Bad catalog input is never fatal and never silent.

One catalog holds one file of each troublesome kind plus normal tracks.  The catalog stages
run on it for real, through the library functions the Luigi tasks call: scan, features, a
tiny untrained detector, extraction and ``build_datasets``.  Extraction uses a threshold of 0
for drums (``P >= 0`` always holds), so every track that reaches it with at least 5 s yields
exactly one whole-track excerpt, which makes rates, channels and samples checkable.  Shards
hold one track each, so a file that crashes a stage fails its own test only.

Every file must either be processed correctly (features with the right frame count,
probabilities on the grid, valid excerpts) or be in the run's gathered rejects with the
expected stage and a reason in plain words; ``build_datasets``'s summary counts the rejects by
stage and kind.  Decisions this file pins down:

* 8 channels, 8 kHz and 96 kHz are processed; excerpts keep the file's channels and rate.
* Shorter than 5 s: features and detection run (the probabilities exist), extraction rejects
  the track with its duration in the reason.
* Digital silence (all zeros) is not an error: scanned, featurised (features are all 0) and
  detected like any track, but it yields no excerpt, since a run of exact zeros carries no
  audio for D_i (``pipeline.mining.extraction`` skips excerpts whose samples are all 0).
* Unusual but valid UTF-8 names are processed and recorded exactly; a name that is not valid
  UTF-8 cannot be stored in Parquet and is rejected at scan with its bytes shown as escapes.
* Unreadable files are rejected with "permission denied" (scan, or features when a file
  became unreadable after a scan whose checksum is reused); as root the run drops to
  ``nobody`` in a subprocess, since root reads a chmod-000 file.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from fixtures_media import encode_audio, encode_video_only

from classifiers import runs
from classifiers.detector import DetectorConfig, SilentSourceDetector, save_checkpoint
from pipeline.audio import io as audio
from pipeline.corpora.catalog import escaped_path, listing, scan, shards
from pipeline.features.featurize import build_features_shard, read_feature_rejects
from pipeline.features.scattering import n_feature_frames
from pipeline.features.store import FeatureShard
from pipeline.mining.datasets import ShardStore, build_datasets
from pipeline.mining.extraction import RunRule, build_excerpts
from pipeline.mining.schema import read_index, read_rejects
from pipeline.sources import FEATURE_RATE, SOURCES, n_windows
from pipeline.storage.outputs import StageResult, write_json_atomic

THRESHOLDS = {"drums": 0.0, "bass": None, "other": None, "vocals": None}  # every frame qualifies for drums
MIN_SECONDS = 5.0


# --------------------------------------------------------------------------- the files


def music(rng: np.random.Generator, seconds: float, rate: int, channels: int) -> np.ndarray:
    """Float32 ``(samples, channels)``: a swelling 220 Hz tone plus noise, within +-0.3."""
    t = np.arange(int(round(seconds * rate))) / rate
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return (tone[:, None] + 0.03 * rng.standard_normal((t.size, channels))).astype(np.float32)


def write_audio(seconds: float, rate: int, channels: int, subtype: str, fmt: str | None = None):
    return lambda path, rng: sf.write(path, music(rng, seconds, rate, channels), rate, subtype=subtype, format=fmt)


def write_cut(fraction: float, fmt: str, subtype: str):
    """A 6 s file of which only the first ``fraction`` of the bytes is kept (header intact)."""
    def write(path: Path, rng: np.random.Generator) -> None:
        sf.write(path, music(rng, 6.0, 44100, 2), 44100, format=fmt, subtype=subtype)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return write


def write_corrupt_header(path: Path, rng: np.random.Generator) -> None:
    """A 6 s WAV whose ``fmt `` chunk (bytes 12..36) is overwritten with random bytes."""
    sf.write(path, music(rng, 6.0, 44100, 2), 44100, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[12:36] = rng.integers(0, 256, 24, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def write_text(path: Path, rng: np.random.Generator) -> None:
    path.write_text("Track list\n1. Intro\n2. Outro\n" * 40)


def write_empty(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(b"")


def write_zeros(path: Path, rng: np.random.Generator) -> None:
    sf.write(path, np.zeros((int(5.5 * 44100), 2), np.float32), 44100, subtype="PCM_16")


def write_float(values: Callable[[np.ndarray], None], seconds: float = 6.0):
    """A 32-bit float WAV of music with ``values(audio)`` applied in place."""
    def write(path: Path, rng: np.random.Generator) -> None:
        audio_ = music(rng, seconds, 44100, 2)
        values(audio_)
        sf.write(path, audio_, 44100, subtype="FLOAT")
    return write


def _nan_inf(x: np.ndarray) -> None:
    x[1000, 0], x[2000, 1] = np.nan, np.inf


def _huge(x: np.ndarray) -> None:
    x *= np.float32(1e30)  # finite, but far beyond any real recording (corrupt float data)


def write_video(with_audio: bool):
    """A 5.5 s MP4 (mpeg4 video test pattern, encoded with PyAV), with or without a mono 44.1 kHz
    AAC tone."""
    def write(path: Path, rng: np.random.Generator) -> None:
        if with_audio:
            tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(5.5 * 44100)) / 44100)
            encode_audio(path, [tone[None].astype(np.float32)], 44100, "aac", "mp4", video=True)
        else:
            encode_video_only(path, seconds=5.5)
    return write


def write_fifo(path: Path, rng: np.random.Generator) -> None:
    os.mkfifo(path)


@dataclass(frozen=True)
class Case:
    """One catalog file and what must become of it.

    ``stage`` is None for a processed file, else the stage whose rejects hold it, with
    ``words`` that its reason must contain (case-insensitive).  A processed file yields
    ``excerpts`` excerpts (1: the whole track), at the file's ``rate`` and ``channels``.
    """

    kind: str
    name: str | bytes  # bytes: a name that is not valid UTF-8
    write: Callable[[Path, np.random.Generator], None]
    stage: str | None = None
    words: tuple[str, ...] = ()
    rate: int | None = None
    channels: int | None = None
    excerpts: int = 1
    marks: tuple = field(default=())


CASES = [
    Case("normal wav", "normal.wav", write_audio(5.5, 44100, 2, "PCM_16"), rate=44100, channels=2),
    Case("empty", "empty.wav", write_empty, "scan", ("empty", "0 bytes")),
    Case("empty, second", "empty too.flac", write_empty, "scan", ("empty", "0 bytes")),
    Case("truncated wav", "truncated.wav", write_cut(0.4, "WAV", "PCM_16"), "features", ("truncated", "header")),
    Case("truncated flac", "truncated.flac", write_cut(0.4, "FLAC", "PCM_16"), "features", ("truncated",)),
    Case("corrupt header", "corrupt header.wav", write_corrupt_header, "features", ("corrupt header",)),
    Case("not audio", "not_audio.mp3", write_text, "features", ("not an audio file",)),
    Case("video with audio", "clip.mp4", write_video(True), rate=44100, channels=1),
    Case("video only", "video only.mp4", write_video(False), "features", ("no audio stream",)),
    Case("8 channels", "eight channels.flac", write_audio(5.5, 44100, 8, "PCM_16"), rate=44100, channels=8),
    Case("8 kHz", "rate 8k.wav", write_audio(5.5, 8000, 1, "PCM_16"), rate=8000, channels=1),
    Case("96 kHz", "rate 96k.flac", write_audio(5.5, 96000, 2, "PCM_24"), rate=96000, channels=2),
    Case("all zeros", "all zeros.wav", write_zeros, rate=44100, channels=2, excerpts=0),
    Case("NaN and Inf samples", "nan inf.wav", write_float(_nan_inf), "features", ("nan or inf",)),
    Case("huge float samples", "huge values.wav", write_float(_huge, 2.0), "features", ("overflow", "nan or inf")),
    Case("3 s", "short 3s.wav", write_audio(3.0, 44100, 2, "PCM_16"), "extract",
         ("3.000 s", "shorter than the 5 s minimum")),
    Case("10 ms", "blip.wav", write_audio(0.01, 44100, 2, "PCM_16"), "extract", ("0.010 s", "shorter than")),
    Case("1 sample at 96 kHz", "one sample.wav", write_audio(1 / 96000, 96000, 1, "PCM_16"), "features",
         ("no samples",)),
    # Two more normal tracks, with unusual names.
    Case("spaces and quotes", "my song - 'live' \"at home\" (2019).wav", write_audio(5.5, 44100, 2, "PCM_16"),
         rate=44100, channels=2),
    Case("unicode", "Ünïcødé 日本語 ♪ — naïve.flac", write_audio(5.5, 48000, 2, "PCM_24"), rate=48000, channels=2),
    Case("name not UTF-8", b"caf\xe9 latin-1.wav", write_audio(5.5, 44100, 2, "PCM_16"), "scan",
         ("not valid utf-8", "rename")),
    Case("named pipe", "stream.wav", write_fifo, "scan", ("not a regular file",)),
]


def case_path(folder: Path, case: Case) -> Path:
    name = os.fsdecode(case.name) if isinstance(case.name, bytes) else case.name
    return folder / name


def recorded_path(path: Path) -> str:
    """How the pipeline records ``path``: exactly, or escaped when it is not valid UTF-8."""
    return escaped_path(path)


# --------------------------------------------------------------------------- running the stages


@dataclass
class Run:
    tracks: pd.DataFrame
    scan_rejects: pd.DataFrame
    run_dir: Path
    stores: dict[str, Path]  # shard key -> features store, for shards whose stages all finished
    probabilities: pd.DataFrame
    index: pd.DataFrame
    rejects: pd.DataFrame
    gathered: StageResult
    crashes: dict[str, str]  # catalog path -> the exception that stopped its shard


def tiny_detector(path: Path, seed: int = 0) -> Path:
    """An untrained detector at 1/16 of the paper's width (its probabilities are arbitrary)."""
    torch.manual_seed(seed)
    config = DetectorConfig(width=0.0625)
    save_checkpoint(path, SilentSourceDetector(config), config)
    return path


def run_catalog(catalog: Path, work: Path, checkpoint: Path, shard_size: int = 1) -> Run:
    """Scan, features, detection and extraction of every shard (``run_dir``: the shard store), then
    ``build_datasets`` into ``work/view``.

    A shard whose stage raises is recorded in ``crashes`` (a finding: it fails the tests of
    its files) and left out of the run; the other shards go on.
    """
    tracks, scan_rejects, _ = scan(listing(catalog), shard_size)
    run_dir = work / "run"
    stores, probabilities, crashes = {}, [], {}
    for _, key, shard_tracks in shards(tracks):
        store = work / "features" / f"{key}.npy"
        probs_path = work / "detect" / f"{key}.parquet"
        try:
            build_features_shard(shard_tracks, store, num_threads=2)
            runs.build_detect(checkpoint, store, probs_path, num_threads=2)
            extracted = build_excerpts(shard_tracks, probs_path, thresholds=THRESHOLDS, run_rule=RunRule(MIN_SECONDS),
                                       run_dir=run_dir, shard_key=key, detector_key="tiny-detector",
                                       calibration_key="threshold-0")
            write_json_atomic(ShardStore(run_dir).marker_path(key), {"counts": extracted.counts,
                                                                     "files": extracted.files})
        except Exception as err:  # noqa: BLE001 -- any exception is the finding under test
            crashes.update({p: f"{type(err).__name__}: {err}" for p in shard_tracks["path"]})
            continue
        stores[key] = store
        probabilities.append(pd.read_parquet(probs_path))
    view = work / "view"
    gathered = build_datasets(view, run_dir, list(stores), scan_rejects,
                              {key: read_feature_rejects(store) for key, store in stores.items()})
    return Run(tracks, scan_rejects, run_dir, stores,
               pd.concat(probabilities, ignore_index=True) if probabilities else pd.DataFrame(),
               read_index(view / "index"), read_rejects(view), gathered, crashes)


def outcome(run: Run, path: Path) -> str:
    """What became of ``path``, for assertion messages."""
    text = recorded_path(path)
    if text in run.crashes:
        return f"crashed its shard: {run.crashes[text]}"
    rows = run.rejects[run.rejects["path"] == text]
    if len(rows):
        return "; ".join(f"rejected at {r.stage}: {r.reason}" for r in rows.itertuples())
    if text in set(run.tracks["path"]):
        return f"processed, {int((run.index['catalog_path'] == text).sum())} excerpts"
    return "nowhere: neither a track nor a reject"


def check_processed(run: Run, path: Path, case: Case) -> None:
    """Features, probabilities and excerpts of a processed file are right."""
    text = str(path)
    assert text in set(run.tracks["path"]), outcome(run, path)
    assert text not in set(run.rejects["path"]), outcome(run, path)
    track = run.tracks[run.tracks["path"] == text].iloc[0]
    mono, _ = audio.load(path, sample_rate=FEATURE_RATE, mono=True)
    shard = next(FeatureShard(s) for s in run.stores.values() if track.track_id in FeatureShard(s))
    assert shard.n_frames(track.track_id) == n_feature_frames(mono.shape[1])
    frames = run.probabilities[run.probabilities["track_id"] == track.track_id]
    assert sorted(frames["frame"]) == list(range(n_windows(mono.shape[1], FEATURE_RATE)))
    assert np.isfinite(frames[[f"p_{s}" for s in SOURCES]].to_numpy()).all()
    excerpts = run.index[run.index["catalog_path"] == text]
    check_excerpts(run.run_dir, excerpts, path, case)
    assert len(excerpts) == case.excerpts and set(excerpts["source"]) <= {"drums"}, outcome(run, path)


def check_excerpts(run_dir: Path, excerpts: pd.DataFrame, path: Path, case: Case) -> None:
    """Each excerpt file matches its index row and holds the original samples at the original rate."""
    original, rate = audio.load(path)
    for row in excerpts.itertuples():
        assert audio.file_checksum(run_dir / row.audio_path) == row.audio_checksum
        data, excerpt_rate = sf.read(run_dir / row.audio_path, always_2d=True, dtype="float32")
        assert excerpt_rate == rate == row.sample_rate == case.rate
        assert data.shape[1] == original.shape[0] == row.channels == case.channels
        assert row.duration_s >= MIN_SECONDS - 1e-9 and row.end_sample <= original.shape[1]
        span = original[:, row.start_sample:row.end_sample]
        step = 2.0 ** -15 if row.audio_format.endswith("PCM_16") else 2.0 ** -23
        assert data.shape[0] == span.shape[1]
        np.testing.assert_allclose(data.T, np.clip(span, -1.0, 1.0 - step), atol=step)


# --------------------------------------------------------------------------- the battery


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_detector(tmp_path_factory.mktemp("detector") / "detector.pt")


@pytest.fixture(scope="module")
def battery(tmp_path_factory, checkpoint) -> tuple[Path, Run, set[str]]:
    """The catalog of every case, run once; returns its folder, the run and the cases left out."""
    root = tmp_path_factory.mktemp("bad_input")
    catalog = root / "catalog"
    catalog.mkdir()
    rng = np.random.default_rng(7)
    missing = set()
    for case in CASES:
        try:
            if isinstance(case.name, bytes):  # soundfile cannot open such a name: write, then rename
                case.write(catalog / "renamed.wav", rng)
                os.rename(catalog / "renamed.wav", case_path(catalog, case))
            else:
                case.write(case_path(catalog, case), rng)
        except (OSError, AttributeError):  # no FIFOs, or a file system that refuses non-UTF-8 names
            missing.add(case.kind)
    return catalog, run_catalog(catalog, root / "work", checkpoint), missing


@pytest.mark.parametrize("case", [pytest.param(c, id=c.kind, marks=c.marks) for c in CASES])
def test_every_file_is_processed_or_rejected_with_a_plain_reason(battery, case):
    catalog, run, missing = battery
    if case.kind in missing:
        pytest.skip(f"cannot make a {case.kind} file here (no FIFOs or non-UTF-8 names)")
    path = case_path(catalog, case)
    assert recorded_path(path) not in run.crashes, outcome(run, path)
    if case.stage is None:
        if case.kind == "all zeros":
            track_id = run.tracks.set_index("path").loc[str(path), "track_id"]
            shard = next(FeatureShard(s) for s in run.stores.values() if track_id in FeatureShard(s))
            assert not shard.get(track_id).any()  # digital silence: log1p(0) = 0 everywhere
        check_processed(run, path, case)
        return
    rows = run.rejects[run.rejects["path"] == recorded_path(path)]
    assert len(rows) == 1, outcome(run, path)
    row = rows.iloc[0]
    assert row.stage == case.stage, outcome(run, path)
    for word in case.words:
        assert word.lower() in row.reason.lower(), outcome(run, path)
    assert row.kind != "other", (row.kind, row.reason)
    if case.stage == "extract":  # rejected only at extraction: features and probabilities exist
        assert row.track_id in set(run.probabilities["track_id"])
    if case.stage == "scan":
        assert recorded_path(path) not in set(run.tracks["path"])


def test_unusual_names_are_recorded_exactly(battery):
    catalog, run, _ = battery
    for case in CASES:
        if case.kind in ("spaces and quotes", "unicode"):
            path = str(case_path(catalog, case))
            assert path in set(run.tracks["path"]) and path in set(run.index["catalog_path"])
    listed = set(run.tracks["path"]) | set(run.rejects["path"])
    assert all(isinstance(p, str) for p in listed)


def test_the_summary_counts_every_reject_by_stage_and_kind(battery):
    catalog, run, missing = battery
    counts, summary, rejects = run.gathered.counts, run.gathered.summary, run.rejects
    assert counts["rejects"] == len(rejects)
    expected = [c for c in CASES if c.stage and c.kind not in missing and recorded_path(case_path(catalog, c))
                not in run.crashes]
    assert set(map(recorded_path, (case_path(catalog, c) for c in expected))) <= set(rejects["path"])
    for stage in ("scan", "features", "extract"):
        assert counts[f"rejects_{stage}"] == int((rejects["stage"] == stage).sum())
    assert sum(counts["rejects_by_kind"].values()) == len(rejects)
    assert "other" not in counts["rejects_by_kind"], rejects.to_string()
    by_stage = ", ".join(f"{s} {counts[f'rejects_{s}']}" for s in ("scan", "features", "extract"))
    assert f"rejects: {len(rejects)} files ({by_stage})" in summary
    for kind, count in counts["rejects_by_kind"].items():
        assert any(line.strip().startswith(f"{kind}: {count}") for line in summary), kind
    assert counts["rejects_by_kind"]["empty"] == 2 and counts["rejects_by_kind"]["too short"] == 2


# --------------------------------------------------------------------------- unreadable files

CHILD = r"""
import os, pwd, sys
from pathlib import Path
import numpy as np
import pandas as pd
from pipeline.corpora.catalog import listing, scan, shards
from pipeline.features.scattering import FeatureExtractor
from pipeline.features.featurize import build_features_shard
from pipeline.storage.outputs import write_parquet_atomic

import tempfile
import soundfile as sf
for seconds in (1, 7):  # build what features need (lazy imports, filter banks) while still root
    FeatureExtractor(num_threads=1)(np.zeros(16000 * seconds, np.float32))
# The same work once on a readable file while still root: every lazily imported module (parquet
# engine, decoders) is loaded now, since `nobody` may not be able to read the checkout or the venv.
with tempfile.TemporaryDirectory() as warm:
    warm = Path(warm)
    (warm / "c").mkdir()
    sf.write(warm / "c" / "a.wav", np.zeros((8000, 1), np.float32), 8000)
    warm_tracks, _, _ = scan(listing(warm / "c"), 8)
    write_parquet_atomic(warm_tracks, warm / "tracks.parquet")
    pd.read_parquet(warm / "tracks.parquet")
    for _, key, shard_tracks in shards(warm_tracks):
        build_features_shard(shard_tracks, warm / f"{key}.npy", num_threads=1)
catalog, out, previous = Path(sys.argv[1]), Path(sys.argv[2]), pd.read_parquet(sys.argv[3])
if os.getuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
tracks, rejects, _ = scan(listing(catalog), 8, previous)
write_parquet_atomic(tracks, out / "tracks.parquet")
write_parquet_atomic(rejects, out / "rejects.parquet")
for _, key, shard_tracks in shards(tracks):
    build_features_shard(shard_tracks, out / "features" / f"{key}.npy", num_threads=1)
print(os.getuid())
"""


def test_unreadable_files_are_rejected_as_permission_denied(tmp_path):
    """As root (CI) the stages run as ``nobody`` in a subprocess: root reads chmod-000 files.

    The folders must be reachable by ``nobody``, so they are made under the system temporary
    folder (pytest's own is private to root) and removed afterwards.
    """
    as_root = os.getuid() == 0
    if as_root:
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            pytest.skip("running as root and there is no 'nobody' user to drop to")
    with tempfile.TemporaryDirectory(prefix="silentmine-unreadable-") as shared:
        shared = Path(shared)
        catalog, out = shared / "catalog", shared / "out"
        catalog.mkdir()
        out.mkdir()
        for folder in (shared, catalog):
            folder.chmod(0o755)
        out.chmod(0o777)
        rng = np.random.default_rng(3)
        for name in ("readable.wav", "locked.wav", "locked later.wav"):
            sf.write(catalog / name, music(rng, 2.0, 22050, 1), 22050, subtype="PCM_16")
        (catalog / "locked.wav").chmod(0)
        previous, _, _ = scan(listing(catalog), 8)  # as root: "locked later.wav" still readable
        previous = previous[previous["path"] != str(catalog / "locked.wav")]
        previous.to_parquet(shared / "previous.parquet")
        (shared / "previous.parquet").chmod(0o644)
        (catalog / "locked later.wav").chmod(0)  # unreadable after the scan: its checksum is reused
        proc = subprocess.run([sys.executable, "-c", CHILD, str(catalog), str(out), str(shared / "previous.parquet")],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "HOME": str(shared)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert int(proc.stdout.split()[-1]) == (nobody if as_root else os.getuid())
        tracks = pd.read_parquet(out / "tracks.parquet")
        scan_rejects = pd.read_parquet(out / "rejects.parquet")
        feature_rejects = {store.stem: read_feature_rejects(store) for store in (out / "features").glob("*.npy")}
        gathered = build_datasets(tmp_path / "run", tmp_path / "store", [], scan_rejects, feature_rejects)
        rejects = read_rejects(tmp_path / "run").set_index("path")
        assert sorted(tracks["path"]) == [str(catalog / "locked later.wav"), str(catalog / "readable.wav")]
        assert rejects.loc[str(catalog / "locked.wav"), "stage"] == "scan"
        assert rejects.loc[str(catalog / "locked later.wav"), "stage"] == "features"
        for name in ("locked.wav", "locked later.wav"):
            assert "permission denied" in rejects.loc[str(catalog / name), "reason"]
        assert str(catalog / "readable.wav") not in rejects.index
        assert gathered.counts["rejects_by_kind"] == {"unreadable": 2}
        assert "rejects: 2 files (scan 1, features 1)" in gathered.summary


# --------------------------------------------------------------------------- longer than an hour


def write_long_noise(path: Path, seconds: float, rate: int, rng: np.random.Generator) -> None:
    """Mono 16-bit WAV of low-level noise (-40 dBFS), written in 1-minute blocks."""
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as fh:
        left = int(seconds * rate)
        while left:
            n = min(left, 60 * rate)
            fh.write((0.01 * rng.standard_normal(n)).astype(np.float32))
            left -= n


@pytest.mark.slow
def test_a_file_longer_than_one_detector_pass_is_processed(tmp_path, checkpoint):
    """12 minutes at 8 kHz: many feature chunks, the detector's BiLSTM in passes with context (one
    pass holds at most 9.8 min: :mod:`classifiers.inference`), and one whole-file excerpt across
    the passes' seams.  An hour-long file, and the memory it takes, is ``benchmarks/memory.py
    --minutes 60``'s (its smoke is in the suite).
    """
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    path = catalog / "long concert.wav"
    write_long_noise(path, 12 * 60, 8000, np.random.default_rng(11))
    run = run_catalog(catalog, tmp_path / "work", checkpoint)
    assert not run.crashes and run.rejects.empty, outcome(run, path)
    case = Case("12 minutes", path.name, write_long_noise, rate=8000, channels=1)
    check_processed(run, path, case)
    row = run.index.iloc[0]
    assert row.start_s == 0.0 and row.end_s == pytest.approx(12 * 60, abs=0.064)


def test_a_catalog_list_with_a_name_that_is_not_utf8_is_scanned(tmp_path):
    """A list of paths written by a Latin-1 system: the other lines are scanned, that one rejected."""
    sf.write(tmp_path / "ok.wav", music(np.random.default_rng(5), 0.5, 8000, 1), 8000)
    sf.write(tmp_path / "tmp.wav", music(np.random.default_rng(6), 0.5, 8000, 1), 8000)
    os.rename(tmp_path / "tmp.wav", os.fsencode(tmp_path) + b"/caf\xe9.wav")
    (tmp_path / "list.txt").write_bytes(b"ok.wav\ncaf\xe9.wav\n")
    tracks, rejects, _ = scan(listing(tmp_path / "list.txt"), 4)
    assert list(tracks["path"]) == [str(tmp_path / "ok.wav")]
    assert list(rejects["path"]) == [str(tmp_path) + "/caf\\xe9.wav"]
    assert "not valid UTF-8" in rejects["reason"].iloc[0]
