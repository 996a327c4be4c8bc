"""The track-folder exports (``remix-pairs``, ``musdb``) read as the trainers read them: every
pair's target is the labelled stem it came from and its mixture the excerpt plus that stem;
pairs are the training code's remix draws, the same for a seed, and a killed export resumes to
the same tree; a musdb track holds its excerpt, a zero stem for the silent source and nothing
for the unknown ones."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from fixtures_extraction import make_extraction_run
from fixtures_trainers import (
    demucs_wavset,
    openunmix_aligned,
    openunmix_trackfolder_fix,
    openunmix_trackfolder_var,
    zfturbo_folders,
)

from pipeline.audio import io as audio_io
from pipeline.exports import build_exports
from pipeline.exports.musdb import export_musdb
from pipeline.exports.records import export_records
from pipeline.exports.remix_pairs import target_level_db
from pipeline.exports.trackfolders import read_manifest_lines, split_of
from pipeline.mining.datasets import DatasetRun
from pipeline.separation.data import StemWindows
from pipeline.separation.remix import RemixSampler
from pipeline.sources import INAUDIBLE_DB, SOURCES

RATE, CHANNELS, SECONDS = 44100, 2, 0.5
WINDOW = round(SECONDS * RATE)
VALID_FRACTION = 0.35  # puts one of the fixture's three catalog files in valid/ for seed 7
SEED = 7
PAIRS = {"train": 3, "valid": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir, _, _, _ = make_extraction_run(tmp_path_factory.mktemp("trackfolders"))
    return DatasetRun(run_dir)


@pytest.fixture(scope="module")
def stems(tmp_path_factory, write_stem_track):
    """Two train and one valid labelled track of 3 s at 44.1 kHz; vocals silent from 1 s on."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("stems")
    for split, count in (("train", 2), ("valid", 1)):
        for i in range(count):
            write_stem_track(root / split / f"{split}-{i}", rng, 3.0, silent={3: (1.0, 3.0)})
    return root


def _export_pairs(run, stems, out, seed=SEED, **changes):
    options = dict(stem_root=stems, pairs=PAIRS, seed=seed, pair_seconds=SECONDS, sample_rate=RATE,
                   channels=CHANNELS, valid_fraction=VALID_FRACTION, show_progress=False)
    return build_exports(run, "remix-pairs", out, **{**options, **changes})


@pytest.fixture(scope="module")
def pairs(run, stems, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    return out, _export_pairs(run, stems, out)


def _read(path):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE
    return audio.T


def _written(out):
    return [line for line in read_manifest_lines(out) if line["status"] == "written"]


def _tree_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "export.json"}


def test_the_splits_hold_catalog_files_apart(run):
    splits = {split_of(c, VALID_FRACTION, SEED) for c in run.index()["catalog_checksum"]}
    assert splits == {"train", "valid"}  # the fixture's seed and fraction exercise both


def test_a_pair_is_its_excerpt_plus_the_labelled_stem_it_came_from(run, stems, pairs):
    out, result = pairs
    lines = _written(out)
    assert result.counts["pairs"] == len(lines) > 0
    for line in lines:
        source, folder = line["source"], out / line["track"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(line["files"])
        mixture, target, rest = (_read(folder / f"{name}.wav") for name in ("mixture", source, f"no_{source}"))
        assert mixture.shape == target.shape == rest.shape == (CHANNELS, WINDOW)
        np.testing.assert_allclose(mixture, target + rest, atol=1e-6)
        # the target is the labelled stem at the recorded track and start (zero past the track's end)
        stem, _ = sf.read(stems / line["stem_split"] / line["stem_track"] / f"{source}.wav", dtype="float32",
                          always_2d=True, start=line["stem_start"], frames=WINDOW)
        expected = np.zeros((CHANNELS, WINDOW), np.float32)
        expected[:, : len(stem)] = stem.T
        np.testing.assert_array_equal(target, expected)
        # the rest is the recorded crop of the recorded excerpt of D_source, at the pair's rate
        row = run.index().set_index("excerpt_id").loc[line["excerpt_id"]]
        assert row["source"] == source
        assert split_of(row["catalog_checksum"], VALID_FRACTION, SEED) == line["split"] == line["stem_split"]
        rate = int(row["sample_rate"])
        assert line["excerpt_rate"] == rate
        span, _ = audio_io.load(run.audio_file(row), start=line["excerpt_start"],
                                frames=math.ceil(WINDOW * rate / RATE) + (16 if rate != RATE else 0))
        crop = audio_io.match_channels(audio_io.resample(span, rate, RATE), CHANNELS)[:, :WINDOW]
        np.testing.assert_array_equal(rest[:, : crop.shape[1]], crop)
        assert not rest[:, crop.shape[1]:].any()  # zero-padded past the excerpt's end
        assert target_level_db(target, mixture) > INAUDIBLE_DB
        assert line["target_db"] == pytest.approx(target_level_db(target, mixture), abs=1e-3)


def test_pairs_are_the_training_codes_remix_draws(run, stems, pairs):
    """Draw k of (split, source) is StemWindows.sample then RemixSampler.sample on
    default_rng([seed, split, source, k]), over the excerpts of the split."""
    out, _ = pairs
    for split in PAIRS:
        windows = StemWindows(stems, split, WINDOW, RATE, CHANNELS)
        sampler = RemixSampler(run, RATE, CHANNELS, WINDOW)
        sampler.excerpts = {i: rows[[split_of(c, VALID_FRACTION, SEED) == split for c in rows["catalog_checksum"]]]
                            .reset_index(drop=True) for i, rows in sampler.excerpts.items()}
        for line in (ln for ln in _written(out) if ln["split"] == split):
            i = SOURCES.index(line["source"])
            rng = np.random.default_rng([SEED, ("train", "valid").index(split), i, line["draw"]])
            target = windows.sample(rng, 1)[0, i]
            rest = sampler.sample(i, 1, rng)[0]
            folder = out / line["track"]
            np.testing.assert_array_equal(_read(folder / f"{line['source']}.wav"), target)
            np.testing.assert_array_equal(_read(folder / f"no_{line['source']}.wav"), rest)


def test_inaudible_stems_and_empty_sources_are_skipped_with_a_reason(stems, pairs):
    out, result = pairs
    skipped = [line for line in read_manifest_lines(out) if line["status"] == "skipped"]
    assert skipped and result.counts["skipped"] == len(skipped)
    for line in skipped:  # vocals are silent from 1 s on in every labelled track
        assert line["source"] == "vocals" and "inaudible" in line["reason"]
        stem, _ = sf.read(stems / line["stem_split"] / line["stem_track"] / "vocals.wav", dtype="float32",
                          start=line["stem_start"], frames=WINDOW)
        assert not stem.any()
    for source in ("drums", "bass", "vocals"):  # other has no excerpt at all
        for split, count in PAIRS.items():
            assert result.counts[f"pairs_{source}_{split}"] == count
    assert not (out / "other").exists()
    assert any("other/train: no pairs: D_other has no excerpt" in line for line in result.summary)


def test_remix_pairs_are_deterministic_for_a_seed(run, stems, pairs, tmp_path):
    out, _ = pairs
    _export_pairs(run, stems, tmp_path / "again")
    assert _tree_bytes(tmp_path / "again") == _tree_bytes(out)
    _export_pairs(run, stems, tmp_path / "other", seed=SEED + 1)
    draws = [(ln["stem_track"], ln["stem_start"], ln["excerpt_start"]) for ln in _written(out)]
    assert [(ln["stem_track"], ln["stem_start"], ln["excerpt_start"]) for ln in _written(tmp_path / "other")] != draws


def test_a_killed_export_resumes_to_the_same_pairs(run, stems, pairs, tmp_path):
    out, _ = pairs
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    manifest = killed / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(b"".join(lines[:4]) + lines[4][:25])  # killed while appending line 5
    written_later = [json.loads(t) for t in lines[5:] if json.loads(t)["status"] == "written"]
    shutil.rmtree(killed / written_later[-1]["track"])  # not yet written
    (killed / "bass" / "train" / ".pair-000009.tmp-1-dead").mkdir()  # a killed writer's folder
    os.remove(killed / "export.json")
    kept = killed / next(json.loads(t) for t in lines[:4] if json.loads(t)["status"] == "written")["track"]
    before = kept.stat().st_ino
    _export_pairs(run, stems, killed)
    assert _tree_bytes(killed) == _tree_bytes(out)
    assert kept.stat().st_ino == before  # a pair with its line is not made again


def test_an_export_never_mixes_two_option_sets(run, stems, pairs):
    out, _ = pairs
    with pytest.raises(ValueError, match="other options .*seed"):
        _export_pairs(run, stems, out, seed=SEED + 1)


def test_open_unmix_demucs_and_zfturbo_read_the_pairs(pairs):
    out, _ = pairs
    by_folder = {ln["track"]: ln for ln in _written(out)}
    for source in ("drums", "bass", "vocals"):
        root = out / source
        for split in PAIRS:
            aligned = openunmix_aligned(root, split, "mixture.wav", f"{source}.wav", seq_duration=SECONDS / 2)
            fixed = openunmix_trackfolder_fix(root, split, f"{source}.wav", [f"no_{source}.wav"],
                                              seq_duration=SECONDS / 2)
            assert len(aligned) == len(fixed) == PAIRS[split]
            for (x, y), (x_fix, y_fix) in zip(sorted(aligned, key=lambda p: p[1].sum()),
                                             sorted(fixed, key=lambda p: p[1].sum())):
                np.testing.assert_array_equal(y, y_fix)
                np.testing.assert_allclose(x, x_fix, atol=1e-6)  # the mixture file is the stems' sum
            demucs = demucs_wavset(root / split, [source, f"no_{source}"])
            zfturbo = zfturbo_folders(root / split, [source, f"no_{source}"], validation=True)
            assert set(demucs) == set(zfturbo) == {t.rsplit("/", 1)[1] for t in by_folder
                                                   if t.startswith(f"{source}/{split}/")}
            for name, stack in demucs.items():
                np.testing.assert_allclose(stack.sum(0), zfturbo[name]["mixture"], atol=1e-6)
        with pytest.raises(RuntimeError, match="empty"):  # shorter pairs than the chunk asked for
            openunmix_aligned(root, "train", "mixture.wav", f"{source}.wav", seq_duration=SECONDS)


def test_remix_pairs_from_the_command_line(run, stems, tmp_path):
    from tasks.cli import main

    code = main(["export", "--format", "remix-pairs", "--run-dir", str(run.folder), "--out", str(tmp_path),
                 "--stem-root", str(stems), "--pairs", "1", "--valid-pairs", "0", "--pair-seconds", "0.25",
                 "--valid-fraction", "0", "--seed", "3"])
    assert code == 0
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["counts"]["pairs"] == 3 and record["options"]["pairs"] == {"train": 1, "valid": 0}
    assert {ln["split"] for ln in _written(tmp_path)} == {"train"}
    assert sf.info(tmp_path / "drums" / "train" / "pair-000000" / "drums.wav").frames == round(0.25 * RATE)


# --- musdb ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def musdb(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("musdb")
    return out, build_exports(run, "musdb", out, sample_rate=RATE, channels=CHANNELS,
                              valid_fraction=VALID_FRACTION, seed=SEED, show_progress=False)


def test_a_musdb_track_is_its_excerpt_with_a_zero_stem_and_unknown_others(run, musdb):
    out, result = musdb
    index = run.index().set_index("excerpt_id")
    lines = _written(out)
    assert len(lines) == result.counts["tracks"] == len(index)
    for line in lines:
        row, source = index.loc[line["excerpt_id"]], line["source"]
        assert source == row["source"]
        assert line["track"] == f"{source}/{split_of(row['catalog_checksum'], VALID_FRACTION, SEED)}/" \
                                f"{line['excerpt_id']}"
        folder = out / line["track"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(["mixture.wav", f"{source}.wav",
                                                                   f"no_{source}.wav"])
        mixture, silent = _read(folder / "mixture.wav"), _read(folder / f"{source}.wav")
        excerpt, _ = audio_io.load(run.audio_file(row), sample_rate=RATE)
        np.testing.assert_array_equal(mixture, audio_io.match_channels(excerpt, CHANNELS))
        assert silent.shape == mixture.shape and not silent.any()
        assert (folder / f"no_{source}.wav").read_bytes() == (folder / "mixture.wav").read_bytes()
        assert line["stems"] == {**{s: "unknown" for s in SOURCES}, source: "silent", f"no_{source}": "mixture"}
        assert line["provenance"]["catalog_checksum"] == row["catalog_checksum"]


def test_musdb_tracks_read_as_the_trainers_read_them(musdb):
    out, _ = musdb
    for source in ("drums", "bass", "vocals"):
        for split in ("train", "valid"):
            root = out / source
            if not (root / split).is_dir():
                continue
            demucs = demucs_wavset(root / split, [source, f"no_{source}"])
            zfturbo = zfturbo_folders(root / split, [source, f"no_{source}"], validation=True)
            assert set(demucs) == set(zfturbo) and demucs
            for x, y in openunmix_trackfolder_fix(root, split, f"{source}.wav", [f"no_{source}.wav"], None):
                assert not y.any() and x.any()
            # trackfolder_var sums every wav but the target: the mixture and no_<s> twice over
            for folder, x, y in openunmix_trackfolder_var(root, split, f"{source}.wav"):
                np.testing.assert_allclose(x, 2 * _read(folder / "mixture.wav"), atol=1e-6)
                assert not y.any()


def test_an_undecodable_excerpt_is_skipped_with_its_reason(run, tmp_path):
    records = export_records(run)[:2]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    records[1] = {**records[1], "audio_file": str(broken)}
    export_musdb(records, tmp_path / "out", sample_rate=RATE, channels=CHANNELS, valid_fraction=0.0,
                 show_progress=False)
    first, second = read_manifest_lines(tmp_path / "out")
    assert first["status"] == "written" and second["status"] == "skipped"
    assert second["reason"].startswith("excerpt not decodable")
    assert not (tmp_path / "out" / second["source"] / "train" / second["excerpt_id"]).exists()


def test_the_export_stage_writes_pairs_keyed_by_the_stem_set(run, stems, tmp_path, monkeypatch, luigi_options):
    """``Export(format="remix-pairs")`` reads [silentmine] stem_root and seed, keys on the stem set,
    and hands its options to the library (Extract's D_i stands in for the fixture's)."""
    import tasks.export

    with luigi_options({"silentmine": {"data_root": tmp_path / "data", "stem_root": stems, "seed": SEED}}):
        task = tasks.export.Export(format="remix-pairs", pairs=1, valid_pairs=1, pair_seconds=0.25,
                                   valid_fraction=VALID_FRACTION)
        monkeypatch.setattr(task, "requires", lambda: {"dataset": type("Extracted", (), {"dataset": run})()})
        assert set(task.external_keys()) == {"stem_set"} and task.key_params()["seed"] == SEED
        result = task.build(tmp_path / "stage")
    assert result.counts["pairs"] == 6  # drums, bass and vocals, one train and one valid pair each
    record = json.loads((tmp_path / "stage" / "export.json").read_text())
    assert record["options"]["stem_root"] == str(stems) and record["options"]["seed"] == SEED
    assert record["options"]["pairs"] == {"train": 1, "valid": 1}
