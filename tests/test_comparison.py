"""Paired comparison of runs (bootstrap interval, Wilcoxon, pairing by track, seeds) and the
training budget that makes runs comparable (equal updates and examples)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_remix import RATE, noise, write_excerpt_index, write_stem_set

from pipeline.separation.comparison import (
    _weighted_statistic,
    bootstrap_interval,
    box_plot,
    contrast_lines,
    default_contrasts,
    paired_comparison,
    run_statistics,
    track_values,
    wilcoxon_p,
)
from pipeline.separation.config import TrainConfig
from pipeline.separation.training import train_separator
from pipeline.sources import SOURCES


def _table(values: dict[str, dict[str, list[float]]], seed: int | None = None) -> pd.DataFrame:
    """A per-track table: ``{run: {track: [drums, bass, other, vocals]}}``."""
    return pd.DataFrame([{"run": run, "seed": seed, "track": track, "source": source, "sdr": float(v)}
                         for run, tracks in values.items() for track, row in tracks.items()
                         for source, v in zip(SOURCES, row)])


# ------------------------------------------------------------------ bootstrap
def test_weighted_statistic_is_the_median_and_mean_of_the_repeated_values():
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = rng.normal(size=int(rng.integers(1, 9)))
        weights = rng.integers(0, 4, size=(5, values.size))
        weights[:, 0] += 1  # at least one value per row
        expanded = [np.repeat(values, w) for w in weights]
        np.testing.assert_allclose(_weighted_statistic(values, weights, "median"), [np.median(e) for e in expanded])
        np.testing.assert_allclose(_weighted_statistic(values, weights, "mean"), [np.mean(e) for e in expanded])


def test_bootstrap_of_constant_differences_is_that_constant():
    assert bootstrap_interval([0.7] * 12) == pytest.approx((0.7, 0.7))
    assert all(math.isnan(v) for v in bootstrap_interval([math.nan, math.nan]))


def test_bootstrap_agrees_with_scipys_percentile_bootstrap():
    values = np.random.default_rng(1).normal(1.0, 1.0, size=40)
    low, high = bootstrap_interval(values, resamples=20_000, seed=2)
    ref = stats.bootstrap((values,), np.median, n_resamples=20_000, method="percentile",
                          random_state=np.random.default_rng(3)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.08) and high == pytest.approx(ref.high, abs=0.08)
    assert low < np.median(values) < high
    mean_low, mean_high = bootstrap_interval(values, statistic="mean", resamples=20_000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)  # the normal interval of the mean
    assert mean_low == pytest.approx(values.mean() - half, abs=0.06)
    assert mean_high == pytest.approx(values.mean() + half, abs=0.06)


def test_bootstrap_resamples_whole_tracks():
    per_track = np.array([0.2, 1.5, -0.3, 0.9, 2.1, 0.4, 1.1, -0.8])
    # Every source of a track has the track's value: resampling tracks is the per-track bootstrap.
    values, tracks = np.repeat(per_track, 4), np.repeat(np.arange(8), 4)
    assert bootstrap_interval(values, tracks, seed=5) == bootstrap_interval(per_track, seed=5)
    # Treating the 32 values as independent would claim a narrower interval.
    naive = bootstrap_interval(values, seed=5)
    clustered = bootstrap_interval(values, tracks, seed=5)
    assert naive[1] - naive[0] < clustered[1] - clustered[0]
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_interval(values, tracks[:-1])


# ------------------------------------------------------------------ Wilcoxon
def _exact_two_sided_p(differences: list[float]) -> float:
    """Brute force over every sign assignment: P(|W+ - E| >= |w+ - E|), ranks of |d| (no ties)."""
    ranks = stats.rankdata(np.abs(differences))
    observed = ranks[np.asarray(differences) > 0].sum()
    centre = ranks.sum() / 2
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(ranks))]
    return float(np.mean([abs(w - centre) >= abs(observed - centre) - 1e-9 for w in sums]))


def test_wilcoxon_on_hand_made_differences():
    # Of the 2^8 sign patterns only all-plus and all-minus are as extreme.
    assert wilcoxon_p([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(2 / 256)
    mixed = [1.0, -2.0, 3.0, -4.0, 5.0, 6.5, -7.0, 8.0, 9.5]
    assert wilcoxon_p(mixed) == pytest.approx(_exact_two_sided_p(mixed))
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p([math.nan]))
    assert wilcoxon_p([0.0, 1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)  # zeros dropped ("wilcox")


# ------------------------------------------------------------------ pairing
def test_pairs_are_made_by_track_not_by_position():
    base = {f"t{k}": [k, 2 * k, 3 * k, -k] for k in range(6)}
    delta = {f"t{k}": 0.5 + 0.1 * k for k in range(6)}
    better = {t: [v + delta[t] for v in row] for t, row in reversed(list(base.items()))}  # other order
    better["t0"][1] = math.nan  # a silent reference in one run only: that pair drops out
    del base["t5"]  # scored for one run only: no pair
    table = _table({"plain": base, "remix": better})
    result = paired_comparison(table, "remix", "plain")
    assert result.loc["drums", "pairs"] == 5 and result.loc["bass", "pairs"] == 4
    assert result.loc["drums", "median_diff"] == pytest.approx(np.median([delta[f"t{k}"] for k in range(5)]))
    assert result.loc["bass", "median_diff"] == pytest.approx(np.median([delta[f"t{k}"] for k in range(1, 5)]))
    assert result.loc["all", "pairs"] == 4 * 5 - 1 and result.loc["all", "tracks"] == 5
    assert result.loc["all", "ci_low"] > 0 and result.loc["all", "wilcoxon_p"] < 0.001
    assert result.loc["drums", "median_run"] == pytest.approx(np.median([k + delta[f"t{k}"] for k in range(5)]))
    assert result.loc["drums", "median_baseline"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no run"):
        paired_comparison(table, "remix", "missing")


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(7)
    base = {f"t{k:02d}": list(rng.normal(size=4)) for k in range(20)}
    # Per source, differences +d and -d of the same sizes, in a random order: symmetric about 0.
    sizes = rng.uniform(0.1, 1.0, size=(10, 4))
    differences = np.concatenate([sizes, -sizes])[rng.permutation(20)]
    other = {t: [v + d for v, d in zip(row, differences[k])] for k, (t, row) in enumerate(base.items())}
    result = paired_comparison(_table({"a": base, "b": other}), "b", "a")
    assert (result["ci_low"] < 0).all() and (result["ci_high"] > 0).all()
    np.testing.assert_allclose(result["median_diff"], 0.0, atol=1e-12)
    assert (result["wilcoxon_p"] > 0.9).all()  # ties of |d|: scipy's normal approximation, not exactly 1


def test_seeds_are_averaged_per_track_and_their_spread_reported():
    seed0 = _table({"run": {"a": [1, 1, 1, 1], "b": [3, 3, 3, 3]}}, seed=0)
    seed1 = _table({"run": {"a": [2, 2, 2, 2], "b": [6, 6, 6, 6]}}, seed=1)
    table = pd.concat([seed0, seed1, _table({"ref": {"a": [0, 0, 0, 0], "b": [0, 0, 0, 0]}})])
    values = track_values(table)
    assert values.loc[("a", "drums"), "run"] == 1.5 and values.loc[("b", "vocals"), "run"] == 4.5
    statistics = run_statistics(table)
    assert statistics.loc["run", ("median", "all")] == pytest.approx(3.0)  # median of 1.5 and 4.5
    assert statistics.loc["run", ("mean", "drums")] == pytest.approx(3.0)
    # Per-seed medians of "all": 2 and 4 -> sd sqrt(2); one seed only -> NaN.
    assert statistics.loc["run", ("seed_sd", "all")] == pytest.approx(math.sqrt(2))
    assert math.isnan(statistics.loc["ref", ("seed_sd", "all")])


def test_contrasts_lines_and_box_plot(tmp_path):
    assert default_contrasts(["a", "b", "c"]) == [("b", "a"), ("c", "a"), ("c", "b")]
    table = _table({"a": {f"t{k}": [k, k, k, k] for k in range(4)}, "b": {f"t{k}": [k + 1] * 4 for k in range(4)}})
    lines = contrast_lines("b - a", paired_comparison(table, "b", "a"))
    assert lines[0].startswith("b - a") and lines[-1].split()[:2] == ["all", "+1.00"]
    box_plot(table, tmp_path / "box.png")
    assert (tmp_path / "box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ equal compute
@pytest.fixture(scope="module")
def stems_and_d_i(tmp_path_factory):
    base = tmp_path_factory.mktemp("budget")
    stems = write_stem_set(base / "stems", {"train": 2, "valid": 1}, seconds=1.5)
    run = write_excerpt_index(base / "extraction", [("bass", noise(2, 1.0, RATE), RATE),
                                                    ("drums", noise(2, 1.0, RATE, seed=2), RATE)])
    return stems, run


def _budget_config(**overrides) -> TrainConfig:
    values = dict(epochs=50, batches_per_epoch=3, batch_size=2, window_s=0.3, remix_probability=0.5,
                  valid_max_windows=2, seed=1, num_threads=1,
                  model=dict(channels=4, depth=2, lstm_layers=1, sample_rate=RATE))
    return TrainConfig.for_model("demucs", **{**values, **overrides})


def test_an_equal_total_budget_gives_remix_and_plain_runs_equal_compute(stems_and_d_i, tmp_path):
    stems, d_i = stems_and_d_i
    train_separator(_budget_config(max_updates=8, budget="total"), stems, d_i, tmp_path / "remix", progress=False)
    train_separator(_budget_config(max_updates=8, budget="total"), stems, None, tmp_path / "plain", progress=False)
    remix = json.loads((tmp_path / "remix" / "summary.json").read_text())
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert remix["remix_steps"] > 0 and remix["main_steps"] + remix["remix_steps"] == 8
    assert plain["remix_steps"] == 0 and plain["main_steps"] == 8
    assert remix["updates"] == plain["updates"] == 8 and remix["examples"] == plain["examples"] == 16
    assert remix["budget_spent"] and remix["epochs"] < 50
    history = json.loads((tmp_path / "remix" / "history.json").read_text())
    assert [r["updates"] for r in history] == sorted(r["updates"] for r in history)
    assert history[-1]["updates"] == 8
    assert sum(r["main_steps"] + r["remix_steps"] for r in history) == 8


def test_a_budget_in_examples_and_raising_a_budget_continues_the_run(stems_and_d_i, tmp_path):
    stems, _ = stems_and_d_i
    history = train_separator(_budget_config(max_examples=9), stems, None, tmp_path / "run", progress=False)
    assert history[-1]["examples"] == 8 and history[-1]["updates"] == 4  # a 5th batch of 2 would pass 9
    history = train_separator(_budget_config(max_examples=14), stems, None, tmp_path / "run", progress=False)
    assert history[-1]["examples"] == 14 and history[-1]["updates"] == 7
    assert len(history) == 3  # epochs 1-2 (the 2nd cut at 4 updates), then one more from the resume
    with pytest.raises(ValueError, match="max_updates"):
        _budget_config(max_updates=0)
