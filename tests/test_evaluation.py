"""Evaluation: overlap-add reconstruction, museval SDR, silent stems, summary tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.evaluation import (compare_runs, crossfade_weights, evaluate_separator, overlap_add, score_track,
                                 separate_track, summarize, track_sdr)
from pipeline.sources import SOURCES
from test_remix import write_stem_set

RATE = 8000


def _hand_sdr(reference: np.ndarray, estimate: np.ndarray, win: int) -> np.ndarray:
    """v4 images SDR per frame: 10 log10(||s||^2 / ||s_hat - s||^2) over full frames."""
    frames = reference.shape[-1] // win
    return np.array([10 * np.log10(np.sum(reference[:, t * win:(t + 1) * win] ** 2)
                                   / np.sum((estimate - reference)[:, t * win:(t + 1) * win] ** 2))
                     for t in range(frames)])


def test_crossfade_weights_are_positive_triangles():
    for n in (1, 2, 7, 8):
        w = crossfade_weights(n)
        assert w.shape == (n,) and torch.all(w > 0)
        assert torch.equal(w, w.flip(0))


@pytest.mark.parametrize("length,segment,overlap", [(1000, 300, 100), (1000, 300, 0), (299, 300, 50),
                                                    (1234, 256, 255), (5000, 1000, 250)])
def test_overlap_add_of_identity_reconstructs_the_input(length, segment, overlap):
    mix = torch.randn(2, length)
    calls = []

    def identity(chunks):  # (B, C, segment) -> (B, 1, C, segment)
        assert chunks.shape[-1] == segment
        calls.append(chunks.shape[0])
        return chunks[:, None]

    out = overlap_add(identity, mix, segment, overlap, batch_size=3)
    assert out.shape == (1, 2, length)
    torch.testing.assert_close(out[0], mix, rtol=1e-5, atol=1e-6)
    assert sum(calls) == 1 + max(0, math.ceil((length - segment) / (segment - overlap)))


def test_overlap_add_blends_segments_with_the_crossfade():
    # A "model" that outputs its segment's mean: segments [0, 150) -> 1/3 and [50, 200) -> 2/3.
    mix = torch.cat([torch.zeros(1, 100), torch.ones(1, 100)], dim=1)
    out = overlap_add(lambda c: c.mean(dim=-1, keepdim=True).expand_as(c)[:, None], mix, 150, 100)[0, 0]
    torch.testing.assert_close(out[:50], torch.full((50,), 1 / 3))
    torch.testing.assert_close(out[150:], torch.full((50,), 2 / 3))
    # At t = 100: weight 50 (falling edge of the first triangle), 51 (rising edge of the second).
    assert out[100].item() == pytest.approx((50 / 3 + 51 * 2 / 3) / 101)
    assert torch.all(out[1:] >= out[:-1] - 1e-6)  # a monotone crossfade, no jump


def test_separate_track_keeps_length_and_shape():
    torch.manual_seed(0)
    model = Demucs(DemucsConfig(channels=4, depth=2, lstm_layers=1, sample_rate=RATE))
    mix = np.random.default_rng(0).normal(size=(2, 2 * RATE + 123)).astype(np.float32)
    out = separate_track(model, mix, segment_s=0.5, overlap_s=0.1)
    assert out.shape == (4, 2, 2 * RATE + 123) and np.isfinite(out).all()


def test_museval_sdr_matches_the_v4_definition_per_frame():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(2, 2, 3 * RATE))
    gains = np.array([0.3, 1.0])[:, None, None]
    estimates = references + gains * rng.normal(size=references.shape)
    sdr = track_sdr(references, estimates, RATE)
    assert sdr.shape == (2, 3)
    for j in range(2):
        np.testing.assert_allclose(sdr[j], _hand_sdr(references[j], estimates[j], RATE), atol=1e-4)


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
    import pandas as pd

    summary = summarize(pd.DataFrame(rows))
    assert [summary[s] for s in SOURCES] == [3.0, 3.0, 5.0, 6.0]
    assert summary["all"] == 4.0  # median of the 11 non-NaN values
    assert summary["excluded_bass"] == 1 and summary["excluded_drums"] == 0
    table = compare_runs({"without remix": summary, "with remix": {**summary, "bass": 3.5}})
    assert list(table.columns) == ["drums", "bass", "other", "vocals", "all"]
    assert list(table.index) == ["without remix", "with remix"]
    assert table.loc["with remix", "bass"] == 3.5
