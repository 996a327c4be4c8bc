"""Silent-source detector: shapes and time alignment, checkpoints, inference, training, metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from classifiers.detector import DetectorConfig, SilentSourceDetector, load_checkpoint, n_output_frames, save_checkpoint
from classifiers.inference import predict, probabilities_frame
from classifiers.report import average_precision, detector_report, quality_table, rankdata, roc_auc, spearman
from classifiers.training import (
    DetectorTrainConfig,
    align_labels,
    random_gain,
    random_shift,
    recalibrate_batchnorm,
    train_detector,
)
from pipeline.corpora.labels import labels_frame, relative_volumes
from pipeline.features.scattering import CHUNK_TOLERANCE, extract_features, scattering_layout
from pipeline.mining.schema import PROBABILITY_SCHEMA
from pipeline.sources import HOP_S, n_windows

RATE = 16_000


def _model(width: float = 0.0625, seed: int = 0) -> SilentSourceDetector:
    torch.manual_seed(seed)
    return SilentSourceDetector(DetectorConfig(width=width)).eval()


@pytest.mark.parametrize("frames", [1, 20, 39, 40, 41, 43, 44, 45, 100, 312])
def test_output_has_one_frame_per_complete_window(frames):
    model = _model()
    with torch.no_grad():
        out = model(torch.randn(3, 7, 54, frames))
    expected = max(1, (frames - 40) // 4 + 1)
    assert out.shape == (3, 4, expected) and n_output_frames(frames) == expected


def test_paper_width_matches_appendix_a():
    model = SilentSourceDetector(DetectorConfig())
    convs = [m for m in model.frontend if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (7, 128, (5, 5)), (128, 128, (5, 5)), (128, 256, (1, 1)), (256, 256, (5, 5)), (256, 256, (5, 5)),
        (256, 512, (1, 1)), (512, 1024, (5, 1))]
    assert (model.lstm.hidden_size, model.lstm.num_layers, model.lstm.bidirectional) == (1024, 2, True)
    assert model.lstm.dropout == pytest.approx(0.18)
    assert [(c.in_channels, c.out_channels) for c in model.head if isinstance(c, torch.nn.Conv1d)] == [
        (2048, 1024), (1024, 4)]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 7, 54, 48)).shape == (1, 4, 3)


def test_conv_stack_frame_k_sees_exactly_input_frames_4k_to_4k_plus_36():
    model = _model(width=0.25)
    x = torch.randn(1, 7, 54, 120)
    k = 5
    with torch.no_grad():
        base = model.embed(x)[0, :, k]
        for frame, inside in ((4 * k - 1, False), (4 * k, True), (4 * k + 36, True), (4 * k + 37, False)):
            bumped = x.clone()
            bumped[..., frame] += 50.0
            changed = not torch.equal(model.embed(bumped)[0, :, k], base)
            assert changed == inside, frame


def test_a_stop_falls_on_the_same_frame_in_labels_features_and_detector():
    """A tone that becomes exactly zero at t0 over noise: every grid agrees on where t0 is."""
    rng = np.random.default_rng(0)
    n, stop = 6 * RATE, int(3.3 * RATE)
    t = np.arange(n) / RATE
    tone = (0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    tone[stop:] = 0.0
    drum = (0.02 * rng.standard_normal(n)).astype(np.float32)
    silence = np.zeros(n, dtype=np.float32)
    stems = np.stack([drum, silence, silence, tone])[:, None, :]  # the tone is "vocals"
    volumes = relative_volumes(stems, RATE)
    feats = extract_features(stems.sum(axis=0)[0])
    model = _model()
    probs = predict(model, feats)
    # frame counts agree
    assert probs.shape[0] == volumes.shape[1] == n_windows(n, RATE) == n_output_frames(feats.shape[-1])
    # labels: the first window entirely after t0 is ceil(t0 / 1024 samples)
    first_silent = int(np.argmax(np.isneginf(volumes[3])))
    assert first_silent == math.ceil(stop / 1024)
    assert np.isfinite(volumes[3, first_silent - 1]) and np.all(np.isneginf(volumes[3, first_silent:]))
    # features: the tone's order-1 band falls at scattering frame t0 / 256 (16 ms frames)
    band = int(np.argmin(np.abs(scattering_layout().xi1_hz - 1000.0)))
    j0 = stop // 256
    assert feats[0, band, 4: j0 - 4].min() > feats[0, band, j0 + 8:].max() + 3.0
    # detector frame k reads scattering frames 4k .. 4k + 36: the first whose window lies
    # after t0 is the labels' first silent window
    assert 4 * first_silent * 256 >= stop > 4 * (first_silent - 1) * 256
    # and both tables put frame k at k * 64 ms
    labels_table = labels_frame("t", volumes, HOP_S)
    probs_table = probabilities_frame("t", probs)
    np.testing.assert_array_equal(labels_table["start_s"].to_numpy(), probs_table["start_s"].to_numpy())
    assert probs_table["start_s"][first_silent] == pytest.approx(first_silent * 0.064)


def test_chunked_inference_equals_the_full_sequence():
    model = _model(width=0.125)
    feats = np.random.default_rng(0).normal(3.0, 1.0, (7, 54, 40 + 4 * 200)).astype(np.float32)
    with torch.no_grad():
        full = torch.sigmoid(model(torch.from_numpy(feats)[None]))[0].T.numpy()
    for chunk in (1, 13, 64, 500):
        probs = predict(model, feats, chunk_windows=chunk)
        assert probs.shape == (201, 4) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, full, atol=1e-5)
    assert predict(model, feats[..., :10]).shape == (1, 4)
    assert np.all((probs >= 0) & (probs <= 1))


def test_long_tracks_go_through_the_bilstm_in_passes_with_context():
    model = _model(width=0.125)
    feats = np.random.default_rng(1).normal(3.0, 1.0, (7, 54, 40 + 4 * 1999)).astype(np.float32)
    whole = predict(model, feats, sequence_windows=4000)  # one pass
    passes = predict(model, feats, chunk_windows=97, sequence_windows=300, context_windows=100)
    assert passes.shape == whole.shape == (2000, 4)
    np.testing.assert_allclose(passes, whole, atol=1e-5)
    cut = predict(model, feats, sequence_windows=300, context_windows=0)  # no context: edges differ
    assert np.abs(cut - whole).max() > 10 * np.abs(passes - whole).max()


def test_probabilities_frame_follows_the_schema():
    probs = np.random.default_rng(0).uniform(size=(7, 4)).astype(np.float32)
    frame = probabilities_frame("track", probs)
    table = pa.Table.from_pandas(frame, schema=PROBABILITY_SCHEMA, preserve_index=False)
    assert table.schema.equals(PROBABILITY_SCHEMA)
    assert frame["frame"].tolist() == list(range(7))
    np.testing.assert_allclose(frame["start_s"], np.arange(7) * 0.064)
    np.testing.assert_array_equal(frame[["p_drums", "p_bass", "p_other", "p_vocals"]].to_numpy(), probs)
    with pytest.raises(ValueError):
        probabilities_frame("track", probs[:, :3])


def test_checkpoint_round_trip_keeps_weights_normalisation_and_extra(tmp_path):
    config = DetectorConfig(width=0.0625, dropout=0.1)
    model = SilentSourceDetector(config)
    model.set_normalisation(np.full((7, 54, 1), 2.0), np.full((7, 54, 1), 3.0))
    model.eval()
    path = tmp_path / "detector.pt"
    save_checkpoint(path, model, config, {"seed": 3, "history": [{"epoch": 1, "valid_loss": 0.5}]})
    assert [p.name for p in tmp_path.iterdir()] == ["detector.pt"]
    loaded, loaded_config, extra = load_checkpoint(path)
    assert loaded_config == config and not loaded.training
    assert extra == {"seed": 3, "history": [{"epoch": 1, "valid_loss": 0.5}]}
    assert torch.all(loaded.feature_mean == 2.0) and torch.all(loaded.feature_std == 3.0)
    x = torch.randn(1, 7, 54, 60)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _synthetic_pairs(seed: int, count: int, seconds: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Noise "drums" and a 55 Hz "bass" that each switch off for a random second or two."""
    rng = np.random.default_rng(seed)
    pairs = []
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    for _ in range(count):
        stems = np.zeros((4, 1, n), dtype=np.float32)
        stems[0, 0] = 0.1 * rng.standard_normal(n)
        stems[1, 0] = 0.2 * np.sin(2 * np.pi * 55 * t)
        stems[2, 0] = 0.03 * np.sin(2 * np.pi * 440 * t)
        for source in (0, 1):
            start = rng.uniform(0, seconds - 2)
            stems[source, :, int(start * RATE): int((start + rng.uniform(1, 2)) * RATE)] = 0
        pairs.append((extract_features(stems.sum(0)[0]), relative_volumes(stems, RATE)))
    return pairs


@pytest.fixture(scope="module")
def tiny_sets():
    return _synthetic_pairs(0, 4, 4.0), _synthetic_pairs(1, 2, 4.0)


def test_training_lowers_the_loss_and_is_reproducible(tiny_sets):
    train, valid = tiny_sets
    config = DetectorTrainConfig(epochs=3, batch_size=8, crop_seconds=2.0, crop_stride_seconds=0.5, width=0.0625,
                         patience=5, gain_db=6.0, shift_rows=1)
    model, history = train_detector(train, valid, config, seed=0, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert min(h["valid_loss"] for h in history) < 4 * math.log(2)  # better than p = 0.5 everywhere
    assert not model.training
    # the normalisation was fitted on the training features and lives in the model
    pooled = np.concatenate([f for f, _ in train], axis=-1)
    np.testing.assert_allclose(model.feature_mean[..., 0].numpy(), pooled.mean(-1), rtol=1e-4, atol=1e-5)
    # the best epoch's weights are returned, and a second run with the same seed is identical
    seen = []
    again, history2 = train_detector(train, valid, config, seed=0, progress=False, callback=seen.append)
    assert seen == history2
    assert [h["train_loss"] for h in history2] == [h["train_loss"] for h in history]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_early_stopping_keeps_the_best_epoch(tiny_sets):
    train, valid = tiny_sets
    config = DetectorTrainConfig(epochs=6, batch_size=8, crop_seconds=2.0, crop_stride_seconds=1.0, width=0.0625,
                         patience=1, lr=0.05)  # a huge rate: the valid loss soon stops improving
    model, history = train_detector(train, valid, config, seed=1, progress=False)
    best = min(range(len(history)), key=lambda i: history[i]["valid_loss"])
    assert history[best]["best"]
    assert len(history) == best + 2 or len(history) == config.epochs
    from classifiers.training import _evaluate, _prepare

    assert _evaluate(model, _prepare(valid, config.silent_db), config.crop_windows(), 8) == pytest.approx(
        history[best]["valid_loss"], rel=1e-5)


def test_crop_stride_spaces_an_epochs_crops():
    """Crops start every ``crop_stride_seconds`` (rounded to whole 64 ms windows) and the last
    one ends inside the track; the paper's 0.5 s is 8 windows, 1 s is 16."""
    from classifiers.training import _crops, _Track

    windows = 200
    track = _Track(np.zeros((7, 54, 40 + 4 * (windows - 1)), np.float32), np.zeros((4, windows), np.float32),
                   np.ones(windows, np.float32))
    for seconds, step in ((0.5, 8), (1.0, 16)):
        config = DetectorTrainConfig(crop_stride_seconds=seconds)
        crop = config.crop_windows()
        starts = [start for _, start in _crops([track], crop, config.stride_windows(), None)]
        assert starts[0] == 0 and set(np.diff(starts)) == {step}
        assert starts[-1] + crop <= windows < starts[-1] + step + crop


def test_labels_are_aligned_or_rejected():
    volumes = np.zeros((4, 10), dtype=np.float32)
    aligned, mask = align_labels(volumes, 11)
    assert aligned.shape == (4, 11) and mask.tolist() == [1.0] * 10 + [0.0]
    assert align_labels(volumes, 9)[0].shape == (4, 9)
    with pytest.raises(ValueError, match="same 16 kHz signal"):
        align_labels(volumes, 13)


def test_random_gain_is_a_gain_on_the_scattering_coefficients():
    x = np.random.default_rng(0).normal(0, 0.1, 3 * RATE).astype(np.float32)
    f1 = torch.from_numpy(extract_features(x))[None]
    f2 = torch.from_numpy(extract_features(x * np.float32(10 ** (6 / 20))))[None]

    class Fixed:
        @staticmethod
        def uniform(low, high, size):
            return np.full(size, 6.0)

    np.testing.assert_allclose(random_gain(f1, 6.0, Fixed()).numpy(), f2.numpy(), atol=CHUNK_TOLERANCE)


def test_random_shift_moves_whole_rows_and_keeps_missing_paths_zero():
    present = torch.from_numpy(scattering_layout().present)
    feats = torch.rand(16, 7, 54, 5) * present[None, :, :, None]
    shifted = random_shift(feats, 2, np.random.default_rng(0))
    assert torch.all(shifted[:, ~present] == 0)
    for b in range(16):
        matches = [s for s in range(-2, 3)
                   if torch.equal(shifted[b, 0, max(s, 0):54 + min(s, 0)], feats[b, 0, max(-s, 0):54 - max(s, 0)])]
        assert len(matches) == 1
    assert torch.equal(random_shift(feats, 0, np.random.default_rng(0)), feats)


def test_recalibrated_batchnorm_holds_the_batch_statistics():
    model = _model(width=0.0625)
    batches = [torch.randn(4, 7, 54, 44) * 3 + 1 for _ in range(3)]
    recalibrate_batchnorm(model, batches)
    first = model.frontend[0]
    pooled = torch.cat(batches)
    assert not model.training and first.momentum == 0.1
    torch.testing.assert_close(first.running_mean, pooled.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)


def test_roc_auc_and_average_precision_match_hand_computed_values():
    # 3 of the 4 positive/negative pairs are ordered right; AP = 1/2 * 1 + 1/2 * 2/3
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # ties: a tied pair counts 1/2; a tied threshold group enters at once
    assert roc_auc([0, 1, 1, 0, 1], [0.1, 0.4, 0.4, 0.4, 0.9]) == pytest.approx(5 / 6)
    assert average_precision([0, 1, 1, 0, 1], [0.1, 0.4, 0.4, 0.4, 0.9]) == pytest.approx(1 / 3 + 2 / 3 * 3 / 4)
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5 and average_precision([1, 0], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2])) and math.isnan(average_precision([0, 0], [0.1, 0.2]))
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) vs (1.5, 1.5, 3): r = 1.5 / sqrt(2 * 1.5)
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(1.5 / math.sqrt(3.0))


def test_quality_table_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    volumes = rng.uniform(-40, 0, (4, 500)).astype(np.float32)
    volumes[:, :20] = -np.inf
    probs = 1 / (1 + np.exp((volumes.T + 13) / 3))  # a perfect, monotone detector, (n, 4)
    table = quality_table(probs, volumes.T)
    assert table["source"].tolist() == ["drums", "bass", "other", "vocals"]
    assert np.allclose(table["auc_13"], 1.0) and np.allclose(table["ap_20"], 1.0)
    assert np.allclose(table["spearman_volume"], -1.0) and table["volume_falls"].all()
    np.testing.assert_allclose(table["positive_rate_13"], (volumes <= -13).mean(axis=1))
    # end to end on a model: frames pooled over tracks, PNG written
    feats = rng.normal(3, 1, (7, 54, 40 + 4 * 29)).astype(np.float32)
    report, png = detector_report(_model(), [(feats, volumes[:, :30]), (feats, volumes[:, 30:60])],
                                  tmp_path / "report.png")
    assert isinstance(report, pd.DataFrame) and report["n_frames"].eq(60).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
