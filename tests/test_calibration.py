"""Calibration of p_i: the literal 'lowest threshold with >= 95 % silent above it' rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.mining.calibration import (
    CURVE_COLUMNS,
    THRESHOLD_COLUMNS,
    calibrate,
    calibration_arrays,
    plot_curves,
    thresholds_from_table,
)
from pipeline.sources import SOURCES


def _one_source(p: list[float], v: list[float], column: int = 0, fill_v: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) inputs whose ``column`` is given; the other sources are loud with P = 0."""
    probs = np.zeros((len(p), 4))
    volumes = np.full((len(v), 4), fill_v)
    probs[:, column] = p
    volumes[:, column] = v
    return probs, volumes


def _row(calibration, source: str) -> pd.Series:
    return calibration.thresholds.set_index("source").loc[source]


def _brute_force(p: np.ndarray, v: np.ndarray, target_db: float, target_fraction: float, min_windows: int) -> dict:
    """The rule read literally, one candidate at a time."""
    n_silent = int((v <= target_db).sum())
    admissible = []
    for t in np.unique(p):
        above = p >= t
        fraction = (v[above] <= target_db).mean()
        if above.sum() >= min_windows and fraction >= target_fraction - 1e-12:
            admissible.append(t)
    if not admissible:
        return {"calibratable": False}
    t = min(admissible)
    above = p >= t
    return {"calibratable": True, "threshold": t, "n_windows_above": int(above.sum()),
            "achieved_fraction": (v[above] <= target_db).mean(),
            "coverage": (v[above] <= target_db).sum() / n_silent,
            "v95_db": np.sort(v[above])[int(np.ceil(0.95 * above.sum())) - 1]}


def test_lowest_admissible_threshold_even_when_the_fraction_is_not_monotone():
    # Candidates 0.9: 1/1, 0.8: 2/2, 0.7: 2/3, 0.6: 3/4, 0.5: 4/5, 0.4: 4/6 silent (V <= -20).
    probs, volumes = _one_source([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [-30, -25, -10, -40, -30, -5])
    calibration = calibrate(probs, volumes, target_db=-20.0, target_fraction=0.75, min_windows=1)
    row = _row(calibration, "drums")
    assert row["calibratable"]
    assert row["threshold"] == pytest.approx(0.5)  # 0.7 fails, yet the lower 0.5 passes: minimum over all
    assert row["n_windows_above"] == 5
    assert row["achieved_fraction"] == pytest.approx(0.8)
    assert row["coverage"] == pytest.approx(1.0)  # all 4 silent windows lie above 0.5
    assert row["v95_db"] == pytest.approx(-10.0)  # 5th smallest of 5 (inverted CDF)
    assert row["n_windows_total"] == 6
    assert list(calibration.thresholds.columns) == list(THRESHOLD_COLUMNS)
    assert list(calibration.curves.columns) == list(CURVE_COLUMNS)


def test_ties_enter_together():
    # Silent windows come first among the ties, so a rule that admits windows one by one
    # would see 3 silent of 3 at P = 0.8; with the whole tie it is 3 of 5.
    probs, volumes = _one_source([0.9, 0.9, 0.8, 0.8, 0.8, 0.1], [-30, -30, -30, -5, -5, -5])
    row = _row(calibrate(probs, volumes, target_db=-20.0, target_fraction=0.75, min_windows=1), "drums")
    assert row["threshold"] == pytest.approx(0.9)
    assert row["n_windows_above"] == 2
    loose = _row(calibrate(probs, volumes, target_db=-20.0, target_fraction=0.6, min_windows=1), "drums")
    assert loose["threshold"] == pytest.approx(0.8)
    assert loose["n_windows_above"] == 5


def test_min_windows_rules_out_thresholds_that_select_too_few():
    probs, volumes = _one_source([0.9, 0.9, 0.8, 0.8, 0.8, 0.1], [-30, -30, -30, -5, -5, -5])
    row = _row(calibrate(probs, volumes, target_fraction=0.75, min_windows=3), "drums")
    assert not row["calibratable"]
    assert np.isnan(row["threshold"])


def test_source_that_never_reaches_the_target_is_not_calibratable():
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(300, 4))
    volumes = np.where(probs > 0.5, -40.0, 0.0)
    volumes[:, 2] = -5.0  # "other" is always audible
    calibration = calibrate(probs, volumes, min_windows=10)
    table = calibration.thresholds.set_index("source")
    assert not table.loc["other", "calibratable"]
    assert np.isnan(table.loc["other", "threshold"])
    assert table.loc["other", "n_windows_total"] == 300
    assert table.loc[["drums", "bass", "vocals"], "calibratable"].all()
    # Its curve is still reported (fraction 0 everywhere), so the plot can show why.
    other = calibration.curves[calibration.curves["source"] == "other"]
    assert len(other) > 0 and (other["fraction_silent"] == 0).all()
    assert calibration.threshold_map()["other"] is None
    assert calibration.threshold_map()["drums"] == pytest.approx(table.loc["drums", "threshold"])


def test_empty_input_gives_no_calibratable_source():
    calibration = calibrate(np.zeros((0, 4)), np.zeros((0, 4)))
    assert list(calibration.thresholds["source"]) == list(SOURCES)
    assert not calibration.thresholds["calibratable"].any()
    assert (calibration.thresholds["n_windows_total"] == 0).all()
    assert calibration.curves.empty
    assert thresholds_from_table(calibration.thresholds) == {s: None for s in SOURCES}


def test_minus_inf_volumes_count_as_silent():
    probs, volumes = _one_source([0.9, 0.8, 0.7, 0.2], [-np.inf, -np.inf, -np.inf, 0.0])
    row = _row(calibrate(probs, volumes, target_fraction=0.95, min_windows=1), "drums")
    assert row["calibratable"]
    assert row["threshold"] == pytest.approx(0.7)
    assert row["achieved_fraction"] == 1.0
    assert row["coverage"] == 1.0
    assert row["v95_db"] == -np.inf  # no interpolation, so no NaN


def test_matches_the_literal_rule_on_random_tables():
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        probs = np.round(rng.uniform(size=(n, 4)), int(rng.integers(1, 4)))  # many ties
        volumes = -60.0 * probs + rng.normal(0.0, 12.0, size=(n, 4))
        volumes[rng.uniform(size=(n, 4)) < 0.05] = -np.inf
        min_windows = int(rng.integers(1, 30))
        calibration = calibrate(probs, volumes, target_db=-20.0, target_fraction=0.9, min_windows=min_windows,
                                curve_points=50)
        for index, source in enumerate(SOURCES):
            expected = _brute_force(probs[:, index], volumes[:, index], -20.0, 0.9, min_windows)
            row = _row(calibration, source)
            assert bool(row["calibratable"]) == expected["calibratable"], (trial, source)
            curve = calibration.curves[calibration.curves["source"] == source]
            assert len(curve) <= 50
            assert np.all(np.diff(curve["threshold"]) > 0)
            if expected["calibratable"]:
                for key in ("threshold", "n_windows_above", "achieved_fraction", "coverage", "v95_db"):
                    assert row[key] == pytest.approx(expected[key]), (trial, source, key)
                assert np.isclose(curve["threshold"], row["threshold"]).any()  # chosen point kept
            # Every curve point is the statistic of its own threshold.
            for t, n_above, fraction in curve[["threshold", "n_above", "fraction_silent"]].itertuples(index=False):
                above = probs[:, index] >= t
                assert n_above == above.sum()
                assert fraction == pytest.approx((volumes[above, index] <= -20.0).mean())


def test_nan_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="NaN"):
        calibrate(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        calibrate(np.zeros((3, 4)), np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="shape|must both"):
        calibrate(np.zeros((3, 4)), np.zeros((2, 4)))


def test_calibration_arrays_joins_on_track_and_frame():
    probabilities = pd.DataFrame({
        "track_id": ["a", "a", "a", "b", "b"], "frame": np.array([0, 1, 2, 0, 1], np.int32),
        "start_s": [0.0, 0.064, 0.128, 0.0, 0.064],
        **{f"p_{s}": np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32) + i for i, s in enumerate(SOURCES)}})
    labels = pd.DataFrame({  # b's frames listed backwards; a has no label for frame 2
        "track_id": ["b", "b", "a", "a"], "window": np.array([1, 0, 0, 1], np.int32),
        "start_s": [0.064, 0.0, 0.0, 0.064],
        **{f"V_{s}": np.array([-1.0, -2.0, -3.0, -4.0]) - 10 * i for i, s in enumerate(SOURCES)}})
    probs, volumes = calibration_arrays(probabilities, labels)
    assert probs.shape == volumes.shape == (4, 4)
    np.testing.assert_allclose(probs[:, 0], [0.1, 0.2, 0.4, 0.5], rtol=1e-6)
    np.testing.assert_allclose(volumes[:, 0], [-3.0, -4.0, -2.0, -1.0])
    np.testing.assert_allclose(volumes[:, 3], [-33.0, -34.0, -32.0, -31.0])
    with pytest.raises(ValueError, match="matches"):
        calibration_arrays(probabilities, labels.assign(track_id=labels["track_id"] + "x"))
    with pytest.raises(ValueError, match="repeated"):
        calibration_arrays(pd.concat([probabilities, probabilities]), labels)


def test_plot_curves_writes_a_png(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.uniform(size=(500, 4))
    volumes = np.where(probs > 0.7, -40.0, 0.0)
    volumes[:, 2] = 0.0
    path = tmp_path / "plots" / "calibration.png"
    plot_curves(calibrate(probs, volumes, min_windows=20), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["calibration.png"]  # no temporary left


# --------------------------------------------------------------------------- rule "excerpts"

from pipeline.mining.calibration import (  # noqa: E402
    EXCERPT_COLUMNS,
    calibrate_excerpts,
    rules_table,
)
from pipeline.mining.extraction import RunRule, min_frames_for  # noqa: E402
from pipeline.mining.purity import excerpt_statistics, track_breaks  # noqa: E402
from pipeline.sources import HOP_S, WINDOW_S  # noqa: E402

SHORT = WINDOW_S + 4 * HOP_S  # min_seconds of 5 frames, so that hand-made tables stay small
SILENT, LOUD = -40.0, 0.0


def _tracks(*tracks: tuple[list[float], list[float]]):
    """(probs, volumes, breaks, table) of drums-only tracks given as (P list, V list)."""
    p = np.concatenate([np.asarray(t[0], float) for t in tracks])
    v = np.concatenate([np.asarray(t[1], float) for t in tracks])
    ids = np.concatenate([[f"t{k}"] * len(t[0]) for k, t in enumerate(tracks)])
    frames = np.concatenate([np.arange(len(t[0])) for t in tracks])
    probs, volumes = _one_source(list(p), list(v), fill_v=LOUD)
    table = pd.DataFrame({"track_id": ids, "frame": frames,
                          **{f"p_{s}": probs[:, i] for i, s in enumerate(SOURCES)},
                          **{f"V_{s}": volumes[:, i] for i, s in enumerate(SOURCES)}})
    return probs, volumes, track_breaks(ids, frames), table


# A: 10 sure frames (silent), then 10 at 0.6 of which the last 2 are loud; B: 10 at 0.6, the
# last loud; C: loud, P = 0.6 / 0.8 in bursts of 3 frames that never make a 5-frame run.
TRACK_A = ([0.9] * 10 + [0.6] * 10, [SILENT] * 18 + [LOUD] * 2)
TRACK_B = ([0.6] * 10, [SILENT] * 9 + [LOUD])
TRACK_C = ([0.6, 0.8, 0.6, 0.0] * 10, [LOUD] * 40)


def test_min_seconds_of_the_hand_made_tables():
    assert min_frames_for(SHORT) == 5


def test_excerpts_rule_on_a_hand_made_table():
    probs, volumes, breaks, _ = _tracks(TRACK_A, TRACK_B, TRACK_C)
    # 95 %: at 0.6 the excerpts hold 27 silent windows of 30 (90 %): only 0.9 (and 0.8, which cuts
    # the same excerpts: a tie, resolved to the higher threshold) reach it.
    strict = calibrate_excerpts(probs, volumes, breaks, target_fraction=0.95, min_windows=1, run_rule=RunRule(SHORT))
    row = _row(strict, "drums")
    assert list(strict.thresholds.columns) == list(EXCERPT_COLUMNS)
    assert bool(row["calibratable"]) and row["threshold"] == pytest.approx(0.9)
    assert (row["n_excerpts"], row["n_windows_inside"], row["achieved_fraction"]) == (1, 10, 1.0)
    assert row["extracted_s"] == pytest.approx(9 * HOP_S + WINDOW_S)
    curve = strict.curves[strict.curves["source"] == "drums"].set_index("threshold")
    assert curve.loc[0.8, "extracted_s"] == curve.loc[0.9, "extracted_s"]  # the tie
    # 90 %: 0.6 is admissible and cuts the most audio.  The windows rule cannot go there: C's
    # loud bursts are windows above 0.6 but no excerpt.
    loose = _row(calibrate_excerpts(probs, volumes, breaks, target_fraction=0.9, min_windows=1,
                                    run_rule=RunRule(SHORT)),
                 "drums")
    assert loose["threshold"] == pytest.approx(0.6)
    assert (loose["n_excerpts"], loose["n_windows_inside"]) == (2, 30)
    assert loose["achieved_fraction"] == pytest.approx(0.9)
    assert loose["extracted_s"] == pytest.approx((19 * HOP_S + WINDOW_S) + (9 * HOP_S + WINDOW_S))
    assert loose["v95_db"] == LOUD  # 3 loud windows of 30: the 95th percentile is loud
    windows = _row(calibrate(probs, volumes, target_fraction=0.9, min_windows=1), "drums")
    assert windows["threshold"] == pytest.approx(0.9)
    # min_windows: 30 windows are too few for 31.
    assert not bool(_row(calibrate_excerpts(probs, volumes, breaks, target_fraction=0.9, min_windows=31,
                                            run_rule=RunRule(SHORT)), "drums")["calibratable"])


def test_excerpts_rule_sees_the_gap_rule():
    probs, volumes, breaks, _ = _tracks(TRACK_A, TRACK_B, TRACK_C)
    # With dips of one frame bridged, C's bursts become one loud 39-frame excerpt at 0.6.
    p, silent = probs[:, 0], volumes[:, 0] <= -20.0
    assert excerpt_statistics(p, silent, breaks, 0.6, RunRule(SHORT, 0))[:3] == (2, 30, 27)
    assert excerpt_statistics(p, silent, breaks, 0.6, RunRule(SHORT, 1))[:3] == (3, 69, 27)
    row = _row(calibrate_excerpts(probs, volumes, breaks, target_fraction=0.9, min_windows=1,
                                  run_rule=RunRule(SHORT, 1)), "drums")
    assert row["threshold"] == pytest.approx(0.9)


def test_excerpt_runs_never_cross_tracks():
    # 3 sure frames at the end of one track and 3 at the start of the next: no 5-frame excerpt.
    probs, volumes, breaks, _ = _tracks(([0.0] * 5 + [0.9] * 3, [SILENT] * 8), ([0.9] * 3 + [0.0] * 5, [SILENT] * 8))
    assert breaks.tolist() == [True] + [False] * 7 + [True] + [False] * 7
    assert excerpt_statistics(probs[:, 0], volumes[:, 0] <= -20, breaks, 0.9, RunRule(SHORT, 2))[0] == 0
    merged = np.zeros_like(breaks)
    merged[0] = True
    assert excerpt_statistics(probs[:, 0], volumes[:, 0] <= -20, merged, 0.9, RunRule(SHORT, 0))[0] == 1


def test_excerpts_rule_when_nothing_reaches_the_target():
    probs, volumes, breaks, _ = _tracks(([0.9] * 20, [LOUD] * 20), TRACK_C)
    calibration = calibrate_excerpts(probs, volumes, breaks, min_windows=1, run_rule=RunRule(SHORT))
    for source in SOURCES:  # the loud drums, and the other sources (P = 0 everywhere, loud)
        row = _row(calibration, source)
        assert not bool(row["calibratable"]) and np.isnan(row["threshold"]) and row["extracted_s"] == 0.0
    empty = calibrate_excerpts(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, bool))
    assert not empty.thresholds["calibratable"].any()
    with pytest.raises(ValueError, match="NaN"):
        calibrate_excerpts(np.full((2, 4), np.nan), np.zeros((2, 4)), np.ones(2, bool))


def test_rules_table_reports_both_rules():
    probs, volumes, breaks, table = _tracks(TRACK_A, TRACK_B, TRACK_C)
    windows = calibrate(probs, volumes, target_fraction=0.9, min_windows=1)
    excerpts = calibrate_excerpts(probs, volumes, breaks, target_fraction=0.9, min_windows=1, run_rule=RunRule(SHORT))
    for rule in ("windows", "excerpts"):
        row = rules_table(windows, excerpts, table, rule, RunRule(SHORT)).set_index("source").loc["drums"]
        assert row["threshold_windows"] == pytest.approx(0.9) and row["threshold_excerpts"] == pytest.approx(0.6)
        assert row["heldout_s_windows"] == pytest.approx(9 * HOP_S + WINDOW_S)
        assert row["heldout_s_excerpts"] == pytest.approx(28 * HOP_S + 2 * WINDOW_S)
        assert row["excerpt_fraction_excerpts"] == pytest.approx(0.9)
        assert row["threshold"] == pytest.approx(0.9 if rule == "windows" else 0.6)
    thresholds = thresholds_from_table(rules_table(windows, excerpts, table, "excerpts", RunRule(SHORT)))
    assert thresholds["drums"] == pytest.approx(0.6) and thresholds["other"] is None
    with pytest.raises(ValueError, match="rule"):
        rules_table(windows, excerpts, table, "frames")


def test_excerpts_rule_threshold_does_not_follow_float_noise():
    # Candidates sit at fixed ranks of all held-out windows: when float noise makes two distinct
    # probabilities equal (or apart), no candidate moves by more than the noise.  (Ranks among the
    # distinct values would shift the whole grid by one value: 3e-4 on the demo's detector.)
    rng = np.random.default_rng(4)
    n, tracks = 6000, 12
    walk = np.cumsum(rng.normal(0.0, 0.08, size=(n, len(SOURCES))), axis=0)
    probs = 1.0 / (1.0 + np.exp(-np.sin(walk)))
    volumes = np.where(probs + rng.normal(0.0, 0.08, size=probs.shape) > 0.6, SILENT, LOUD)
    ids = np.repeat([f"t{k}" for k in range(tracks)], n // tracks)
    breaks = track_breaks(ids, np.tile(np.arange(n // tracks), tracks))
    noisy = probs.copy()
    for column in range(len(SOURCES)):
        order = np.argsort(probs[:, column])
        gaps = np.diff(probs[order, column])
        for k in np.argsort(gaps)[:40]:  # the 40 closest pairs of values become equal pairs
            noisy[order[k + 1], column] = probs[order[k], column]
        assert np.sort(gaps)[39] < 1e-6
    one, two = (calibrate_excerpts(p, volumes, breaks, target_fraction=0.8, min_windows=50, candidates=60)
                for p in (probs, noisy))
    for source in SOURCES:
        a, b = _row(one, source), _row(two, source)
        assert bool(a["calibratable"]) and bool(b["calibratable"]), source
        assert abs(a["threshold"] - b["threshold"]) < 2e-6, (source, a["threshold"], b["threshold"])
