"""Tests of the synthetic demo corpus (pipeline/corpora/demo.py).

"Absent" here means ``V_i <= -40 dB`` on the shared 0.64 s / 64 ms grid, which includes the
windows where the source is exactly zero (``V_i = -inf``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.audio import io as audio
from pipeline.corpora.demo import (
    CATALOG_CHANNELS,
    CATALOG_FORMATS,
    CATALOG_RATES,
    CATALOG_STEMS_DIR,
    UNICODE_TITLE,
    DemoConfig,
    catalog_stem_name,
    catalog_stems,
    existing_catalog_stems,
    generate,
    mix,
    song_with_silence,
    synthesize_song,
)
from pipeline.corpora.labels import relative_volumes
from pipeline.corpora.stemset import list_tracks
from pipeline.sources import SOURCES, n_windows, window_samples

ABSENT_DB = -40.0
MUSDB_ABSENCE = {"drums": 0.11, "bass": 0.13, "other": 0.03, "vocals": 0.30}
TOLERANCE = {"drums": 0.04, "bass": 0.04, "other": 0.04, "vocals": 0.05}
RATE_SET_RATE = 8000  # Hz: V is a ratio of energies, dominated by content well below 4 kHz


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate(out, DemoConfig.tiny(seed=3))


@pytest.fixture(scope="module")
def song_set() -> tuple[np.ndarray, list[np.ndarray]]:
    """Relative volumes ``(4, windows)`` pooled over 120 songs of 20-40 s, and per song."""
    volumes = []
    for i in range(120):
        rng = np.random.default_rng([2024, i])
        stems, _ = synthesize_song(rng, float(rng.uniform(20.0, 40.0)), RATE_SET_RATE)
        volumes.append(relative_volumes(stems, RATE_SET_RATE))
    return np.concatenate(volumes, axis=1), volumes


def test_stem_set_mixture_is_sum_of_stems_on_disk(demo):
    out, summary = demo
    for split, count in (("train", 3), ("valid", 1), ("calibration", 1), ("test", 1)):
        tracks = list_tracks(out / "stems", split)
        assert [t.name for t in tracks] == [f"demo-{split}-{i:03d}" for i in range(count)]
        assert summary["splits"][split]["tracks"] == count
        for track in tracks:
            parts = {}
            for part in ("mixture", *SOURCES):
                data, rate = sf.read(str(track.path(part)), dtype="float32", always_2d=True)
                assert rate == 44_100 and data.shape[1] == 2
                assert sf.info(str(track.path(part))).subtype == "FLOAT"
                parts[part] = data
            assert 8.0 <= len(parts["mixture"]) / 44_100 <= 12.0
            total = parts["drums"] + parts["bass"] + parts["other"] + parts["vocals"]
            np.testing.assert_array_equal(parts["mixture"], total)
            assert np.abs(parts["mixture"]).max() < 0.99
            for name in SOURCES:  # every stem is a real signal somewhere in the song
                assert np.abs(parts[name]).max() > 1e-3


def test_catalog_variants_decode_to_their_rate_and_channels(demo):
    out, summary = demo
    files = summary["catalog"]["files"]
    assert len(files) == 6
    assert {f["format"] for f in files.values()} == {ext for ext, _, _ in CATALOG_FORMATS}
    assert {f["sample_rate"] for f in files.values()} == set(CATALOG_RATES)
    assert {f["channels"] for f in files.values()} == set(CATALOG_CHANNELS)
    assert len({Path(name).parent for name in files}) >= 3  # a folder tree, not one flat folder
    assert any(UNICODE_TITLE in name and " " in name and not name.isascii() for name in files)
    for name, meta in files.items():
        path = out / "catalog" / name
        assert path.suffix == "." + meta["format"]
        decoded, rate = audio.load(path)
        assert rate == meta["sample_rate"]
        assert decoded.shape[0] == meta["channels"]
        # AAC in M4A decodes with its last frame's padding (under one 1024-sample frame + delay)
        slack = 2048 if meta["format"] == "m4a" else 2
        assert decoded.shape[1] == pytest.approx(meta["duration_s"] * rate, abs=slack)
        assert 0.05 < np.abs(decoded).max() <= 0.99
    on_disk = {p.relative_to(out / "catalog").as_posix() for p in (out / "catalog").rglob("*") if p.is_file()}
    assert on_disk == set(files) | set(summary["catalog"]["bad_files"])


def test_bad_catalog_files_raise_audio_error(demo):
    out, summary = demo
    bad = summary["catalog"]["bad_files"]
    assert sorted(Path(name).suffix for name in bad) == [".flac", ".mp3", ".wav"]
    assert (out / "catalog" / "bad" / "empty.wav").stat().st_size == 0
    truncated = (out / "catalog" / "bad" / "truncated.flac").read_bytes()
    assert truncated[:4] == b"fLaC" and len(truncated) > 42  # header intact, audio cut
    for name in bad:
        with pytest.raises(audio.AudioError):
            audio.load(out / "catalog" / name)


def test_truth_has_every_good_file_on_the_44k_grid(demo):
    out, summary = demo
    truth = pd.read_parquet(out / "catalog_truth.parquet")
    assert list(truth.columns) == ["file", "window", "start_s", *[f"V_{s}" for s in SOURCES]]
    assert all(truth[f"V_{s}"].dtype == np.float32 for s in SOURCES)
    files = summary["catalog"]["files"]
    assert set(truth["file"]) == set(files)
    for name, group in truth.groupby("file"):
        decoded, rate = audio.load(out / "catalog" / name)
        samples_44k = round(decoded.shape[1] * 44_100 / rate)
        # AAC decodes with up to 2048 samples of padding after the written audio
        padding = range(0, round(2049 * 44_100 / rate), 64) if name.endswith(".m4a") else [0]
        assert len(group) in {n_windows(samples_44k - pad, 44_100) for pad in padding}
        np.testing.assert_array_equal(group["window"].to_numpy(), np.arange(len(group)))
        np.testing.assert_allclose(group["start_s"].to_numpy(), np.arange(len(group)) * 0.064)
        volumes = group[[f"V_{s}" for s in SOURCES]].to_numpy()
        assert not np.isnan(volumes).any() and (volumes <= 1e-4).all()


def test_truth_belongs_to_the_written_mixture(demo):
    """Catalog track 1 is a 44.1 kHz stereo FLAC: regenerate its stems, compare file and truth."""
    out, summary = demo
    config = DemoConfig.tiny(seed=3)
    stems, _ = catalog_stems(config, 1)
    name = next(n for n in summary["catalog"]["files"] if n.split("/")[-1].startswith("001"))
    decoded, rate = audio.load(out / "catalog" / name)
    assert (rate, decoded.shape[0]) == (44_100, 2)
    reference = mix(stems).reshape(-1)
    decoded = decoded.reshape(-1)
    gain = float(decoded @ reference / (reference @ reference))
    residual = decoded - gain * reference
    assert np.sqrt(np.mean(residual**2)) < 1e-3 * np.sqrt(np.mean(decoded ** 2))
    truth = pd.read_parquet(out / "catalog_truth.parquet")
    volumes = truth[truth["file"] == name][[f"V_{s}" for s in SOURCES]].to_numpy().T
    np.testing.assert_allclose(volumes, relative_volumes(stems, 44_100), atol=1e-3)


def test_catalog_stems_are_written_only_when_asked_and_sum_to_the_catalog_file(tmp_path):
    config = DemoConfig(seed=3, n_train=1, n_valid=0, n_test=0, n_catalog=3, stem_duration_s=(4.0, 5.0),
                        catalog_duration_s=(6.0, 7.0))
    summary = generate(tmp_path, config)
    assert not (tmp_path / CATALOG_STEMS_DIR).exists() and not existing_catalog_stems(tmp_path, config)
    written = (tmp_path / "demo.json").stat().st_mtime_ns
    assert generate(tmp_path, config, catalog_stems=True) == summary  # added to the complete corpus...
    assert (tmp_path / "demo.json").stat().st_mtime_ns == written  # ... which is not written again
    assert existing_catalog_stems(tmp_path, config)
    tracks = list_tracks(tmp_path / CATALOG_STEMS_DIR, "train")
    assert [t.name for t in tracks] == sorted(catalog_stem_name(f) for f in summary["catalog"]["files"])
    truth = pd.read_parquet(tmp_path / "catalog_truth.parquet")
    name = next(n for n in summary["catalog"]["files"] if n.split("/")[-1].startswith("001"))  # 44.1 kHz stereo FLAC
    track = next(t for t in tracks if t.name == catalog_stem_name(name))
    assert sf.info(str(track.path("bass"))).subtype == "PCM_16"
    stems = np.stack([audio.load(track.path(source))[0] for source in SOURCES])
    decoded, rate = audio.load(tmp_path / "catalog" / name)
    assert rate == 44_100 and stems.shape[1:] == decoded.shape
    np.testing.assert_allclose(stems.sum(axis=0), decoded, atol=4 / 32768)  # four 16-bit roundings
    volumes = truth[truth["file"] == name][[f"V_{s}" for s in SOURCES]].to_numpy().T
    mine = relative_volumes(stems, rate)
    audible = volumes > -60
    np.testing.assert_allclose(mine[audible], volumes[audible], atol=0.05)
    for other in summary["catalog"]["files"]:  # every track at its catalog file's rate and channels
        info = summary["catalog"]["files"][other]
        wav = sf.info(str(tmp_path / CATALOG_STEMS_DIR / "train" / catalog_stem_name(other) / "mixture.wav"))
        assert (wav.samplerate, wav.channels) == (info["sample_rate"], info["channels"])
    assert not existing_catalog_stems(tmp_path, dataclasses.replace(config, seed=4))  # another corpus's config


def test_demo_json_records_config_and_counts(demo):
    out, summary = demo
    stored = json.loads((out / "demo.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert stored["seed"] == 3 and stored["config"]["n_catalog"] == 6
    assert stored["config"]["stem_duration_s"] == [8.0, 12.0]
    durations = stored["splits"]["train"]["track_durations_s"]
    assert len(durations) == 3 and stored["splits"]["train"]["duration_s"] == pytest.approx(sum(durations.values()))


@pytest.mark.slow
def test_absence_rates_match_musdb(song_set):
    volumes, _ = song_set
    absent = (volumes <= ABSENT_DB).mean(axis=1)
    for index, name in enumerate(SOURCES):
        assert abs(absent[index] - MUSDB_ABSENCE[name]) <= TOLERANCE[name], (name, absent[index])
    # the -13 dB training label and the -20 dB calibration target are different sets
    for index in range(len(SOURCES)):
        assert (volumes[index] <= -13).mean() - (volumes[index] <= -20).mean() > 0.03


@pytest.mark.slow
def test_relative_volumes_spread_over_all_bands(song_set):
    volumes, _ = song_set
    for name in ("drums", "bass", "vocals"):
        v = volumes[SOURCES.index(name)]
        for high, low in ((0.0, -10.0), (-10.0, -20.0), (-20.0, -40.0)):
            assert ((v <= high) & (v > low)).mean() > 0.01, (name, high, low)
        assert ((v <= -40.0) & (v > -np.inf)).mean() > 0.001  # fades reach below -40 dB
    assert not np.isnan(volumes).any()


@pytest.mark.slow
def test_long_silent_runs_exist(song_set):
    """Runs of >= 5 s where drums, bass or vocals are absent on every window, as in real songs."""
    _, per_song = song_set
    span = int(np.ceil((5.0 - 0.64) / 0.064)) + 1  # windows covering 5 s
    for index in (0, 1, 3):
        runs = 0
        for volumes in per_song:
            absent = np.concatenate([[0], (volumes[index] <= ABSENT_DB).astype(np.int8), [0]])
            edges = np.flatnonzero(np.diff(absent))
            runs += int((np.diff(edges)[::2] >= span).sum())
        assert runs >= 10, (SOURCES[index], runs)


@pytest.mark.parametrize("source", range(4))
def test_song_with_silence_stops_exactly(source):
    rate, silent_from = 16_000, 6.3
    stems, info = song_with_silence(np.random.default_rng(source), 12.0, rate, source, silent_from)
    cut = round(silent_from * rate)
    assert stems.shape == (4, 2, 12 * rate) and stems.dtype == np.float32
    assert not stems[source, :, cut:].any()
    assert np.abs(stems[source, :, cut - rate // 2:cut]).max() > 1e-3
    volumes = relative_volumes(stems, rate)
    window, hop = window_samples(rate)
    starts = np.arange(volumes.shape[1]) * hop
    before, after = starts + window <= cut, starts >= cut
    assert (volumes[source, before] > -30.0).all()
    assert np.isneginf(volumes[source, after]).all()
    others = [i for i in range(4) if i != source]
    assert (volumes[others] > -30.0).all()
    assert info.arrangement.states[source].tolist() == [2, 0]


@pytest.mark.slow
def test_same_seed_same_output_other_seed_differs(demo, tmp_path):
    out, summary = demo
    again = generate(tmp_path / "again", DemoConfig.tiny(seed=3))
    assert again == summary
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert any(rel.suffix == ".ogg" for rel in first)
    for rel in first:  # byte for byte, ogg included: the catalog's checksums and track ids are stable
        if rel.suffix != ".parquet":
            assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    pd.testing.assert_frame_equal(pd.read_parquet(out / "catalog_truth.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "catalog_truth.parquet"))
    other = DemoConfig(seed=4, n_train=1, n_valid=0, n_calibration=0, n_test=0, n_catalog=0,
                       stem_duration_s=(8.0, 12.0))
    generate(tmp_path / "other", other)
    a, _ = sf.read(str(out / "stems/train/demo-train-000/mixture.wav"), dtype="float32")
    b, _ = sf.read(str(tmp_path / "other/stems/train/demo-train-000/mixture.wav"), dtype="float32")
    assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.slow
def test_rerun_into_same_folder_is_idempotent_and_prunes(tmp_path):
    small = DemoConfig(seed=5, n_train=2, n_valid=1, n_calibration=0, n_test=0, n_catalog=3, stem_duration_s=(3.0, 4.0),
                       catalog_duration_s=(3.0, 4.0))
    generate(tmp_path, small)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    smaller = DemoConfig(seed=5, n_train=1, n_valid=1, n_calibration=0, n_test=0, n_catalog=2,
                         stem_duration_s=(3.0, 4.0), catalog_duration_s=(3.0, 4.0))
    generate(tmp_path, smaller)
    assert not (tmp_path / "stems/train/demo-train-001").exists()
    assert not list((tmp_path / "catalog").rglob("track_002.*"))
    generate(tmp_path, small)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    # the same config again: the complete corpus is kept as it is (ogg files included)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert generate(tmp_path, small) == json.loads((tmp_path / "demo.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    (tmp_path / "stems/train/demo-train-001/bass.wav").unlink()  # incomplete: written again
    generate(tmp_path, small)
    assert (tmp_path / "stems/train/demo-train-001/bass.wav").read_bytes() == before[
        tmp_path / "stems/train/demo-train-001/bass.wav"]
    generate(tmp_path, small, force=True)
    assert any(p.stat().st_mtime_ns != stamps[p] for p in stamps if p.exists())


@pytest.mark.slow
def test_parallel_workers_give_the_same_files(tmp_path):
    small = DemoConfig(seed=6, n_train=1, n_valid=0, n_calibration=0, n_test=1, n_catalog=3, stem_duration_s=(3.0, 4.0),
                       catalog_duration_s=(3.0, 4.0))
    serial = generate(tmp_path / "serial", small, workers=1)
    parallel = generate(tmp_path / "parallel", small, workers=2)
    assert serial == parallel
    for path in (p for p in (tmp_path / "serial").rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "parallel" / path.relative_to(tmp_path / "serial")).read_bytes()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        DemoConfig(n_train=-1)
    with pytest.raises(ValueError):
        DemoConfig(stem_duration_s=(10.0, 5.0))
    with pytest.raises(ValueError):
        song_with_silence(np.random.default_rng(0), 5.0, 16_000, 1, 5.0)
    with pytest.raises(ValueError):
        song_with_silence(np.random.default_rng(0), 5.0, 16_000, 4, 2.0)


@pytest.mark.slow
def test_command_line_song_counts(demo, tmp_path, capsys):
    from tasks.cli import main

    out, _ = demo
    assert main(["demo-data", "--out", str(tmp_path / "few"), "--tiny", "--seed", "3", "--n-train", "2",
                 "--n-test", "0", "--n-catalog", "1"]) == 0
    summary = json.loads((tmp_path / "few" / "demo.json").read_text())
    assert [summary["splits"][s]["tracks"] for s in ("train", "valid", "test")] == [2, 1, 0]
    assert summary["catalog"]["tracks"] == 1
    # per-song seeds: the first songs are those of the full tiny corpus
    for rel in ("stems/train/demo-train-001/mixture.wav", "stems/valid/demo-valid-000/vocals.wav",
                "catalog/artist_a/album_1/track_000.wav"):
        assert (tmp_path / "few" / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert main(["demo-data", "--out", str(tmp_path / "bad"), "--tiny", "--n-train", "-1"]) == 2
    assert "n_train must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
