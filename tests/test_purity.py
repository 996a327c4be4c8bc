"""Song-level purity of excerpts: whole songs resampled, the bound rule, and the catalog's own purity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.mining.calibration import CatalogWindows, calibrate, calibrate_excerpts, rules_table
from pipeline.mining.extraction import RunRule
from pipeline.mining.purity import (
    bootstrap_bound,
    bootstrap_weights,
    excerpt_statistics,
    isotonic_map,
    resampled_purity,
    song_excerpts,
    song_numbers,
    track_breaks,
)
from pipeline.sources import HOP_S, SOURCES, WINDOW_S

SHORT = WINDOW_S + 4 * HOP_S  # excerpts of at least 5 frames, so that hand-made tables stay small
SILENT, LOUD = -40.0, 0.0


def _songs(songs: dict[str, tuple[list[float], list[float]]]):
    """(probs, volumes, breaks, ids, table) of drums-only songs ``{name: (P list, V list)}``; the
    other sources are loud with P = 0."""
    p = np.concatenate([np.asarray(s[0], float) for s in songs.values()])
    v = np.concatenate([np.asarray(s[1], float) for s in songs.values()])
    ids = np.concatenate([[name] * len(s[0]) for name, s in songs.items()])
    frames = np.concatenate([np.arange(len(s[0])) for s in songs.values()])
    probs = np.zeros((p.size, 4))
    volumes = np.full((p.size, 4), LOUD)
    probs[:, 0], volumes[:, 0] = p, v
    table = pd.DataFrame({"track_id": ids, "frame": frames, "name": ids,
                          **{f"p_{s}": probs[:, i] for i, s in enumerate(SOURCES)},
                          **{f"V_{s}": volumes[:, i] for i, s in enumerate(SOURCES)}})
    return probs, volumes, track_breaks(ids, frames), ids, table


# A clean song: 10 sure frames (0.9) then 10 less sure ones (0.6), all silent, then 2 loud ones.
CLEAN = ([0.9] * 10 + [0.6] * 10 + [0.0] * 2, [SILENT] * 20 + [LOUD] * 2)
# The bad song: 10 frames at 0.6 of which 9 are loud (a quiet-but-present part the detector misses).
BAD = ([0.6] * 10 + [0.0] * 2, [SILENT] + [LOUD] * 11)


def _rules(songs, **options):
    probs, volumes, breaks, ids, _ = _songs(songs)
    return calibrate_excerpts(probs, volumes, breaks, min_windows=1, run_rule=RunRule(SHORT), songs=ids, **options)


def _drums(rows: pd.DataFrame) -> pd.Series:
    return rows.set_index("source").loc["drums"]


def test_song_resampling_draws_whole_songs():
    weights = bootstrap_weights(7, resamples=500, seed=3)
    assert weights.shape == (500, 7) and weights.dtype == np.int64
    assert (weights.sum(axis=1) == 7).all()  # each resample: 7 songs drawn with replacement
    assert np.array_equal(weights, bootstrap_weights(7, resamples=500, seed=3))
    # Two songs of 100 windows inside, one pure, one impure: a resample takes each song whole,
    # so its purity is 0, 1/2 or 1 (windows drawn one by one would give every value between).
    inside, silent = np.array([[100], [100]]), np.array([[100], [0]])
    purity = resampled_purity(inside, silent, bootstrap_weights(2, resamples=2000))
    assert set(np.unique(purity)) == {0.0, 0.5, 1.0}
    # A resample that draws no song with an excerpt holds no evidence: it counts as purity 0.
    lonely = np.array([[50]] + [[0]] * 19)
    assert bootstrap_bound(lonely, lonely, bootstrap_weights(20, resamples=2000))[0] == 0.0


def test_a_point_estimate_that_passes_and_a_bound_that_fails():
    songs = {**{f"clean{k}": CLEAN for k in range(9)}, "bad": BAD}
    calibration = _rules(songs)
    # At 0.6 the excerpts hold 181 silent windows of 190 (95.3 %): the point estimate passes...
    excerpts = _drums(calibration.thresholds)
    assert excerpts["threshold"] == pytest.approx(0.6)
    assert excerpts["achieved_fraction"] == pytest.approx(181 / 190)
    # ... but a quarter of the resamples draw the bad song twice or more (90.6 % or less): the
    # bound at 95 % confidence fails there, and the bound rule stays at 0.9 (every song clean).
    assert excerpts["bound"] < 0.95
    bound = _drums(calibration.bound)
    assert bound["threshold"] == pytest.approx(0.9)
    assert bound["estimate"] == 1.0 and bound["bound"] == 1.0 and bound["songs"] == 9
    assert bound["drivers"] == "" and bound["blockers"] == "bad 9/10"  # what keeps it from 0.6


def test_one_bad_song_moves_the_threshold():
    clean = {f"clean{k}": CLEAN for k in range(9)}
    without = _drums(_rules(clean).bound)
    assert without["threshold"] == pytest.approx(0.6)
    assert without["extracted_s"] == pytest.approx(9 * (19 * HOP_S + WINDOW_S))
    assert _drums(_rules({**clean, "bad": BAD}).bound)["threshold"] == pytest.approx(0.9)
    # The same bad windows spread over many songs are no longer one song's doing: 18 clean songs
    # and 9 songs with one loud window each at 0.6 (181 silent of 190 per nine songs again).
    spread = {**{f"clean{k}": CLEAN for k in range(18)},
              **{f"mild{k}": ([0.6] * 10 + [0.0] * 2, [SILENT] * 9 + [LOUD] * 3) for k in range(9)}}
    assert _drums(_rules(spread).bound)["threshold"] == pytest.approx(0.6)


def test_entry_is_the_highest_candidate_at_which_a_window_is_inside():
    rng = np.random.default_rng(5)
    n = 900
    walk = np.cumsum(rng.normal(0, 0.3, n))
    p = 1 / (1 + np.exp(-np.sin(walk)))
    ids = np.repeat(["a", "b", "c"], n // 3)
    breaks = track_breaks(ids, np.tile(np.arange(n // 3), 3))
    song, names = song_numbers(ids)
    silent = rng.random(n) < 0.7
    grid = np.unique(np.round(p, 2))
    for gap in (0, 2):
        run_rule = RunRule(SHORT, gap)
        table = song_excerpts(p, silent, breaks, song, len(names), grid, run_rule)
        for j, threshold in enumerate(grid):
            count, n_inside, n_silent, seconds, inside = excerpt_statistics(p, silent, breaks, threshold, run_rule)
            assert np.array_equal(inside, table.entry >= j)
            assert (table.inside[:, j].sum(), table.silent[:, j].sum(), table.excerpts[:, j].sum()) == (
                n_inside, n_silent, count)
            assert table.seconds()[:, j].sum() == pytest.approx(seconds)


def test_isotonic_map_is_non_decreasing_and_fills_empty_entries():
    np.testing.assert_allclose(isotonic_map([10, 0, 10, 20], [8, 0, 2, 20]), [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(isotonic_map([0, 4, 0, 4, 0], [0, 1, 0, 3, 0]), [0.25, 0.25, 0.5, 0.75, 0.75])
    assert np.isnan(isotonic_map([0, 0], [0, 0])).all()


def _catalog(songs: dict[str, list[float]]) -> CatalogWindows:
    probs, _, breaks, ids, _ = _songs({name: (p, [LOUD] * len(p)) for name, p in songs.items()})
    return CatalogWindows(probs, breaks, ids)


# Calibration songs: a sure run (0.9, silent) and a doubtful one (0.6, half of it loud).
MIXED = ([0.9] * 10 + [0.0] + [0.6] * 10 + [0.0], [SILENT] * 10 + [LOUD] + [SILENT] * 5 + [LOUD] * 6)


def test_catalog_rule_estimates_the_purity_of_the_catalogs_own_excerpts():
    labelled = {f"cal{k}": MIXED for k in range(10)}
    # On the calibration songs 0.6 gives 150 silent windows of 200: only 0.9 reaches 95 % there.
    sure = {f"sure{k}": [0.9] * 10 + [0.0] for k in range(30)}
    few_doubts = _rules(labelled, catalog=_catalog({**sure, "doubt": [0.6] * 10 + [0.0]}))
    assert _drums(few_doubts.thresholds)["threshold"] == pytest.approx(0.9)
    # A catalog of sure runs and one doubtful run: at 0.6 its excerpts would be (300 x 1 + 10 x
    # 0.5) / 310 = 98.4 % silent by the map fitted on the calibration songs (1 for entry 0.9, 0.5
    # for entry 0.6): the catalog rule goes down to 0.6.  Every calibration song is alike, so
    # no resample moves the map: the bound equals the estimate.
    row = _drums(few_doubts.catalog)
    assert row["threshold"] == pytest.approx(0.6)
    assert row["estimate"] == pytest.approx(305 / 310) and row["bound"] == pytest.approx(305 / 310)
    assert row["catalog_s"] == pytest.approx(31 * (9 * HOP_S + WINDOW_S))
    assert row["crossfit_fraction"] == pytest.approx(0.75)  # the calibration songs, out of fold
    # A catalog made of the doubtful runs is estimated at 75 % at 0.6: it stays at 0.9.
    doubtful = _rules(labelled, catalog=_catalog({f"c{k}": MIXED[0] for k in range(30)}))
    assert _drums(doubtful.catalog)["threshold"] == pytest.approx(0.9)
    curve = doubtful.curves[doubtful.curves["source"] == "drums"].set_index("threshold")
    assert curve.loc[0.6, "catalog_estimate"] == pytest.approx(0.75)


def test_catalog_bound_falls_when_the_calibration_songs_disagree():
    # Half the calibration songs have clean doubtful runs, half loud ones: the map at entry 0.6
    # swings with the resample, so the bound falls below the estimate.
    labelled = {**{f"good{k}": ([0.6] * 10 + [0.0], [SILENT] * 10 + [LOUD]) for k in range(6)},
                **{f"poor{k}": ([0.6] * 10 + [0.0], [SILENT] * 9 + [LOUD] * 2) for k in range(6)},
                **{f"sure{k}": ([0.9] * 10 + [0.0], [SILENT] * 10 + [LOUD]) for k in range(6)}}
    catalog = _catalog({"sure": [0.9] * 10 + [0.0], **{f"c{k}": [0.6] * 10 + [0.0] for k in range(10)}})
    calibration = _rules(labelled, catalog=catalog)
    curve = calibration.curves[calibration.curves["source"] == "drums"].set_index("threshold")
    assert curve.loc[0.6, "catalog_estimate"] == pytest.approx((100 * 0.95 + 10) / 110)  # 114 of 120 at 0.6
    assert curve.loc[0.6, "catalog_bound"] < 0.95 - 0.005
    assert _drums(calibration.catalog)["threshold"] == pytest.approx(0.9)


def test_rules_table_states_bounds_confidence_and_songs():
    probs, volumes, breaks, ids, table = _songs({**{f"clean{k}": CLEAN for k in range(9)}, "bad": BAD})
    windows = calibrate(probs, volumes, min_windows=1)
    excerpts = calibrate_excerpts(probs, volumes, breaks, min_windows=1, run_rule=RunRule(SHORT), songs=ids,
                                  song_names=list(dict.fromkeys(ids)))
    thresholds = rules_table(windows, excerpts, table, "bound", RunRule(SHORT)).set_index("source")
    row = thresholds.loc["drums"]
    assert (row["rule"], row["confidence"], row["threshold"]) == ("bound", 0.95, pytest.approx(0.9))
    assert row["bound"] == 1.0 and row["songs"] == 9 and row["blockers"] == "bad 9/10"
    assert row["threshold_excerpts"] == pytest.approx(0.6) and row["bound_excerpts"] < 0.95
    assert row["excerpt_fraction_excerpts"] == pytest.approx(181 / 190)
    assert np.isnan(row["threshold_catalog"])  # not computed without the catalog
    with pytest.raises(ValueError, match="catalog"):
        rules_table(windows, excerpts, table, "catalog", RunRule(SHORT))
    excerpt_row = rules_table(windows, excerpts, table, "excerpts", RunRule(SHORT)).set_index("source").loc["drums"]
    assert excerpt_row["drivers"] == "bad 9/10" and excerpt_row["songs"] == 10
