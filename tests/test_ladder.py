"""The mining value ladder: the oracle D_i (the run rule on the true V_i), the catalog's true
stems added to the labelled set, and the Luigi rungs that train on them."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from fixtures_stems import write_stem_set

from pipeline.corpora.stem_union import EXTRA_PREFIX, build_stem_union
from pipeline.corpora.stemset import list_tracks
from pipeline.mining.datasets import DatasetRun, ShardStore
from pipeline.mining.extraction import RunRule
from pipeline.mining.ground_truth import (
    ORACLE_KEY,
    build_oracle_datasets,
    file_durations,
    measure_extraction,
    oracle_probabilities,
    simulated_index,
)
from pipeline.separation.remix import RemixSampler
from pipeline.sources import HOP_S, SOURCES, WINDOW_S

RATE = 16_000
SECONDS = 12.0
FRAMES = int((SECONDS - WINDOW_S) / HOP_S) + 1  # the grid's windows of a 12 s file: 178


def _truth(file: str, silent: dict[str, list[tuple[int, int]]], level: float = -5.0) -> pd.DataFrame:
    """A hand-made truth table of one file: every V_i at ``level`` dB but the frame spans
    ``[a, b)`` of ``silent[source]``, which get -35 dB (-inf for vocals' second span)."""
    table = pd.DataFrame({"file": file, "window": np.arange(FRAMES, dtype=np.int32),
                          "start_s": np.arange(FRAMES) * HOP_S})
    for source in SOURCES:
        values = np.full(FRAMES, level, dtype=np.float32)
        for k, (a, b) in enumerate(silent.get(source, [])):
            values[a:b] = -np.inf if (source, k) == ("vocals", 1) else -35.0
        table[f"V_{source}"] = values
    return table


@pytest.fixture
def catalog(tmp_path):
    """One 12 s, 16 kHz stereo wav in a catalog folder, its scan table and a hand-made truth table:
    vocals truly silent in frames [10, 100) (6.3 s) and [120, 178) (the end: 4.3 s, too short);
    drums in [20, 60) (3.2 s: too short) and [62, 150), split from it by a 2-frame dip; bass never."""
    root = tmp_path / "catalog"
    (root / "album").mkdir(parents=True)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, size=(int(SECONDS * RATE), 2)).astype(np.float32)
    path = root / "album" / "song.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    tracks = pd.DataFrame({"path": [str(path)], "checksum": [""], "track_id": ["ab12"], "shard": [0]})
    tracks.to_parquet(tmp_path / "tracks.parquet")
    truth = _truth("album/song.wav", {"vocals": [(10, 100), (120, FRAMES)], "drums": [(20, 60), (62, 150)]})
    truth.to_parquet(tmp_path / "truth.parquet")
    return tmp_path, sf.read(path, dtype="float32")[0].T, truth, tracks


def test_oracle_probabilities_are_the_truth_thresholded_at_minus_20_db(catalog):
    folder, _, truth, tracks = catalog
    probabilities = oracle_probabilities(truth, tracks, folder / "catalog")
    assert list(probabilities.columns) == ["track_id", "frame", "start_s", *[f"p_{s}" for s in SOURCES]]
    assert len(probabilities) == FRAMES and set(probabilities["track_id"]) == {"ab12"}
    vocals = probabilities["p_vocals"].to_numpy()
    assert vocals[10:100].all() and vocals[120:].all() and not vocals[:10].any() and not vocals[100:120].any()
    assert probabilities["p_bass"].sum() == 0
    assert oracle_probabilities(truth, tracks, folder / "elsewhere").empty  # the file is not under that root
    assert oracle_probabilities(truth, tracks, folder / "catalog", silent_db=-40.0)["p_vocals"].sum() == FRAMES - 120


@pytest.mark.parametrize("max_gap", [0, 2])
def test_the_oracle_d_i_is_the_run_rule_on_the_true_volumes(catalog, max_gap):
    folder, audio, _, _ = catalog
    data_root = folder / "data"
    out = data_root / "oracle_datasets" / "k"
    result = build_oracle_datasets(folder / "truth.parquet", folder / "tracks.parquet", folder / "catalog", out,
                                   data_root, RunRule(5.0, max_gap))
    run = DatasetRun(out)  # read like a mined D_i: the view folder's grandparent is the data root
    index = run.index().sort_values(["source", "start_s"]).reset_index(drop=True)
    expected = [("vocals", 10, 100)] + ([("drums", 20, 150)] if max_gap else [("drums", 62, 150)])
    assert sorted(zip(index["source"], index["start_s"])) == sorted((s, a * HOP_S) for s, a, _ in expected)
    for source, first, stop in expected:
        row = index[index["source"] == source].iloc[0]
        end_s = (stop - 1) * HOP_S + WINDOW_S
        assert row["end_s"] == pytest.approx(end_s) and row["n_frames"] == stop - first
        assert (row["detector_key"], row["calibration_key"], row["threshold"]) == (ORACLE_KEY, ORACLE_KEY, 0.5)
        excerpt, rate = sf.read(run.audio_file(row), dtype="float32")
        assert rate == RATE
        np.testing.assert_array_equal(excerpt.T, audio[:, round(first * HOP_S * RATE):round(end_s * RATE)])
    assert result.counts["excerpts_bass"] == 0 and result.counts["tracks_with_truth"] == 1
    assert result.counts["hours_vocals"] == pytest.approx((89 * HOP_S + WINDOW_S) / 3600, abs=1e-4)
    marker = ShardStore(out).read_marker(ORACLE_KEY)
    assert sorted(marker["files"]["audio"]) == sorted(run.audio_file(r).relative_to(out).as_posix()
                                                     for r in index.to_dict("records"))
    sampler = RemixSampler(run, RATE, 2, window=RATE)  # the remix step reads it as it reads a mined D_i
    assert sampler.available == [SOURCES.index("drums"), SOURCES.index("vocals")]
    with pytest.raises(ValueError, match="names none of the 1 files"):
        build_oracle_datasets(folder / "truth.parquet", folder / "tracks.parquet", folder, folder / "other", data_root)


# ------------------------------------------------------------------ the labelled set plus the catalog's stems
def test_the_union_adds_the_extra_train_tracks_and_keeps_the_valid_split(tmp_path):
    stems = write_stem_set(tmp_path / "stems", {"train": 2, "valid": 1, "test": 1}, seconds=0.5)
    extra = write_stem_set(tmp_path / "extra", {"train": 3}, seconds=0.5, seed=1)
    out = tmp_path / "union"
    (out / "train" / "left-over").mkdir(parents=True)  # a track of an earlier union
    result = build_stem_union(out, stems, extra)
    assert result.counts == {"train_tracks": 2, "extra_tracks": 3, "valid_tracks": 1}
    assert [t.name for t in list_tracks(out, "train")] == [f"{EXTRA_PREFIX}train-{k:02d}" for k in range(3)] + [
        "train-00", "train-01"]
    assert [t.name for t in list_tracks(out, "valid")] == ["valid-00"] and list_tracks(out, "test") == []
    linked = out / "train" / f"{EXTRA_PREFIX}train-02" / "vocals.wav"
    assert os.path.samefile(linked, extra / "train" / "train-02" / "vocals.wav")
    assert not (out / "train" / "left-over").exists()
    with pytest.raises(ValueError, match="no train track"):
        build_stem_union(tmp_path / "bad", stems, tmp_path / "stems" / "test")


# ------------------------------------------------------------------ the rungs as Luigi tasks
LADDER_RUNS = {"plain": {"remix": False}, "remix": {"remix": True}, "oracle": {"remix": True, "d_i": "oracle"},
               "stems": {"remix": False, "catalog_stems": True}}


@pytest.fixture
def ladder_config(tmp_path, small_catalog, luigi_options):
    stems = write_stem_set(tmp_path / "stems", {"train": 1, "valid": 1, "test": 1}, seconds=0.5)
    extra = write_stem_set(tmp_path / "extra", {"train": 2}, seconds=0.5, seed=1)
    pd.DataFrame({"file": ["x"], "window": [0]}).to_parquet(tmp_path / "truth.parquet")
    options = {"silentmine": {"data_root": tmp_path / "data", "stem_root": stems, "catalog": small_catalog,
                              "catalog_truth": tmp_path / "truth.parquet", "catalog_stems": extra},
               "TrainSeparator": {"model": "tasnet", "max_updates": 7, "model_config": '{"filters": 8}'},
               "Evaluate": {"runs": json.dumps(LADDER_RUNS)}}
    with luigi_options(options) as set_option:
        yield set_option


def test_evaluate_trains_each_rung_with_the_train_separator_config(ladder_config):
    import tasks

    runs = {label: seeds[None] for label, seeds in tasks.Evaluate().run_tasks().items()}
    assert [type(t) for t in runs.values()] == [tasks.TrainSeparator, tasks.TrainSeparator,
                                                 tasks.TrainOnOracleDatasets, tasks.TrainWithCatalogStems]
    for task in runs.values():  # [TrainSeparator], not the subclass's own (empty) section
        assert (task.model, task.max_updates, dict(task.model_config)) == ("tasnet", 7, {"filters": 8})
    assert isinstance(runs["remix"].requires()["datasets"], tasks.Extract)
    assert isinstance(runs["oracle"].requires()["datasets"], tasks.OracleDatasets)
    assert runs["stems"].labelled_root() == str(tasks.CatalogStemSet().folder)
    assert runs["plain"].labelled_root() == tasks.silentmine().stem_root
    assert len({task.key for task in runs.values()}) == 4  # four rows, four trainings
    assert {task.task_family for task in runs.values()} >= {"TrainOnOracleDatasets", "TrainWithCatalogStems"}


def test_evaluate_leaves_out_a_rung_whose_ground_truth_is_not_there(ladder_config, tmp_path):
    import tasks

    ladder_config("Evaluate", "contrasts", '[["remix", "plain"], ["oracle", "plain"]]')
    ladder_config("silentmine", "catalog_truth", "")  # a catalog without known volumes
    evaluate = tasks.Evaluate()
    assert evaluate.left_out() == {"oracle": "[silentmine] catalog_truth is empty"}
    assert list(evaluate.run_tasks()) == ["plain", "remix", "stems"]
    assert "oracle" not in evaluate.requires() and evaluate.key_params()["left_out"] == ["oracle"]
    ladder_config("silentmine", "catalog_truth", tmp_path / "none.parquet")  # a path that is not there: an error
    with pytest.raises(FileNotFoundError, match="none.parquet: no such file"):
        tasks.Evaluate().left_out()


def test_repeated_mining_gives_each_seeds_mined_run_the_d_i_of_its_own_detector(ladder_config):
    """``repeat_mining``: seed s of the mined rung reads Extract(detector_seed=s) (seed 0, the
    configured one, the default detector); the other rungs are the runs they were without it;
    the summary line says which detector noise the mined row's interval holds."""
    import tasks

    ladder_config("Evaluate", "seeds", "[0, 1, 2]")
    once = tasks.Evaluate().run_tasks()
    ladder_config("Evaluate", "repeat_mining", "true")
    evaluate = tasks.Evaluate()
    repeated = evaluate.run_tasks()
    assert [repeated["remix"][s].requires()["datasets"].detector_seed for s in (0, 1, 2)] == [None, 1, 2]
    assert [once["remix"][s].requires()["datasets"].detector_seed for s in (0, 1, 2)] == [None, None, None]
    assert repeated["remix"][0].key == once["remix"][0].key
    assert repeated["remix"][1].key != once["remix"][1].key
    for label in ("plain", "oracle", "stems"):
        assert [t.task_id for t in repeated[label].values()] == [t.task_id for t in once[label].values()]
    assert evaluate.key != tasks.Evaluate(repeat_mining=False).key
    assert "mining repeated per seed: each seed of remix" in evaluate.mining_line()
    assert "reads one detector's D_i" in tasks.Evaluate(repeat_mining=False).mining_line()


@pytest.mark.parametrize("params, message", [({"remix": False, "d_i": "oracle"}, "feeds the remix step"),
                                              ({"d_i": "oracle", "catalog_stems": True}, "one rung per run"),
                                              ({"d_i": "perfect"}, "d_i must be one of")])
def test_a_rung_that_makes_no_sense_is_refused(ladder_config, params, message):
    from tasks.ladder import ladder_task

    with pytest.raises(ValueError, match=message):
        ladder_task(params)


def test_the_upper_rungs_need_the_truth_named_explicitly(ladder_config):
    import tasks

    ladder_config("silentmine", "catalog_truth", "")
    ladder_config("silentmine", "catalog_stems", "")
    with pytest.raises(ValueError, match=r"set \[silentmine\] catalog_truth"):
        _ = tasks.OracleDatasets().key
    with pytest.raises(ValueError, match=r"set \[silentmine\] catalog_stems"):
        _ = tasks.CatalogStemSet().key


def test_the_oracle_stage_cuts_what_the_run_rule_simulates_on_the_demo_catalog(tmp_path, tiny_demo, run_pipeline,
                                                                                  luigi_options):
    import tasks

    corpus = tiny_demo(tmp_path / "demo")
    options = {"silentmine": {"data_root": tmp_path / "data", "stem_root": corpus / "stems",
                              "catalog": corpus / "catalog", "catalog_truth": corpus / "catalog_truth.parquet"}}
    with luigi_options(options):
        assert "OracleDatasets" in run_pipeline("OracleDatasets")
        stage = tasks.OracleDatasets()
        index = stage.dataset.index()
        scan = pd.read_parquet(tasks.ScanCatalog().tracks_file)
        truth = pd.read_parquet(corpus / "catalog_truth.parquet")
        assert len(index) > 0 and stage.manifest["counts"]["excerpts"] == len(index)
        assert stage.manifest["shards"] == ["oracle"] and stage.dataset.store.folder == stage.folder
    probabilities = oracle_probabilities(truth, scan, corpus / "catalog")
    simulated = simulated_index(probabilities, scan, {s: 0.5 for s in SOURCES}, file_durations(truth),
                                corpus / "catalog")
    cut = sorted(zip(index["source"], index["catalog_path"], index["start_s"].round(6), index["end_s"].round(3)))
    expected = sorted(zip(simulated["source"], simulated["catalog_path"], simulated["start_s"].round(6),
                          simulated["end_s"].round(3)))
    assert set(cut) <= set(expected) and len(cut) >= len(expected) - 2  # all-zero stretches are not cut
    measured = measure_extraction(index, truth, corpus / "catalog").set_index("source")
    assert (measured.loc[measured["n_excerpts"] > 0, "fraction_silent"] > 0.9).all()
