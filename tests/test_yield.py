"""More silent material at the same purity: the separator's second opinion, the rules measured
against ground truth, and the yield-against-purity curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipeline.mining.extraction import (
    RunRule,
    SecondOpinion,
    excerpt_separator_db,
    extract_track,
    separator_volumes,
)
from pipeline.mining.ground_truth import (
    RULE_COLUMNS,
    file_durations,
    measure_rules,
    rule_table,
    separator_table,
    simulated_index,
    yield_curve,
)
from pipeline.mining.schema import INDEX_SCHEMA, read_index
from pipeline.separation.contract import ModelConfig, Separator
from pipeline.separation.evaluation import SeparatorScorer
from pipeline.sources import HOP_S, SOURCES, WINDOW_S, n_windows

RATE = 8000


def _stems(seconds: float, gains: dict[str, float], seed: int = 0) -> np.ndarray:
    """(4, 2, n) stems that are all one noise signal times a per-source gain."""
    noise = np.random.default_rng(seed).standard_normal((2, int(seconds * RATE))).astype(np.float32) * 0.1
    return np.stack([noise * gains.get(s, 0.0) for s in SOURCES])


def test_separator_volumes_of_known_stems():
    stems = _stems(3.0, {"drums": 1.0, "bass": 0.1})  # mixture = 1.1 x drums
    volumes = separator_volumes(stems, stems.sum(axis=0), RATE)
    assert volumes.shape == (4, n_windows(stems.shape[-1], RATE))
    np.testing.assert_allclose(volumes[0], 10 * np.log10(1 / 1.21), atol=1e-4)
    np.testing.assert_allclose(volumes[1], 10 * np.log10(0.01 / 1.21), atol=1e-4)
    assert np.isneginf(volumes[2]).all() and np.isneginf(volumes[3]).all()  # estimates of zero energy
    silent = np.zeros_like(stems)
    assert np.isneginf(separator_volumes(silent, silent.sum(axis=0), RATE)).all()  # silent mixture: -inf, no NaN
    with pytest.raises(ValueError, match="estimates"):
        separator_volumes(stems[:3], stems.sum(axis=0), RATE)
    assert excerpt_separator_db(np.array([-10.0, -30.0, -np.inf])) == (-20.0, -10.0)
    assert excerpt_separator_db(np.array([-np.inf])) == (-np.inf, -np.inf)


@dataclass(frozen=True)
class _GainConfig(ModelConfig):
    sample_rate: int = 16000
    audio_channels: int = 2


class GainSeparator(Separator):
    """A separator whose answer is known: source i = gains[i] x the mixture (a fixed 1x1 conv)."""

    name = "gain"
    config_class = _GainConfig

    def __init__(self, gains: list[float]):
        super().__init__()
        self.config = _GainConfig()
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32))

    def valid_length(self, length: int) -> int:
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.gains[None, :, None, None] * mix[:, None]


def test_separator_scorer_resamples_and_matches_channels():
    # A mono 8 kHz excerpt goes to a stereo 16 kHz separator; its estimates are known fractions.
    scorer = SeparatorScorer(GainSeparator([0.9, 0.1, 0.0, 0.5]))
    audio = _stems(4.0, {"drums": 1.0})[0, :1]
    volumes = scorer(audio, RATE)
    assert volumes.shape == (4, n_windows(4 * 16000, 16000))
    np.testing.assert_allclose(volumes[0], 20 * np.log10(0.9), atol=1e-3)
    np.testing.assert_allclose(volumes[1], -20.0, atol=1e-3)
    assert np.isneginf(volumes[2]).all()
    np.testing.assert_allclose(volumes[3], 20 * np.log10(0.5), atol=1e-3)


def test_second_opinion_keeps_or_drops_excerpts(tmp_path):
    signal = np.random.default_rng(1).integers(-3000, 3000, size=(int(7 * RATE), 2)).astype(np.int16)
    path = tmp_path / "track.wav"
    sf.write(path, signal, RATE, subtype="PCM_16")
    probs = np.full((n_windows(signal.shape[0], RATE), 4), 0.9, np.float32)
    thresholds = {"drums": 0.5, "bass": 0.5}
    separator = GainSeparator([0.01, 0.3, 0.0, 0.0])  # drums estimated at -40 dB, bass at -10.5 dB
    judged = SecondOpinion(SeparatorScorer(separator), max_db=-20.0)
    rows = extract_track(path, "ef01", None, probs, thresholds, RunRule(), tmp_path / "a", "d", "c",
                         second_opinion=judged)
    assert [r["source"] for r in rows] == ["drums"]
    assert rows[0]["separator_db_mean"] == pytest.approx(-40.0, abs=1e-3)
    assert rows[0]["separator_db_max"] == pytest.approx(-40.0, abs=1e-3)
    assert (judged.scored, judged.dropped) == (2, 1)
    assert not list((tmp_path / "a").rglob(".*"))  # the dropped excerpt's temporary is gone
    assert len(list((tmp_path / "a").rglob("*.flac"))) == 1
    scored = SecondOpinion(SeparatorScorer(separator))  # no limit: scored and kept
    rows = extract_track(path, "ef01", None, probs, thresholds, RunRule(), tmp_path / "b", "d", "c",
                         second_opinion=scored)
    by_source = {r["source"]: r for r in rows}
    assert by_source["bass"]["separator_db_mean"] == pytest.approx(20 * np.log10(0.3), abs=1e-3)
    assert (scored.scored, scored.dropped) == (2, 0)


def test_index_parts_without_separator_columns_read_as_nan(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_schema = pa.schema([f for f in INDEX_SCHEMA if not f.name.startswith("separator_")])
    row = {f.name: (0 if pa.types.is_integer(f.type) else 0.0 if pa.types.is_floating(f.type) else "x")
           for f in old_schema}
    row["source"] = "bass"
    (tmp_path / "index" / "source=bass").mkdir(parents=True)
    part = tmp_path / "index" / "source=bass" / "part-a.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), part)
    index = read_index(tmp_path / "index")
    assert list(index.columns) == INDEX_SCHEMA.names
    assert np.isnan(index["separator_db_mean"]).all() and np.isnan(index["separator_db_max"]).all()


# --------------------------------------------------------------------------- rules against ground truth


@pytest.fixture
def catalog(tmp_path, truth_table):
    """One 200-frame file: bass truly silent on frames 20..119, detector sure on 30..119 and
    half-sure (0.6) on 120..179 where the bass plays."""
    root = tmp_path / "catalog"
    n = 200
    bass = np.zeros(n)
    bass[20:120] = -40.0
    truth = truth_table("song.wav", {"bass": bass}, n)
    p_bass = np.zeros(n, np.float32)
    p_bass[30:120] = 0.95
    p_bass[120:180] = 0.6
    probabilities = pd.DataFrame({"track_id": "t1", "frame": np.arange(n), "start_s": np.arange(n) * HOP_S,
                                  **{f"p_{s}": (p_bass if s == "bass" else np.zeros(n, np.float32)) for s in SOURCES}})
    tracks = pd.DataFrame({"track_id": ["t1", "t2"], "path": [str(root / "song.wav"), str(tmp_path / "x.wav")]})
    return root, truth, probabilities, tracks


def test_simulated_index_cuts_what_extraction_would(catalog):
    root, truth, probabilities, tracks = catalog
    durations = file_durations(truth)
    assert durations == {"song.wav": pytest.approx(199 * HOP_S + WINDOW_S)}
    index = simulated_index(probabilities, tracks, {"bass": 0.9, "drums": None}, durations, root)
    assert index[["start_s", "end_s"]].to_numpy().tolist() == [[pytest.approx(30 * HOP_S),
                                                                  pytest.approx(119 * HOP_S + WINDOW_S)]]
    assert simulated_index(probabilities, tracks, {"bass": 0.99}, durations, root).empty


def test_rule_table_and_yield_curve_trade_purity_for_yield(catalog):
    root, truth, probabilities, tracks = catalog
    rules = {"windows": {"bass": 0.9, "drums": None, "other": None, "vocals": None},
             "excerpts": {"bass": 0.5, "drums": None, "other": None, "vocals": None}}
    table = rule_table(probabilities, tracks, rules, truth, root)
    assert list(table.columns) == list(RULE_COLUMNS)
    strict = table[(table["rule"] == "windows") & (table["source"] == "bass")].iloc[0]
    loose = table[(table["rule"] == "excerpts") & (table["source"] == "bass")].iloc[0]
    assert strict["fraction_silent"] == 1.0 and strict["recall"] == 1.0  # 90 of the 100 silent frames
    assert strict["extracted_hours"] * 3600 == pytest.approx(89 * HOP_S + WINDOW_S)
    assert loose["fraction_silent"] == pytest.approx(90 / 150)  # frames 30..179 inside, 60 loud
    assert loose["extracted_hours"] > strict["extracted_hours"]
    assert np.isnan(table[(table["rule"] == "windows") & (table["source"] == "drums")].iloc[0]["threshold"])
    curve = yield_curve(probabilities, tracks, truth, root, thresholds=(0.5, 0.9, 0.99))
    bass = curve[curve["source"] == "bass"].set_index("threshold")
    assert bass.loc[0.5, "extracted_hours"] > bass.loc[0.9, "extracted_hours"] > bass.loc[0.99, "extracted_hours"] == 0
    assert bass.loc[0.9, "fraction_silent"] > bass.loc[0.5, "fraction_silent"]


def test_separator_table_filters_the_extracted_index(catalog, tmp_path):
    root, truth, probabilities, tracks = catalog
    index = simulated_index(probabilities, tracks, {"bass": 0.5}, file_durations(truth), root)
    assert separator_table(index.assign(separator_db_mean=np.nan), truth, root).empty
    index = pd.concat([index] * 2, ignore_index=True)  # the same span twice, scored apart
    index["separator_db_mean"] = [-35.0, -12.0]
    table = separator_table(index, truth, root, limits=(-20.0,)).set_index(["rule", "source"])
    assert table.loc[("scored, all kept", "bass"), "n_excerpts"] == 2
    assert table.loc[("separator <= -20 dB", "bass"), "n_excerpts"] == 1
    measured = measure_rules(probabilities, tracks, {"windows": {"bass": 0.9}}, truth, root, tmp_path / "out",
                             index=index)
    for name in ("rules.parquet", "rules.csv", "yield_curve.parquet", "yield_curve.csv", "yield_curve.png"):
        assert (tmp_path / "out" / name).is_file()
    assert any(line.startswith("bass [windows]: p = 0.900") for line in measured.summary)
