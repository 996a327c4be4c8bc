"""Paired comparison of runs (the two-level interval with training noise, Wilcoxon on per-track
values, pairing by track, seeds) and the training budget that makes runs comparable (equal
updates and examples)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from fixtures_extraction import write_excerpt_index
from fixtures_stems import RATE, noise, write_stem_set
from scipy import stats

from pipeline.separation.comparison import (
    INTERVAL_METHOD,
    _weighted_statistic,
    box_plot,
    contrast_lines,
    default_contrasts,
    paired_comparison,
    run_statistics,
    too_small_warning,
    track_values,
    two_level_interval,
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


def test_runs_that_never_differ_get_a_zero_width_interval():
    same = np.tile([0.7, 1.2, -0.3, 2.0], (3, 1))
    interval = two_level_interval(same + 0.5, same)
    assert (interval.low, interval.high, interval.se) == pytest.approx((0.5, 0.5, 0.0))
    assert math.isnan(two_level_interval([[1.0]], [[0.0]]).low)  # one track: no spread to estimate
    with pytest.raises(ValueError, match="every track"):
        two_level_interval([[1.0, math.nan]], [[0.0, 0.0]])


def test_with_one_seed_the_standard_error_is_the_track_bootstraps():
    rng = np.random.default_rng(1)
    differences = rng.normal(0.3, 1.0, size=12)
    interval = two_level_interval(differences[None], np.zeros((1, 12)), resamples=20_000, seed=2)
    reference = stats.bootstrap((differences,), np.median, n_resamples=20_000,
                                random_state=np.random.default_rng(3)).standard_error
    assert interval.se == pytest.approx(reference * math.sqrt(12 / 11), rel=0.05)  # divisor-T bias removed
    assert interval.df == 11 and interval.seed_var == 0.0
    half, centre = stats.t.ppf(0.975, 11) * interval.se, np.median(differences)
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half))


def test_training_noise_alone_gives_students_interval_of_the_seed_means():
    # Every track moves with the seed: the tracks say nothing, the 4 seeds say it all.
    offsets = np.array([0.10, -0.25, 0.40, 0.05])
    run = np.repeat(offsets[:, None], 8, axis=1)
    interval = two_level_interval(run, np.zeros((1, 8)), resamples=40_000, seed=4)
    assert interval.track_var == 0.0 and interval.df == pytest.approx(3)
    assert interval.se == pytest.approx(offsets.std(ddof=1) / 2, rel=0.03)  # sd / sqrt(4): the unbiased variance
    t_half = stats.t.ppf(0.975, 3) * offsets.std(ddof=1) / 2
    assert interval.high - interval.low == pytest.approx(2 * t_half, rel=0.03)


def _simulated_runs(rng: np.random.Generator, seeds: int, seed_sd: float, tracks: int = 8,
                    sources: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two runs of equal true skill: per (seed, track), the mean over sources of a song effect
    (shared), a per-run song x source effect, a per-seed offset of ``seed_sd`` dB on every value
    of that training run, and frame-level noise."""
    song = rng.normal(0.0, 3.0, size=(tracks, sources))

    def run():
        values = (song + rng.normal(0.0, 0.1, size=(tracks, sources))
                  + rng.normal(0.0, seed_sd, size=(seeds, 1, 1)) + rng.normal(0.0, 0.1, size=(seeds, tracks, sources)))
        return values.mean(axis=2)

    return run(), run()


def test_the_interval_holds_a_zero_difference_despite_seed_offsets():
    """Two runs of equal skill, 8 tracks x 4 sources, 3 seeds each shifted by 0.17 dB.
    Resampling tracks alone (the seed means as one run) holds 0 in far fewer than 95 % of the
    trials; the two-level interval in at least 90 % of 200."""
    rng = np.random.default_rng(27)
    trials, two_level, tracks_only = 200, 0, 0
    for k in range(trials):
        run, baseline = _simulated_runs(rng, seeds=3, seed_sd=0.17)
        interval = two_level_interval(run, baseline, resamples=2000, seed=k)
        two_level += interval.low <= 0 <= interval.high
        blind = two_level_interval(run.mean(axis=0)[None], baseline.mean(axis=0)[None], resamples=2000, seed=k)
        tracks_only += blind.low <= 0 <= blind.high
    assert two_level / trials >= 0.90
    assert tracks_only / trials < 0.75


def test_the_interval_widens_with_the_seed_spread():
    rng = np.random.default_rng(5)
    song, noise = rng.normal(0, 3, size=8), rng.normal(0, 0.1, size=(2, 3, 8))
    unit = np.array([[-1.0], [0.2], [0.8]])  # the seeds' offsets, scaled below
    widths = []
    for spread in (0.0, 0.1, 0.2, 0.4):
        interval = two_level_interval(song + noise[0] + spread * unit, song + noise[1] - spread * unit[::-1], seed=1)
        widths.append(interval.high - interval.low)
    assert all(a < b for a, b in zip(widths, widths[1:])), widths


def test_too_small_warnings():
    assert too_small_warning(8, 3) is None and too_small_warning(50, 5) is None
    assert "3 test tracks (< 8)" in too_small_warning(3, 3)
    one = too_small_warning(10, 1)
    assert "1 seed per run" in one and "training noise is not in the interval" in one
    both = too_small_warning(3, 2)
    assert "3 test tracks" in both and "2 seeds per run (< 3)" in both
    assert "two-level bootstrap" in INTERVAL_METHOD and "Wilcoxon" in INTERVAL_METHOD


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
    # all: one value per track (its mean over sources), so the Wilcoxon test sees 5 values, not 19
    assert result.loc["all", "median_diff"] == pytest.approx(np.median([delta[f"t{k}"] for k in range(5)]))
    assert result.loc["all", "ci_low"] > 0 and result.loc["all", "wilcoxon_p"] == pytest.approx(2 / 32)
    assert result.loc["drums", "median_run"] == pytest.approx(np.median([k + delta[f"t{k}"] for k in range(5)]))
    assert result.loc["drums", "median_baseline"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no run"):
        paired_comparison(table, "remix", "missing")


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(7)
    base = {f"t{k:02d}": list(rng.normal(size=4)) for k in range(20)}
    # Per track, one difference +d or -d for every source; the sizes come in pairs: symmetric about 0.
    sizes = rng.uniform(0.1, 1.0, size=(10, 1))
    differences = np.repeat(np.concatenate([sizes, -sizes])[rng.permutation(20)], 4, axis=1)
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


def test_paired_comparison_puts_the_seed_spread_in_the_interval():
    base = {f"t{k}": [k, -k, 2 * k, 0.5] for k in range(8)}
    offsets = (-0.9, 0.0, 0.9)  # three training runs of "b": +0.3 dB on average, all over the place
    seeded = [_table({"b": {t: [v + 0.3 + o for v in row] for t, row in base.items()}}, seed=s)
              for s, o in enumerate(offsets)]
    table = pd.concat([_table({"a": base}, seed=0), *seeded])
    result = paired_comparison(table, "b", "a")
    assert (result["seeds_run"] == 3).all() and (result["seeds_baseline"] == 1).all()
    np.testing.assert_allclose(result["median_diff"], 0.3)
    assert (result["ci_low"] < 0).all() and (result["ci_high"] > 0.6).all()  # the seeds' spread, not the tracks'
    assert result["df"].tolist() == pytest.approx([2.0] * 5)  # the seeds alone vary: S - 1
    averaged = table.assign(sdr=table.groupby(["run", "track", "source"])["sdr"].transform("mean"), seed=0)
    blind = paired_comparison(averaged.drop_duplicates(["run", "track", "source"]), "b", "a")
    np.testing.assert_allclose(blind[["ci_low", "ci_high"]], 0.3)  # seed means alone: no doubt at all


def test_contrasts_lines_and_box_plot(tmp_path):
    assert default_contrasts(["a", "b", "c"]) == [("b", "a"), ("c", "a"), ("c", "b")]
    table = _table({"a": {f"t{k}": [k, k, k, k] for k in range(4)}, "b": {f"t{k}": [k + 1] * 4 for k in range(4)}})
    lines = contrast_lines("b - a", paired_comparison(table, "b", "a"))
    assert lines[0].startswith("b - a") and "seeds 1 / 1" in lines[0]
    assert lines[-1].split()[:2] == ["all", "+1.00"] and lines[-1].endswith("tracks 4")
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
