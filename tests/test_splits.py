"""The calibration split: its own folder, or a fixed share of the training songs; never shared with
the songs the detector trains on or that Evaluate scores, and the pipeline refuses a configuration
that would share them."""

from __future__ import annotations

import luigi
import numpy as np
import pandas as pd
import pytest

from pipeline.corpora import stemset
from pipeline.corpora.labels import build_labels
from pipeline.corpora.stemset import CALIBRATION_SHARE, calibration_tracks, carved_calibration, list_tracks
from tests.fixtures_stems import stem_track as write_stem_track


def _names(root, split):
    return [t.name for t in list_tracks(root, split)]


def _mp4_set(root, names_by_subset):
    for subset, names in names_by_subset.items():
        (root / subset).mkdir(parents=True)
        for name in names:
            (root / subset / f"{name}.stem.mp4").write_bytes(b"listed by name and size only")
    return root


def test_a_set_without_a_calibration_folder_takes_a_fixed_share_of_its_training_songs(tmp_path):
    train = [f"Song {k:02d}" for k in range(23)] + ["Leaf - Summerghost"]  # one of MUSDB's validation songs
    root = _mp4_set(tmp_path / "musdb", {"train": train, "test": ["A - Test", "B - Test"]})
    splits = {split: _names(root, split) for split in stemset.SPLITS}
    assert splits["valid"] == ["Leaf - Summerghost"]
    assert len(splits["calibration"]) == 23 // CALIBRATION_SHARE == 4
    assert sorted(splits["train"] + splits["calibration"]) == sorted(train[:-1])
    assert not set(splits["train"]) & set(splits["calibration"])
    assert splits["test"] == ["A - Test", "B - Test"]
    # Deterministic, from the names alone: the same songs in another order, or listed again.
    assert set(splits["calibration"]) == carved_calibration(list(reversed(train[:-1])))
    assert _names(root, "calibration") == splits["calibration"]
    assert {t.split for t in list_tracks(root, "calibration")} == {"calibration"}
    # Too few training songs: none is taken.
    small = _mp4_set(tmp_path / "small", {"train": ["x", "y", "z"], "test": ["t"]})
    assert _names(small, "calibration") == [] and _names(small, "train") == ["x", "y", "z"]


def test_folder_layout_calibration_folder_or_carved_share(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "stems"
    for split, count in (("train", 10), ("valid", 1), ("test", 1)):
        for k in range(count):
            write_stem_track(root / split / f"{split}-{k}", rng, 0.5)
    carved = _names(root, "calibration")
    assert len(carved) == 2 and not set(carved) & set(_names(root, "train"))
    assert len(_names(root, "train")) == 8 and _names(root, "valid") == ["valid-0"]
    # the labels name each song's split, and their stage counts the songs of each
    done = build_labels(root, list(stemset.SPLITS), tmp_path / "labels.parquet")
    assert done.counts["split_tracks"] == {"train": 8, "valid": 1, "calibration": 2, "test": 1}
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    assert sorted(labels.loc[labels["split"] == "calibration", "name"].unique()) == sorted(carved)
    write_stem_track(root / "calibration" / "calibration-0", rng, 0.5)  # a folder of its own wins
    assert _names(root, "calibration") == ["calibration-0"]
    assert len(_names(root, "train")) == 10


def test_calibration_and_evaluation_songs_are_disjoint_or_refused(tmp_path):
    root = _mp4_set(tmp_path / "musdb", {"train": [f"Song {k:02d}" for k in range(10)], "test": ["A - Test"]})
    tracks = calibration_tracks(root, ("calibration",))
    names = {t.name for t in tracks}
    assert len(names) == 2
    assert not names & set(_names(root, "train")) and not names & set(_names(root, "test"))
    with pytest.raises(ValueError, match="Evaluate scores"):
        calibration_tracks(root, ("test",))
    with pytest.raises(ValueError, match="detector trains on"):
        calibration_tracks(root, ("calibration", "train"))
    with pytest.raises(ValueError, match="no song"):
        calibration_tracks(_mp4_set(tmp_path / "few", {"train": ["x"], "test": ["t"]}), ("calibration",))
    # The same song in the calibration folder and in the test folder.
    folder = tmp_path / "stems"
    rng = np.random.default_rng(1)
    for split, name in (("train", "a"), ("calibration", "shared"), ("calibration", "b"), ("test", "shared")):
        write_stem_track(folder / split / name, rng, 0.5)
    with pytest.raises(ValueError, match="also evaluation songs"):
        calibration_tracks(folder, ("calibration",))
    # Valid songs stop the detector's training early; they may calibrate.
    assert {t.name for t in calibration_tracks(root, ("valid", "calibration"), trained=("train",))} == names


def test_the_pipeline_refuses_to_calibrate_on_the_songs_evaluate_scores(tmp_path, luigi_config, tiny_demo):
    import tasks

    demo = tiny_demo(tmp_path / "demo")
    luigi_config("silentmine", "stem_root", demo / "stems")
    luigi_config("silentmine", "catalog", demo / "catalog")
    with pytest.raises(ValueError, match="Evaluate scores"):
        tasks.Calibrate(splits=("calibration", "test")).requires()
    luigi_config("Evaluate", "split", "calibration")  # evaluating the calibration songs is refused too
    with pytest.raises(ValueError, match="Evaluate scores"):
        tasks.Calibrate().requires()
    luigi_config("Evaluate", "split", "test")
    result = luigi.build([tasks.Calibrate(splits=("test",))], local_scheduler=True, detailed_summary=True)
    assert not result.scheduling_succeeded
    assert not (tmp_path / "data" / "calibration").exists()  # nothing ran
    # The demo's own split: its songs are neither training nor test songs.
    calibration = tasks.Calibrate().requires()
    assert set(calibration) == {"labels", "detect_calibration"}
    songs = {t.name for t in list_tracks(demo / "stems", "calibration")}
    assert songs == {"demo-calibration-000"}
    assert not songs & {t.name for split in ("train", "valid", "test") for t in list_tracks(demo / "stems", split)}
