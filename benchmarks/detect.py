"""Detector inference throughput per numeric path, side by side: seconds of audio per wall second.

    .venv/bin/python benchmarks/detect.py [--seconds 300] [--threads 2] [--widths 0.125 1.0]
                                          [--repeats 2] [--checkpoint detector.pt]
                                          [--features shard.npy] [--smoke]

Random features of ``--seconds`` of audio (scored in one ``classifiers.inference.predict``
call, after a warm-up on 400 frames) through a randomly initialised detector of each width
(and the trained ``--checkpoint``, if given), once per numeric path
(``classifiers.inference.NUMERIC_PATHS``) in alternation, ``--repeats`` times; each path's
figure is its fastest repeat.  Also printed: the speed-up of each path over float32 and the
largest difference of its probabilities from float32's.  On a loaded machine the absolute
speeds drift; the ratio, measured in alternation, is the figure to read.  Random features are
far from anything a trained detector has seen, and its BiLSTM then remembers longer than the
fast path's context (the demo's detector: 0.03 apart); ``--features`` (a feature shard, e.g.
``data/features/<key>/test.npy``) scores real features instead: its tracks end to end, cut or
repeated to ``--seconds``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import figure, parse_args

SMOKE = {"seconds": 8.0, "threads": 1, "widths": [0.125], "repeats": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="audio length scored per width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the fastest counts")
    parser.add_argument("--checkpoint", default=None, help="also a trained detector.pt")
    parser.add_argument("--features", default=None, help="a feature shard .npy to score instead of random features")
    args = parse_args(parser, SMOKE)
    torch.set_num_threads(args.threads)

    from classifiers.detector import DetectorConfig, SilentSourceDetector, load_checkpoint
    from classifiers.inference import NUMERIC_PATHS, for_numeric_path, predict
    from pipeline.features.scattering import n_feature_frames, scattering_layout
    from pipeline.features.store import FeatureShard
    from pipeline.sources import FEATURE_RATE

    layout = scattering_layout()
    frames = n_feature_frames(int(args.seconds * FEATURE_RATE))
    if args.features:
        shard = FeatureShard(args.features)
        tracks = np.concatenate([shard.get(track) for track in shard.track_ids], axis=-1)
        features = np.tile(tracks, (1, 1, -(-frames // tracks.shape[-1])))[..., :frames]
        source = f"the {len(shard)} tracks of {args.features}"
    else:
        features = np.random.default_rng(0).uniform(0, 8, (layout.channels, layout.freqs, frames)).astype(np.float32)
        source = "random features"
    print(f"audio: {args.seconds:.0f} s ({frames} scattering frames) of {source}, {args.threads} threads")
    models = []
    for width in args.widths:
        torch.manual_seed(0)
        model = SilentSourceDetector(DetectorConfig(width=width)).eval()
        # features of the layout's range: normalised like a trained detector's input
        model.set_normalisation(features.mean(axis=2, keepdims=True), features.std(axis=2, keepdims=True) + 1e-3)
        models.append((f"width {width:g}", model))
    if args.checkpoint:
        models.append(("trained " + str(args.checkpoint), load_checkpoint(args.checkpoint)[0]))
    for label, model in models:
        params = sum(p.numel() for p in model.parameters())
        variants = {path: for_numeric_path(model, path) for path in NUMERIC_PATHS}
        walls = {path: np.inf for path in NUMERIC_PATHS}
        probs = {}
        for variant in variants.values():
            predict(variant, features[..., :400])  # warm-up
        for _ in range(max(1, args.repeats)):
            for path, variant in variants.items():
                started = time.perf_counter()
                probs[path] = predict(variant, features)
                walls[path] = min(walls[path], time.perf_counter() - started)
        for path in NUMERIC_PATHS:
            figure(f"detector inference, {label}, {path}", args.seconds / walls[path], "s of audio per s",
                   f"{params:,d} parameters; {walls[path]:.2f} s, {probs[path].shape[0]} frames")
        for path in NUMERIC_PATHS[1:]:
            figure(f"detector speed-up, {label}, {path} over float32", walls["float32"] / walls[path], "x",
                   digits=2)
            figure(f"detector probability difference, {label}, {path} vs float32",
                   float(np.abs(probs[path] - probs["float32"]).max()), "max abs", digits=6)


if __name__ == "__main__":
    main()
