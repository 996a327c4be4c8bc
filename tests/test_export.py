"""Exports of a D_i, each loaded with the real library: counts, durations and provenance survive;
the Hugging Face export loads as its README shows on a machine without an audio decoder for
datasets; the remix sampler draws the same crops from WebDataset shards as from the folder.
(The track-folder formats: test_export_trackfolders.py.)"""

from __future__ import annotations

import io
import json
import math
import re
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from fixtures_extraction import make_extraction_run

from pipeline.exports import build_exports
from pipeline.exports.webdataset import webdataset_members
from pipeline.mining.datasets import DatasetRun
from pipeline.separation.remix import RemixSampler
from pipeline.sources import SOURCES

PROVENANCE = ("catalog_path", "catalog_checksum", "start_s", "end_s", "start_sample", "end_sample", "threshold",
              "detector_key", "calibration_key", "audio_checksum", "source")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir, _, _, _ = make_extraction_run(tmp_path_factory.mktemp("export"))
    return DatasetRun(run_dir)


@pytest.fixture(scope="module")
def index(run):
    frame = run.index().set_index("excerpt_id")
    assert len(frame) > 4 and frame["channels"].nunique() == 2  # mono and stereo excerpts
    return frame


def _samples(row) -> int:
    return int(row["end_sample"] - row["start_sample"])


def _same_provenance(record: dict, row) -> None:
    for name in PROVENANCE:
        assert record[name] == pytest.approx(row[name]) if isinstance(row[name], float) else record[name] == row[name]


def test_index_parts_keep_the_source_column(run, index):
    parts = sorted(run.index_dir.glob("source=*/part-*.parquet"))
    flat = pd.concat([pd.read_parquet(p, engine="pyarrow").assign(folder=p.parent.name) for p in parts])
    assert len(flat) == len(index)
    assert (("source=" + flat["source"].astype(str)) == flat["folder"]).all()


def test_lhotse(run, index, tmp_path):
    import lhotse  # in the test extras: a missing one fails
    counts = build_exports(run, "lhotse", tmp_path).counts
    cuts = lhotse.CutSet.from_file(tmp_path / "cuts.jsonl.gz")
    recordings = lhotse.RecordingSet.from_file(tmp_path / "recordings.jsonl.gz")
    assert len(cuts) == len(recordings) == len(index) == counts["excerpts"]
    for cut in cuts:
        row = index.loc[cut.id]
        audio = cut.load_audio()  # (channels, samples), read by lhotse from the excerpt file
        assert audio.shape == (row["channels"], _samples(row))
        assert cut.duration == pytest.approx(_samples(row) / row["sample_rate"])
        assert [s.custom["silent_source"] for s in cut.supervisions] == [row["source"]]
        _same_provenance(cut.custom, row)
    assert json.loads((tmp_path / "export.json").read_text())["counts"]["excerpts"] == len(index)


def test_hf(run, index, tmp_path, monkeypatch):
    import datasets  # in the test extras: a missing one fails
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # a bare machine: datasets cannot decode audio
    build_exports(run, "hf", tmp_path / "hf", shard_size=2)
    loaded = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    present = [s for s in SOURCES if (index["source"] == s).any()]
    assert sorted(loaded) == sorted(present)  # one split per source with excerpts ("other" has none)
    assert loaded[present[0]].features["audio"] == datasets.Audio(decode=False)
    seen = 0
    for split in present:
        rows = loaded[split]
        assert len(rows) == int((index["source"] == split).sum())
        for item in rows:  # rows read as they come: no cast, no decoder
            row = index.loc[item["excerpt_id"]]
            assert item["source"] == split and item["audio"]["path"] == f"{item['excerpt_id']}.flac"
            info = sf.info(io.BytesIO(item["audio"]["bytes"]))
            assert (info.frames, info.samplerate, info.channels) == (_samples(row), row["sample_rate"], row["channels"])
            assert item["duration"] == pytest.approx(_samples(row) / row["sample_rate"])
            _same_provenance(item, row)
            seen += 1
    assert seen == len(index)


def test_hf_loads_as_its_readme_shows(run, index, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    build_exports(run, "hf", tmp_path / "hf")
    readme = (tmp_path / "hf" / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    scope: dict = {}
    exec(code, scope)  # the README's own lines, as a user would paste them
    row, audio, rate = scope["row"], scope["audio"], scope["rate"]
    excerpt, excerpt_rate = sf.read(run.audio_file(index.loc[row["excerpt_id"]]), dtype="float32", always_2d=True)
    assert rate == excerpt_rate and np.array_equal(audio, excerpt)
    assert row["excerpt_id"] in capsys.readouterr().out


def test_webdataset_and_remix_from_shards(run, index, tmp_path):
    import webdataset as wds  # in the test extras: a missing one fails
    result = build_exports(run, "webdataset", tmp_path, shard_size=5)
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(tars) == math.ceil(len(index) / 5) == len(result.files)
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(index.index)
    for sample in samples:
        row, record = index.loc[sample["__key__"]], json.loads(sample["json"])
        info = sf.info(io.BytesIO(sample["flac"]))
        assert info.frames == _samples(row) == record["num_samples"]
        assert record["duration"] == pytest.approx(info.frames / info.samplerate)
        _same_provenance(record, row)
    assert set(webdataset_members(tmp_path)) == set(index.index)

    for rate in (44100, 16000):  # the excerpts' own rate (no resampling for half of them) and another
        folder = RemixSampler(run, rate, 2, 3000)
        shards = RemixSampler(None, rate, 2, 3000, webdataset=tmp_path)
        assert shards.counts() == folder.counts()
        for seed in range(3):
            a_source, a = folder.draw(4, np.random.default_rng(seed))
            b_source, b = shards.draw(4, np.random.default_rng(seed))
            assert a_source == b_source and a.shape == (4, 2, 3000)
            assert np.array_equal(a, b) and np.abs(a).max() > 0
    with pytest.raises(ValueError, match="not both"):
        RemixSampler(run, 44100, 2, 3000, webdataset=tmp_path)


def test_nemo(run, index, tmp_path):
    build_exports(run, "nemo", tmp_path / "excerpt")
    build_exports(run, "nemo", tmp_path / "catalog", nemo_reference="catalog")
    lines = [json.loads(t) for t in (tmp_path / "excerpt" / "manifest.jsonl").read_text().splitlines()]
    into_catalog = [json.loads(t) for t in (tmp_path / "catalog" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == len(into_catalog) == len(index)
    for line, other in zip(lines, into_catalog):
        row = index.loc[line["excerpt_id"]]
        info = sf.info(line["audio_filepath"])
        assert line["duration"] == pytest.approx(info.frames / info.samplerate) and "offset" not in line
        assert other["audio_filepath"] == row["catalog_path"] and other["offset"] == pytest.approx(row["start_s"])
        # the catalog span holds the excerpt's samples
        span, _ = sf.read(other["audio_filepath"], start=int(row["start_sample"]), frames=_samples(row),
                          dtype="float32", always_2d=True)
        excerpt, _ = sf.read(line["audio_filepath"], dtype="float32", always_2d=True)
        assert np.array_equal(span, excerpt)
        _same_provenance(line, row)


def test_csv(run, index, tmp_path):
    build_exports(run, "csv", tmp_path)
    table = pd.read_csv(tmp_path / "excerpts.csv")
    assert len(table) == len(index) and set(run.index().columns) <= set(table.columns)
    for item in table.to_dict("records"):
        row = index.loc[item["excerpt_id"]]
        assert item["audio_file"].startswith("/") and sf.info(item["audio_file"]).frames == _samples(row)
        _same_provenance(item, row)


def test_bad_requests(run, tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        build_exports(run, "zip", tmp_path)
    with pytest.raises(ValueError, match="shard_size"):
        build_exports(run, "webdataset", tmp_path, shard_size=0)
    with pytest.raises(FileNotFoundError, match="not a D_i folder"):
        build_exports(tmp_path / "nothing", "csv", tmp_path / "out")
    empty = tmp_path / "empty"
    (empty / "index").mkdir(parents=True)
    with pytest.raises(ValueError, match="no excerpts"):
        build_exports(empty, "hf", tmp_path / "hf")
    assert build_exports(empty, "csv", tmp_path / "csv").counts["excerpts"] == 0


def test_export_stage_keys_only_its_own_options():
    from pipeline.exports.hf import HF_LAYOUT
    from tasks.export import Export

    assert Export(format="csv", shard_size=5).key_params() == Export(format="csv", shard_size=7).key_params() \
        == Export(format="csv", pairs=3, seed=4).key_params() == {"format": "csv"}
    assert Export(format="webdataset", shard_size=5).key_params() == {"format": "webdataset", "shard_size": 5}
    assert Export(format="nemo", nemo_reference="catalog").key_params() == {"format": "nemo",
                                                                          "nemo_reference": "catalog"}
    assert Export(format="hf", shard_size=5).key_params() == {"format": "hf", "shard_size": 5, "hf_layout": HF_LAYOUT}
    musdb = Export(format="musdb", sample_rate=22050, seed=3, pairs=7).key_params()
    assert musdb == {"format": "musdb", "sample_rate": 22050, "channels": 2, "valid_fraction": 0.1, "seed": 3}
    pairs = Export(format="remix-pairs", pairs=7, seed=3, shard_size=9).key_params()
    assert pairs["pairs"] == 7 and pairs["seed"] == 3 and "shard_size" not in pairs
    assert set(pairs) == {"format", "pairs", "valid_pairs", "pair_seconds", "sample_rate", "channels",
                          "valid_fraction", "min_target_db", "seed"}
