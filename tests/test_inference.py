"""The detector's numeric paths: the fast CPU path gives float32's probabilities within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifiers.detector import DetectorConfig, SilentSourceDetector
from classifiers.inference import (
    NUMERIC_PATHS,
    PASS_BATCH,
    PASS_MAX_KEEP,
    PASS_MIN_FRAMES,
    PASS_SEAM_TOLERANCE,
    _parallel_sequence,
    default_numeric_path,
    for_numeric_path,
    numeric_path_of,
    pass_bounds,
    pass_keep,
    predict,
)

TOLERANCE = 1e-3


def _model(width: float, features: np.ndarray, seed: int = 0) -> SilentSourceDetector:
    torch.manual_seed(seed)
    model = SilentSourceDetector(DetectorConfig(width=width)).eval()
    model.set_normalisation(features.mean(axis=2, keepdims=True), features.std(axis=2, keepdims=True) + 1e-3)
    return model


def _features(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 8, (7, 54, frames)).astype(np.float32)
    base[..., frames // 3: frames // 2] *= 0.1  # a quiet stretch: the probabilities move
    return base


@pytest.mark.parametrize("width", [0.0625, 0.125])
def test_fast_path_is_within_tolerance_of_float32(width):
    features = _features(1200)
    model = _model(width, features)
    reference = predict(model, features)
    fast = predict(for_numeric_path(model, "fast"), features)
    assert fast.dtype == np.float32 and fast.shape == reference.shape
    assert np.abs(fast - reference).max() <= TOLERANCE


def test_fast_path_with_parallel_passes_and_a_wide_logit_range():
    # A track long enough for several parallel BiLSTM passes, and a head scaled so that the
    # probabilities spread over (0, 1), not only around 0.5.
    features = _features(4 * (PASS_MIN_FRAMES + 500), seed=1)
    model = _model(0.0625, features, seed=1)
    with torch.no_grad():  # logits of +-4 at most: the head is linear in its last weights
        model.head[-1].bias.zero_()
        probs = predict(model, features)
        model.head[-1].weight.mul_(4.0 / float(np.abs(np.log(probs) - np.log1p(-probs)).max()))
    reference = predict(model, features)  # one whole float32 pass
    assert pass_keep(reference.shape[0]) is not None
    assert reference.min() < 0.1 and reference.max() > 0.9
    schedule = {}
    fast = predict(for_numeric_path(model, "fast"), features, schedule=schedule)
    assert np.abs(fast - reference).max() <= TOLERANCE
    assert schedule["passes"] == PASS_BATCH and not schedule["fell_back"]
    assert schedule["seam"] <= PASS_SEAM_TOLERANCE


def test_passes_that_disagree_at_their_seams_fall_back_to_one_pass():
    # forget gates held open: the cells add up the whole track, so a pass that starts at zero
    # state never catches up with one whole pass
    features = _features(4 * (PASS_MIN_FRAMES + 500), seed=2)
    model = _model(0.0625, features, seed=2)
    hidden = model.lstm.hidden_size
    with torch.no_grad():
        for name, value in model.lstm.named_parameters():
            if name.startswith("bias_ih"):
                value[hidden : 2 * hidden] = 30.0
    reference = predict(model, features)
    fast_model = for_numeric_path(model, "fast")
    with torch.inference_mode():
        passes, seam = _parallel_sequence(fast_model, features, reference.shape[0], pass_keep(reference.shape[0]),
                                          512)
    assert seam > PASS_SEAM_TOLERANCE
    assert np.abs(torch.sigmoid(passes).T.numpy() - reference).max() > TOLERANCE  # what the check prevents
    schedule = {}
    fast = predict(fast_model, features, schedule=schedule)
    assert schedule["fell_back"] and schedule["seam"] == pytest.approx(seam)
    np.testing.assert_array_equal(fast, reference)


def test_pass_keep_splits_long_tracks_into_one_batch_of_passes():
    assert pass_keep(PASS_MIN_FRAMES - 1) is None  # one whole pass, as float32
    for total in (PASS_MIN_FRAMES, 4687, PASS_BATCH * PASS_MAX_KEEP, PASS_BATCH * PASS_MAX_KEEP + 1, 60_000):
        keep = pass_keep(total)
        passes = len(pass_bounds(total, keep, 128))
        assert keep <= PASS_MAX_KEEP
        assert passes == PASS_BATCH if total <= PASS_BATCH * PASS_MAX_KEEP else passes > PASS_BATCH
        assert keep == PASS_MAX_KEEP or passes * keep - total < keep


def test_pass_bounds_cover_every_frame_once_with_context():
    for total, keep, context in [(1491, 256, 128), (100, 256, 128), (513, 256, 128), (10, 3, 2)]:
        bounds = pass_bounds(total, keep, context)
        kept = np.concatenate([np.arange(first, stop) for first, stop, _, _ in bounds])
        np.testing.assert_array_equal(kept, np.arange(total))
        for first, stop, lo, hi in bounds:
            assert hi - lo == min(total, keep + 2 * context)
            assert 0 <= lo <= first and stop <= hi <= total
            assert first - lo >= min(context, first) and hi - stop >= min(context, total - stop)


def test_numeric_paths_leave_the_model_alone():
    features = _features(300)
    model = _model(0.0625, features)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert for_numeric_path(model, "float32") is model
    fast = for_numeric_path(model, "fast")
    assert fast.lstm is model.lstm and fast.frontend is model.frontend  # the same weights, another schedule
    assert (numeric_path_of(fast), numeric_path_of(model)) == ("fast", "float32")
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key])
    assert default_numeric_path() in NUMERIC_PATHS
    with pytest.raises(ValueError, match="numeric_path"):
        for_numeric_path(model, "int4")


def test_detect_stage_counts_the_tracks_in_passes(tmp_path):
    from classifiers.detector import save_checkpoint
    from classifiers.runs import build_detect
    from pipeline.features.store import write_feature_shard

    long, short = _features(4 * PASS_MIN_FRAMES + 40, seed=3), _features(400, seed=4)
    model = _model(0.0625, long, seed=3)
    save_checkpoint(tmp_path / "detector.pt", model, model.config)
    write_feature_shard(tmp_path / "shard.npy", [("long", long), ("short", short)])
    result = build_detect(tmp_path / "detector.pt", tmp_path / "shard.npy", tmp_path / "probs.parquet")
    assert result.counts["numeric_path"] == "fast"
    assert (result.counts["tracks"], result.counts["tracks_in_passes"], result.counts["tracks_fell_back"]) == (2, 1, 0)
