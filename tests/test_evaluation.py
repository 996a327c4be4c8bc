"""Evaluation: museval SDR, silent stems, summary tables (overlap-add: tests/test_apply.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_stems import write_stem_set

from pipeline.separation.comparison import INTERVAL_METHOD
from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.evaluation import (
    ORACLE,
    TRIVIAL,
    build_evaluate,
    compare_runs,
    evaluate_separator,
    museval_metrics,
    oracle_estimates,
    oracle_stft_size,
    reference_projection,
    score_track,
    summarize,
    track_sdr,
    trivial_estimates,
)
from pipeline.sources import SOURCES

RATE = 8000


def _hand_sdr(reference: np.ndarray, estimate: np.ndarray, win: int) -> np.ndarray:
    """v4 images SDR per frame: 10 log10(||s||^2 / ||s_hat - s||^2) over full frames."""
    frames = reference.shape[-1] // win
    return np.array([10 * np.log10(np.sum(reference[:, t * win:(t + 1) * win] ** 2)
                                   / np.sum((estimate - reference)[:, t * win:(t + 1) * win] ** 2))
                     for t in range(frames)])


@pytest.mark.slow
def test_museval_sdr_is_not_scale_invariant():
    # Why TasNet has a mixture consistency option: SI-SNR leaves an estimate's gain free, the
    # v4 SDR does not forgive it (0.3x and 3x the true gain lose several dB; the others stay).
    rng = np.random.default_rng(0)
    rate = 8000
    refs = rng.standard_normal((4, 1, 2 * rate)) * np.array([1.0, 0.5, 0.3, 0.2])[:, None, None]  # mono: 8x cheaper
    estimates = refs + 0.1 * rng.standard_normal(refs.shape)
    sdr = {}
    for gain in (1.0, 0.3, 3.0):
        scaled = estimates.copy()
        scaled[2] *= gain
        sdr[gain] = np.nanmedian(track_sdr(refs, scaled, rate), axis=1)  # (sources,)
    assert sdr[0.3][2] < sdr[1.0][2] - 3 and sdr[3.0][2] < sdr[1.0][2] - 10
    np.testing.assert_allclose(sdr[0.3][[0, 1, 3]], sdr[1.0][[0, 1, 3]], atol=0.5)


def test_museval_sdr_matches_the_v4_definition_per_frame():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(2, 2, 3 * RATE))
    gains = np.array([0.3, 1.0])[:, None, None]
    estimates = references + gains * rng.normal(size=references.shape)
    sdr = track_sdr(references, estimates, RATE)
    assert sdr.shape == (2, 3)
    for j in range(2):
        np.testing.assert_allclose(sdr[j], _hand_sdr(references[j], estimates[j], RATE), atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2])
def test_the_cached_reference_projection_gives_museval_sdr(channels):
    rng = np.random.default_rng(channels)
    references = rng.normal(size=(2, channels, 3 * RATE)).astype(np.float32)
    references[1, :, RATE:2 * RATE] = 0.0  # a silent frame: NaN for every source there
    metrics = museval_metrics()
    projection = reference_projection(references)
    assert reference_projection(references.copy()) is projection  # the same references: computed once
    for noise in (0.2, 1.0):  # two rows of one track share it
        estimates = (references + noise * rng.normal(size=references.shape)).astype(np.float32)
        expected = metrics.bss_eval(np.transpose(references, (0, 2, 1)), np.transpose(estimates, (0, 2, 1)),
                                    window=RATE, hop=RATE, compute_permutation=False, framewise_filters=False,
                                    bsseval_sources_version=False)[0]
        np.testing.assert_allclose(projection.sdr(estimates, RATE, RATE), expected, rtol=1e-9, atol=1e-9)
        assert np.isnan(expected[:, 1]).all()
    other = references[:, :, ::-1].copy()
    assert reference_projection(other) is not projection  # another track's references


def test_silent_stems_are_excluded_per_track_and_per_frame():
    rng = np.random.default_rng(1)
    references = rng.normal(size=(4, 1, 3 * RATE))
    references[1] = 0.0  # bass silent over the whole track: museval alone would raise
    references[3, :, RATE:2 * RATE] = 0.0  # vocals silent during the second frame
    estimates = references + 0.5 * rng.normal(size=references.shape)
    estimates[2] = 0.0  # a model that outputs nothing for "other"
    sdr = track_sdr(references, estimates, RATE)
    assert np.all(np.isnan(sdr[1]))
    assert np.all(np.isnan(sdr[:, 1]))  # a frame with a silent reference is left out for all sources
    expected = _hand_sdr(references[0], estimates[0], RATE)
    np.testing.assert_allclose(sdr[0, [0, 2]], expected[[0, 2]], atol=1e-4)
    assert np.all(sdr[2, [0, 2]] == 0.0)  # zero estimate: 10 log10(||s||^2 / ||s||^2)
    rows = score_track("t", references, estimates, RATE)
    by_source = {r["source"]: r for r in rows}
    assert by_source["bass"]["silent_reference"] and math.isnan(by_source["bass"]["sdr"])
    assert by_source["vocals"]["valid_frames"] == 2 and by_source["vocals"]["frames"] == 3
    assert by_source["drums"]["sdr"] == pytest.approx(np.median(expected[[0, 2]]), abs=1e-4)


@pytest.mark.slow
def test_evaluate_separator_on_a_test_split_with_a_silent_stem(tmp_path):
    root = write_stem_set(tmp_path / "stems", {"test": 2}, seconds=2.0, silent=(("test", 1, "bass"),))
    torch.manual_seed(0)
    model = Demucs(DemucsConfig(channels=4, depth=2, lstm_layers=1, audio_channels=1, sample_rate=RATE))
    per_track, summary = evaluate_separator(model, root, "test", segment_s=1.0, overlap_s=0.25)
    assert len(per_track) == 2 * 4 and set(per_track["source"]) == set(SOURCES)
    silent = per_track[(per_track["track"] == "test-01") & (per_track["source"] == "bass")].iloc[0]
    assert silent["silent_reference"] and math.isnan(silent["sdr"])
    assert per_track.drop(silent.name)["sdr"].notna().all()
    assert summary["excluded_bass"] == 1 and summary["tracks"] == 2
    bass = per_track[(per_track["track"] == "test-00") & (per_track["source"] == "bass")]["sdr"].item()
    assert summary["bass"] == pytest.approx(bass)  # median over the one track that has bass
    assert summary["all"] == pytest.approx(per_track["sdr"].median())


def test_summaries_and_compare_runs():
    rows = [{"track": t, "source": s, "sdr": float(v)} for t, values in (("a", [1, 2, 3, 4]), ("b", [3, 4, 5, 6]),
                                                                         ("c", [5, np.nan, 7, 8]))
            for s, v in zip(SOURCES, values)]
    summary = summarize(pd.DataFrame(rows))
    assert [summary[s] for s in SOURCES] == [3.0, 3.0, 5.0, 6.0]
    assert summary["all"] == 4.0  # median of the 11 non-NaN values
    assert summary["excluded_bass"] == 1 and summary["excluded_drums"] == 0
    table = compare_runs({"without remix": summary, "with remix": {**summary, "bass": 3.5}})
    assert list(table.columns) == ["drums", "bass", "other", "vocals", "all"]
    assert list(table.index) == ["without remix", "with remix"]
    assert table.loc["with remix", "bass"] == 3.5


# ------------------------------------------------------------------ reference rows, parallel scoring
def _sines(seconds: float = 3.0, rate: int = RATE) -> tuple[np.ndarray, np.ndarray]:
    """Four stereo stems of equal power, one sine each at an integer frequency (orthogonal over
    every 1 s frame), far apart in frequency: ``(mixture (2, T), stems (4, 2, T))``."""
    t = np.arange(round(seconds * rate)) / rate
    stems = np.stack([np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)])
                      for f in (200, 900, 1900, 3100)]).astype(np.float64) * 0.2
    return stems.sum(axis=0), stems


@pytest.mark.slow
def test_trivial_row_on_a_track_whose_answer_is_known():
    mix, stems = _sines()
    estimates = trivial_estimates(mix)
    assert estimates.shape == stems.shape
    np.testing.assert_allclose(estimates[2], mix / 4, rtol=1e-6)
    # e = mix / 4 - s_i = (sum of the other three) / 4 - 3 s_i / 4: ||e||^2 = (3 / 16 + 9 / 16) ||s_i||^2.
    sdr = track_sdr(stems, estimates, RATE)
    np.testing.assert_allclose(sdr, 10 * np.log10(16 / 12), atol=1e-3)


@pytest.mark.slow
def test_oracle_row_separates_disjoint_sources_and_keeps_a_lone_source():
    mix, stems = _sines()
    estimates = oracle_estimates(mix, stems, RATE)
    assert estimates.shape == stems.shape
    sdr = track_sdr(stems, estimates, RATE)
    assert np.all(sdr > 25.0)  # Hann leakage between sines ~1 kHz apart is far below the signal
    # One source alone: its mask is 1 everywhere and the STFT round trip gives it back.
    lone = np.zeros_like(stems)
    lone[1] = stems[1]
    back = oracle_estimates(lone.sum(axis=0), lone, RATE)
    np.testing.assert_allclose(back[1], stems[1], atol=1e-5)
    assert np.abs(back[[0, 2, 3]]).max() < 1e-6


def test_oracle_frames_are_equal_in_seconds_at_16_and_44_1_khz():
    assert oracle_stft_size(44_100) == (4096, 1024)  # 92.9 ms / 23.2 ms
    assert oracle_stft_size(16_000) == (1486, 372)
    frames = {}
    for rate in (16_000, 44_100):
        n_fft, hop = oracle_stft_size(rate)
        assert abs(n_fft / rate - 4096 / 44_100) <= 0.5 / rate and abs(hop / rate - 1024 / 44_100) <= 0.5 / rate
        signal = torch.zeros(10 * rate, dtype=torch.float64)
        spectrum = torch.stft(signal, n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                              center=True, return_complex=True)
        frames[rate] = spectrum.shape[-1]
    assert frames[16_000] == frames[44_100] == 431  # one frame every 23.2 ms of the 10 s


def test_the_oracle_at_16_khz_is_not_handicapped_by_44_1_khz_frames():
    # Two sources that take turns every 120 ms: masks of 256 ms frames (4096 samples at 16 kHz) smear them.
    rate, slot = 16_000, 1920
    noise = np.random.default_rng(0).normal(0, 0.1, size=(2, 1, 2 * rate)).astype(np.float32)
    turns = (np.arange(2 * rate) // slot) % 2
    stems = np.stack([noise[0] * (turns == 0), noise[1] * (turns == 1),
                      np.zeros((1, 2 * rate), np.float32), np.zeros((1, 2 * rate), np.float32)])
    seconds = oracle_estimates(stems.sum(axis=0), stems, rate)
    samples = oracle_estimates(stems.sum(axis=0), stems, 44_100)  # 4096 / 1024 samples, as before, at 16 kHz
    sdr_seconds, sdr_samples = (np.nanmedian(track_sdr(stems, e, rate)[:2]) for e in (seconds, samples))
    assert sdr_seconds > sdr_samples + 2.0


def _checkpoint(path, seed: int, rate: int = RATE, channels: int = 1):
    from pipeline.separation.registry import checkpoint_fields

    torch.manual_seed(seed)
    model = Demucs(DemucsConfig(channels=4, depth=2, lstm_layers=1, audio_channels=channels, sample_rate=rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_fields(model), path)
    (path.parent / "summary.json").write_text(json.dumps({"main_steps": 10 + seed, "remix_steps": 3 * seed,
                                                          "critic_steps": 0, "pretrain_steps": 0, "examples": 20}))
    return path


@pytest.mark.slow
def test_parallel_scoring_equals_serial_and_writes_the_comparison(tmp_path):
    root = write_stem_set(tmp_path / "stems", {"test": 2}, seconds=2.0, rate=RATE,
                          silent=(("test", 1, "bass"),))
    runs = {"plain": {0: _checkpoint(tmp_path / "a0" / "best.pt", 0), 1: _checkpoint(tmp_path / "a1" / "best.pt", 1)},
            "remix": _checkpoint(tmp_path / "b" / "best.pt", 2)}
    serial = build_evaluate(runs, root, tmp_path / "serial", workers=1, progress=False)
    parallel = build_evaluate(runs, root, tmp_path / "parallel", workers=2, progress=False)
    one = pd.read_parquet(tmp_path / "serial" / "per_track.parquet")
    two = pd.read_parquet(tmp_path / "parallel" / "per_track.parquet")
    pd.testing.assert_frame_equal(one, two)
    assert serial.summary == parallel.summary
    # 2 tracks x 4 sources for each of 2 reference rows, 2 seeds of "plain", 1 of "remix".
    assert len(one) == 2 * 4 * 5 and set(one["run"]) == {TRIVIAL, ORACLE, "plain", "remix"}
    comparison = pd.read_csv(tmp_path / "serial" / "comparison.csv", index_col=0)
    assert list(comparison.index) == [TRIVIAL, ORACLE, "plain", "remix"]
    assert comparison.loc["plain", "seeds"] == 2 and comparison.loc["plain", "main_steps"] == 10.5
    assert comparison.loc["remix", "remix_steps"] == 6 and comparison.loc["remix", "critic_steps"] == 0
    assert np.isnan(comparison.loc[TRIVIAL, "main_steps"]) and not np.isnan(comparison.loc["plain", "seed_sd_all"])
    assert comparison.loc[ORACLE, "all"] > comparison.loc[TRIVIAL, "all"]
    contrasts = pd.read_csv(tmp_path / "serial" / "contrasts.csv")
    assert set(contrasts["contrast"]) == {"remix - plain"} and set(contrasts["metric"]) == {"sdr", "si_snr"}
    assert not contrasts["equal_main_steps"].any()
    assert any(line.startswith("remix - plain, SDR") for line in serial.summary)
    assert any("unequal main steps: 12.0 vs 10.5" in line for line in serial.summary)
    # how the intervals were made, and that 2 tracks and 1 seed of "remix" allow no conclusion
    assert INTERVAL_METHOD in serial.summary and serial.counts["interval_method"] == INTERVAL_METHOD
    warning = serial.summary[serial.summary.index(INTERVAL_METHOD) + 1]
    assert warning == serial.counts["warning"] and "2 test tracks (< 8)" in warning and "1 seed per run" in warning
    assert (tmp_path / "serial" / "boxplot_sdr.png").exists() and (tmp_path / "serial" / "boxplot_si_snr.png").exists()
    with pytest.raises(ValueError, match="contrast"):
        build_evaluate(runs, root, tmp_path / "bad", workers=1, contrasts=[("remix", "nope")], progress=False)
