"""Extraction of D_i excerpts: run finding, the 5 s rule, exact audio, the index, rejects, truth."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.audio.io import file_checksum
from pipeline.mining.extraction import (
    PART_SCHEMA,
    ExtractionError,
    RunRule,
    extract_shard,
    extract_track,
    find_runs,
    min_frames_for,
    run_spans,
)
from pipeline.mining.ground_truth import covered_seconds, measure_extraction, merge_intervals
from pipeline.mining.schema import INDEX_SCHEMA, PROBABILITY_SCHEMA, read_index
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.sources import FEATURE_RATE, HOP_S, SOURCES, WINDOW_S, n_windows

THRESHOLDS = {"drums": 0.5, "bass": 0.5, "other": None, "vocals": 0.7}


# --------------------------------------------------------------------------- runs and the 5 s rule


def _brute_runs(mask: np.ndarray, min_frames: int) -> list[list[int]]:
    runs, start = [], None
    for k, value in enumerate(list(mask) + [False]):
        if value and start is None:
            start = k
        elif not value and start is not None:
            if k - start >= min_frames:
                runs.append([start, k])
            start = None
    return runs


def test_find_runs_matches_a_loop():
    assert find_runs(np.array([0, 1, 1, 0, 1, 1, 1], bool), 2).tolist() == [[1, 3], [4, 7]]
    assert find_runs(np.array([1, 1, 0, 1], bool), 1).tolist() == [[0, 2], [3, 4]]
    assert find_runs(np.zeros(0, bool), 1).shape == (0, 2)
    assert find_runs(np.ones(5, bool), 6).shape == (0, 2)
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.uniform(size=int(rng.integers(0, 300))) < rng.uniform(0.2, 0.95)
        min_frames = int(rng.integers(1, 10))
        assert find_runs(mask, min_frames).tolist() == _brute_runs(mask, min_frames)
    with pytest.raises(ValueError):
        find_runs(np.ones((2, 2), bool), 1)


def test_five_second_rule_boundary():
    # m frames span (m - 1) * 0.064 + 0.64 s: 69 frames = 4.992 s, 70 frames = 5.056 s.
    assert min_frames_for(5.0) == 70
    assert run_spans(np.array([[0, 69]]), 100.0)[0, 1] == pytest.approx(4.992)
    long_track = 100.0
    just_under = np.zeros(200, bool)
    just_under[10:79] = True  # 69 frames
    assert RunRule(5.0).select(just_under, long_track)[0].shape == (0, 2)
    just_over = np.zeros(200, bool)
    just_over[10:80] = True  # 70 frames
    runs, spans = RunRule(5.0).select(just_over, long_track)
    assert runs.tolist() == [[10, 80]]
    np.testing.assert_allclose(spans, [[0.64, 0.64 + 5.056]])
    # Exactly the minimum: 69 frames against a 4.992 s minimum (float rounding absorbed).
    assert min_frames_for(4.992) == 69
    assert RunRule(4.992).select(just_under, long_track)[0].tolist() == [[10, 79]]


def test_run_touching_the_track_end_is_clipped():
    mask = np.zeros(100, bool)
    mask[30:] = True  # 70 frames, the last window would end at 29 * 0.064 + 0.064 * 69 + 0.64
    unclipped_end = 99 * HOP_S + WINDOW_S
    start = 30 * HOP_S
    # Track ends exactly 5 s after the run's start: the clipped span is exactly 5 s -> kept.
    runs, spans = RunRule(5.0).select(mask, start + 5.0)
    assert runs.tolist() == [[30, 100]]
    assert spans[0, 1] == pytest.approx(start + 5.0) and spans[0, 1] < unclipped_end
    # Track ends 10 ms earlier: 70 frames, but the clipped span is 4.99 s -> dropped.
    assert RunRule(5.0).select(mask, start + 4.99)[0].shape == (0, 2)


# --------------------------------------------------------------------------- catalog fixtures


def _frames(duration_s: float) -> int:
    return n_windows(int(round(duration_s * FEATURE_RATE)), FEATURE_RATE)


def _probabilities(track_id: str, probs: np.ndarray) -> pd.DataFrame:
    n = probs.shape[0]
    table = {"track_id": [track_id] * n, "frame": np.arange(n, dtype=np.int32), "start_s": np.arange(n) * HOP_S}
    table.update({f"p_{s}": probs[:, i].astype(np.float32) for i, s in enumerate(SOURCES)})
    return pa.Table.from_pydict(table, schema=PROBABILITY_SCHEMA).to_pandas()


def _pattern(n_frames: int) -> np.ndarray:
    """drums silent on frames 5..84 (80 frames), bass on 10..70 (61 frames, < 5 s), vocals from 40 to the end."""
    probs = np.full((n_frames, 4), 0.1, np.float32)
    probs[5:85, 0] = np.linspace(0.6, 0.9, 80)
    probs[10:71, 1] = 0.95
    probs[:, 2] = 0.99  # "other" has no threshold: never extracted
    probs[40:, 3] = 0.8
    probs[50, 3] = 0.75
    return probs


@pytest.fixture()
def catalog(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "catalog"
    (root / "sub").mkdir(parents=True)
    tracks = []

    def add(name, data, rate, subtype):
        path = root / name
        sf.write(path, data, rate, subtype=subtype)
        duration = data.shape[0] / rate
        tracks.append({"track_id": f"t{len(tracks)}{name[:3]}", "path": str(path), "checksum": file_checksum(path),
                       "n_frames": _frames(duration)})

    add("pcm16_44k.wav", rng.integers(-32768, 32768, size=(8 * 44100, 2)).astype(np.int16), 44100, "PCM_16")
    add("sub/float_48k.wav", rng.uniform(-1.0, 1.0, size=(8 * 48000, 1)).astype(np.float32), 48000, "FLOAT")
    add("pcm24_22k.wav", rng.uniform(-0.9, 0.9, size=(int(8.5 * 22050), 2)), 22050, "PCM_24")
    add("short.wav", rng.uniform(-0.5, 0.5, size=(3 * 44100, 2)), 44100, "PCM_16")
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + rng.bytes(4000))
    tracks.append({"track_id": "t4cor", "path": str(corrupt), "checksum": file_checksum(corrupt), "n_frames": 120})
    tracks.append({**tracks[0], "track_id": "t5nop"})  # no probabilities
    tracks.append({**tracks[1], "track_id": "t6nan"})  # NaN probabilities
    tracks.append({**tracks[2], "track_id": "t7chg", "checksum": "0" * 64})  # changed since the scan
    frames = []
    for track in tracks:
        if track["track_id"] == "t5nop":
            continue
        probs = _pattern(track["n_frames"]) if track["n_frames"] >= 85 else np.full((track["n_frames"], 4), 0.99)
        if track["track_id"] == "t6nan":
            probs[3, 1] = np.nan
        frames.append(_probabilities(track["track_id"], probs))
    table = pd.DataFrame(tracks)
    return root, table[["track_id", "path", "checksum"]], pd.concat(frames, ignore_index=True), table


def _assert_index_types(frame: pd.DataFrame) -> None:
    """Columns in INDEX_SCHEMA order, numbers with its exact widths, text as strings."""
    assert list(frame.columns) == [f.name for f in INDEX_SCHEMA]
    for field in INDEX_SCHEMA:
        if pa.types.is_string(field.type):
            assert pd.api.types.is_string_dtype(frame[field.name]), field.name
        else:
            assert frame[field.name].dtype == np.dtype(field.type.to_pandas_dtype()), field.name


def _run(catalog, run_dir, shard="s0001"):
    _, tracks, probabilities, _ = catalog
    return extract_shard(tracks, probabilities, THRESHOLDS, RunRule(), run_dir, shard, "det123", "cal456")


# --------------------------------------------------------------------------- extraction


def test_excerpts_hold_the_original_samples(catalog, tmp_path):
    run_dir = tmp_path / "run"
    result = _run(catalog, run_dir)
    index = result.index
    good = {"t0pcm", "t1sub", "t2pcm"}
    assert set(index["track_id"]) == good
    # drums (80 frames) and vocals (from frame 40 to the end) per good track; bass's 61 frames are too short.
    assert sorted(index.groupby("track_id")["source"].apply(sorted).tolist()) == [["drums", "vocals"]] * 3

    for row in index.itertuples(index=False):
        original_path = row.catalog_path
        info = sf.info(original_path)
        assert (row.sample_rate, row.channels) == (info.samplerate, info.channels)
        if row.source == "drums":
            assert (row.start_s, row.n_frames) == (pytest.approx(5 * HOP_S), 80)
            assert row.end_s == pytest.approx(84 * HOP_S + WINDOW_S)
            expected_probs = np.linspace(0.6, 0.9, 80).astype(np.float32).astype(np.float64)
            assert row.prob_mean == pytest.approx(expected_probs.mean())
            assert row.prob_min == pytest.approx(expected_probs.min())
            assert row.threshold == 0.5
        else:  # vocals run to the last frame, whose window ends at the track's end (within a frame)
            assert row.start_s == pytest.approx(40 * HOP_S)
            assert row.prob_min == pytest.approx(0.75) and row.threshold == 0.7
            assert info.frames - row.end_sample < HOP_S * info.samplerate
        assert row.start_sample == round(row.start_s * row.sample_rate)
        assert row.end_sample == min(round(row.end_s * row.sample_rate), info.frames)
        assert row.duration_s == pytest.approx(row.end_s - row.start_s)
        assert row.excerpt_id == f"{row.track_id}-{row.source}-{row.start_sample}"
        assert row.audio_path == f"audio/{row.source}/{row.track_id[:2]}/{row.excerpt_id}.flac"
        assert row.detector_key == "det123" and row.calibration_key == "cal456"

        written = run_dir / row.audio_path
        excerpt_info = sf.info(written)
        assert excerpt_info.format == "FLAC"
        assert (excerpt_info.samplerate, excerpt_info.channels) == (row.sample_rate, row.channels)
        assert excerpt_info.frames == row.end_sample - row.start_sample
        assert row.audio_checksum == file_checksum(written)
        assert row.catalog_checksum == file_checksum(original_path)
        span = slice(row.start_sample, row.end_sample)
        if info.subtype == "PCM_16":
            assert row.audio_format == "FLAC/PCM_16"
            original = sf.read(original_path, dtype="int16")[0]
            np.testing.assert_array_equal(sf.read(written, dtype="int16")[0], original[span])
        elif info.subtype == "PCM_24":
            assert row.audio_format == "FLAC/PCM_24"
            original = sf.read(original_path, dtype="int32")[0]
            np.testing.assert_array_equal(sf.read(written, dtype="int32")[0], original[span])
        else:
            assert row.audio_format == "FLAC/PCM_24"
            diff = sf.read(written, dtype="float64")[0] - sf.read(original_path, dtype="float64")[0][span]
            assert np.abs(diff).max() <= 2.0**-23
    assert index["excerpt_id"].is_unique


def test_bad_tracks_are_rejected_with_reasons_and_the_shard_goes_on(catalog, tmp_path):
    run_dir = tmp_path / "run"
    result = _run(catalog, run_dir)
    reasons = dict(zip(result.rejects["track_id"], result.rejects["reason"]))
    assert set(reasons) == {"t3sho", "t4cor", "t5nop", "t6nan", "t7chg"}
    assert "shorter than the 5 s minimum" in reasons["t3sho"]
    assert "not an audio file" in reasons["t4cor"] or "decode" in reasons["t4cor"]
    assert "no detector probabilities" in reasons["t5nop"]
    assert "NaN" in reasons["t6nan"]
    assert "changed since it was scanned" in reasons["t7chg"]
    assert (result.rejects["stage"] == "extract").all()
    stored = pq.read_table(run_dir / "rejects" / "part-s0001.parquet")
    assert stored.schema.equals(REJECTS_SCHEMA, check_metadata=False)
    assert sorted(stored.column("track_id").to_pylist()) == sorted(reasons)
    assert len(result.index) == 6  # the good tracks were still extracted


def test_index_is_partitioned_typed_and_readable(catalog, tmp_path):
    run_dir = tmp_path / "run"
    result = _run(catalog, run_dir)
    index_dir = run_dir / "index"
    parts = sorted(p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*.parquet"))
    assert parts == ["source=drums/part-s0001.parquet", "source=vocals/part-s0001.parquet"]
    for part in parts:
        assert pq.read_schema(index_dir / part).equals(PART_SCHEMA, check_metadata=False)
    _assert_index_types(result.index)

    by_id = lambda frame: frame.sort_values("excerpt_id").reset_index(drop=True)  # noqa: E731
    via_pandas = read_index(index_dir)
    _assert_index_types(via_pandas)
    pd.testing.assert_frame_equal(by_id(via_pandas), by_id(result.index), check_dtype=False)
    assert len(read_index(index_dir, source="vocals")) == 3

    # the documented recipes: pandas and pyarrow on the folder, with its hive partition column
    flat = pd.read_parquet(index_dir)
    pd.testing.assert_frame_equal(by_id(flat.assign(source=flat["source"].astype(str))), by_id(result.index),
                                  check_dtype=False)
    assert len(pd.read_parquet(index_dir, filters=[("source", "=", "vocals")])) == 3
    assert sorted(pq.read_table(index_dir).column("source").to_pylist()) == ["drums"] * 3 + ["vocals"] * 3
    for partitioning in (None, ds.HivePartitioning.discover(infer_dictionary=True)):
        dataset = ds.dataset(index_dir, format="parquet", partitioning=partitioning)
        assert sorted(dataset.to_table().column("source").to_pylist()) == ["drums"] * 3 + ["vocals"] * 3

    glob = (index_dir / "*" / "*.parquet").as_posix()
    rows = duckdb.sql(f"select source, count(*) as n, sum(end_sample - start_sample) as samples "
                      f"from read_parquet('{glob}', hive_partitioning=true) group by source order by source").fetchall()
    expected = result.index.assign(samples=result.index["end_sample"] - result.index["start_sample"])
    assert rows == [(s, 3, int(expected.loc[expected["source"] == s, "samples"].sum())) for s in ("drums", "vocals")]


def test_read_index_reads_parts_of_every_format(catalog, tmp_path):
    """Parts of today's format, parts of the first one (a string ``source``, no separator
    columns) and parts without the ``source`` column (the hive folder's only) read alike."""
    run_dir = tmp_path / "run"
    result = _run(catalog, run_dir)
    index_dir = run_dir / "index"
    today = read_index(index_dir)
    drums = today[today["source"] == "drums"]
    old = pa.schema([f for f in INDEX_SCHEMA if not f.name.startswith("separator_")])
    pq.write_table(pa.Table.from_pandas(drums.assign(excerpt_id=drums["excerpt_id"] + "-old"), schema=old,
                                        preserve_index=False), index_dir / "source=drums" / "part-old.parquet")
    bare = pa.schema([f for f in INDEX_SCHEMA if f.name != "source"])
    pq.write_table(pa.Table.from_pandas(drums.assign(excerpt_id=drums["excerpt_id"] + "-bare").drop(columns="source"),
                                        schema=bare, preserve_index=False),
                   index_dir / "source=drums" / "part-bare.parquet")
    frame = read_index(index_dir)
    assert list(frame.columns) == INDEX_SCHEMA.names and len(frame) == len(result.index) + 2 * len(drums)
    again = frame[frame["excerpt_id"].str.endswith(("-old", "-bare"))]
    assert (again["source"] == "drums").all() and again["separator_db_mean"].isna().all()
    assert len(read_index(index_dir, source="drums")) == 3 * len(drums)


def test_rerunning_a_shard_rewrites_identical_bytes(catalog, tmp_path):
    run_dir = tmp_path / "run"
    first = _run(catalog, run_dir)
    snapshot = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    second = _run(catalog, run_dir)
    again = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert again == snapshot
    pd.testing.assert_frame_equal(first.index, second.index)
    assert not any(p.name.startswith(".") for p in run_dir.rglob("*"))  # no temporaries left


def test_a_shard_without_excerpts_removes_its_stale_parts(catalog, tmp_path):
    run_dir = tmp_path / "run"
    _run(catalog, run_dir)
    _, tracks, probabilities, _ = catalog
    result = extract_shard(tracks, probabilities, {s: None for s in SOURCES}, RunRule(), run_dir, "s0001", "d", "c")
    assert result.index.empty and list(result.index.columns) == [f.name for f in INDEX_SCHEMA]
    assert not list((run_dir / "index").rglob("*.parquet"))
    assert read_index(run_dir / "index").empty


def test_extract_track_run_to_the_end_of_the_file(tmp_path):
    rate = 22050
    signal = np.random.default_rng(3).integers(-32768, 32768, size=(int(6.1 * rate), 1)).astype(np.int16)
    path = tmp_path / "mono.wav"
    sf.write(path, signal, rate, subtype="PCM_16")
    # One frame more than the grid holds: the last window would reach past the end and is clipped.
    n_frames = _frames(6.1) + 1
    probs = np.zeros((n_frames, 4), np.float32)
    probs[:, 1] = 0.9
    rows = extract_track(path, "ab01", None, probs, {"bass": 0.5}, RunRule(), tmp_path / "run", "d", "c")
    assert len(rows) == 1
    row = rows[0]
    assert (row["start_sample"], row["end_sample"]) == (0, signal.shape[0])
    assert row["end_s"] == pytest.approx(signal.shape[0] / rate)
    assert row["catalog_checksum"] == file_checksum(path)
    written, written_rate = sf.read(tmp_path / "run" / row["audio_path"], dtype="int16")
    assert written_rate == rate
    np.testing.assert_array_equal(written, signal[:, 0])
    # A track that is long enough but whose probabilities never stay high gives nothing.
    probs[::50, 1] = 0.0
    assert extract_track(path, "ab01", None, probs, {"bass": 0.5}, RunRule(), tmp_path / "run2", "d", "c") == []
    with pytest.raises(ExtractionError, match="NaN"):
        extract_track(path, "ab01", None, np.full((3, 4), np.inf), {"bass": 0.5}, RunRule(), tmp_path, "d", "c")


# --------------------------------------------------------------------------- ground truth


def _excerpt(path, source: str, start_s: float, end_s: float) -> dict:
    return {"source": source, "catalog_path": str(path), "start_s": start_s, "end_s": end_s,
            "duration_s": end_s - start_s}


def test_measure_extraction_on_hand_made_tables(tmp_path, truth_table):
    root = tmp_path / "catalog"
    bass_a = np.zeros(200)
    bass_a[20:120] = -40.0  # a true run of 100 windows: [1.28, 8.256) s
    vocals_a = np.full(200, -np.inf)  # silent mixture everywhere: a true run [0, 13.376) s
    bass_b = np.zeros(150)
    bass_b[:100] = -25.0  # silent at -20 dB but audible at -30 dB: no true run
    truth = pd.concat([truth_table("a/song.wav", {"bass": bass_a, "vocals": vocals_a}, 200),
                       truth_table("b.flac", {"bass": bass_b}, 150)], ignore_index=True)
    run_a = (20 * HOP_S, 119 * HOP_S + WINDOW_S)
    index = pd.DataFrame([
        _excerpt(root / "a" / "song.wav", "bass", *run_a),
        _excerpt(root / "b.flac", "bass", 90 * HOP_S, 129 * HOP_S + WINDOW_S),  # windows 90..129
        _excerpt(root / "a" / "song.wav", "vocals", 0.0, 13.376 / 2),  # exactly half of the true run
        _excerpt(tmp_path / "elsewhere.wav", "other", 0.0, 6.0),
    ])
    measured = measure_extraction(index, truth, root).set_index("source")

    bass = measured.loc["bass"]
    assert bass["n_excerpts"] == 2
    assert bass["extracted_seconds"] == pytest.approx(run_a[1] - run_a[0] + 39 * HOP_S + WINDOW_S)
    assert bass["n_windows_inside"] == 100 + 40
    assert bass["fraction_silent"] == pytest.approx(110 / 140)  # 100 at -40 dB, 10 at -25 dB, 30 at 0 dB
    assert bass["fraction_inaudible"] == pytest.approx(100 / 140)
    assert bass["v95_db"] == 0.0  # the 133rd smallest of 140
    assert (bass["n_true_runs"], bass["n_recovered"], bass["recall"]) == (1, 1, 1.0)

    vocals = measured.loc["vocals"]
    assert vocals["n_windows_inside"] == 95  # windows k with k * 0.064 + 0.64 <= 6.688
    assert vocals["v95_db"] == -np.inf and vocals["fraction_silent"] == 1.0
    assert (vocals["n_true_runs"], vocals["recall"]) == (1, 1.0)

    assert measured.loc["other", "n_excerpts_without_truth"] == 1
    assert measured.loc["other", "n_windows_inside"] == 0 and np.isnan(measured.loc["other", "fraction_silent"])
    drums = measured.loc["drums"]
    assert drums["n_excerpts"] == 0 and drums["n_true_runs"] == 0 and np.isnan(drums["recall"])

    # Less than half of the true vocals run: not recovered.
    short = index.copy()
    short.loc[2, "end_s"] = 6.6
    assert measure_extraction(short, truth, root).set_index("source").loc["vocals", "recall"] == 0.0
    # Two excerpts of 30 % each: together 60 % of the run, so it is recovered.
    split = pd.DataFrame([_excerpt(root / "a" / "song.wav", "vocals", 0.0, 0.3 * 13.376),
                          _excerpt(root / "a" / "song.wav", "vocals", 0.5 * 13.376, 0.8 * 13.376)])
    assert measure_extraction(split, truth, root).set_index("source").loc["vocals", "recall"] == 1.0


def test_interval_helpers():
    union = merge_intervals(np.array([[5.0, 6.0], [0.0, 2.0], [1.0, 3.0], [3.0, 4.0]]))
    np.testing.assert_allclose(union, [[0.0, 4.0], [5.0, 6.0]])
    np.testing.assert_allclose(covered_seconds(np.array([[1.0, 5.5], [6.0, 7.0]]), union), [3.5, 0.0])


# --------------------------------------------------------------------------- short dips (max_gap)


def test_a_dip_of_max_gap_frames_stays_inside_one_frame_more_splits():
    for max_gap in (1, 2, 5):
        for dip in (max_gap, max_gap + 1):
            mask = np.ones(40, bool)
            mask[10:10 + dip] = False
            runs = find_runs(mask, 1, max_gap).tolist()
            assert runs == ([[0, 40]] if dip <= max_gap else [[0, 10], [10 + dip, 40]]), (max_gap, dip)
    # Dips at the edges are not part of a run; several short dips chain; max_gap 0 is the paper's rule.
    mask = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0], bool)
    assert find_runs(mask, 1, 2).tolist() == [[2, 10]]
    assert find_runs(mask, 1, 1).tolist() == [[2, 6], [8, 10]]
    assert find_runs(mask, 1, 0).tolist() == _brute_runs(mask, 1)
    with pytest.raises(ValueError, match="max_gap"):
        find_runs(mask, 1, -1)


def test_bridged_dips_count_towards_the_five_seconds():
    frames = min_frames_for(5.0)  # 70 frames
    mask = np.ones(frames, bool)
    mask[30:33] = False  # 67 frames above the threshold, 3 below
    long_track = 100.0
    assert RunRule(5.0).select(mask, long_track)[0].shape == (0, 2)
    runs, spans = RunRule(5.0, max_gap=3).select(mask, long_track)
    assert runs.tolist() == [[0, frames]]
    assert spans[0, 1] - spans[0, 0] >= 5.0
    assert RunRule(5.0, max_gap=2).select(mask, long_track)[0].shape == (0, 2)


def test_extract_track_bridges_a_dip_into_one_excerpt(tmp_path):
    rate = 16000
    signal = np.random.default_rng(5).integers(-2000, 2000, size=(int(8 * rate), 1)).astype(np.int16)
    path = tmp_path / "dip.wav"
    sf.write(path, signal, rate, subtype="PCM_16")
    probs = np.zeros((_frames(8.0), 4), np.float32)
    probs[:, 0] = 0.9
    probs[50:54, 0] = 0.1  # a dip of 4 frames
    split = extract_track(path, "cd01", None, probs, {"drums": 0.5}, RunRule(3.0, 3), tmp_path / "a", "d", "c")
    joined = extract_track(path, "cd01", None, probs, {"drums": 0.5}, RunRule(3.0, 4), tmp_path / "b", "d", "c")
    assert [r["n_frames"] for r in split] == [50, probs.shape[0] - 54]
    assert len(joined) == 1 and joined[0]["n_frames"] == probs.shape[0]
    assert joined[0]["prob_min"] == pytest.approx(0.1)  # the dip is part of the excerpt
    written, _ = sf.read(tmp_path / "b" / joined[0]["audio_path"], dtype="int16")
    np.testing.assert_array_equal(written, signal[:joined[0]["end_sample"], 0])
    assert np.isnan(joined[0]["separator_db_mean"])


def test_the_excerpt_record_is_the_one_definition_of_the_index_columns():
    import dataclasses

    from pipeline.mining.schema import Excerpt

    assert [f.name for f in dataclasses.fields(Excerpt)] == INDEX_SCHEMA.names
    kinds = {"int": 1, "float": 0.5, "str": "x"}
    values = {f.name: kinds[f.type] for f in dataclasses.fields(Excerpt)}
    excerpt = Excerpt(**values)
    assert list(excerpt.row()) == INDEX_SCHEMA.names and Excerpt.from_row(excerpt.row()) == excerpt
    assert pa.Table.from_pylist([excerpt.row()], schema=INDEX_SCHEMA).num_rows == 1
    with pytest.raises(TypeError):  # a writer that forgets a column fails where it builds the row
        Excerpt(**{k: v for k, v in values.items() if k != "audio_checksum"})
