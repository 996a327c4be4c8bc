"""Detector inference throughput: seconds of audio per wall second, demo and paper widths.

    .venv/bin/python benchmarks/detect.py [--seconds 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="audio length scored per width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from classifiers.detector import DetectorConfig, SilentSourceDetector
    from classifiers.inference import predict
    from pipeline.features.scattering import n_feature_frames, scattering_layout
    from pipeline.sources import FEATURE_RATE

    layout = scattering_layout()
    frames = n_feature_frames(int(args.seconds * FEATURE_RATE))
    features = np.random.default_rng(0).uniform(0, 8, (layout.channels, layout.freqs, frames)).astype(np.float32)
    print(f"audio: {args.seconds:.0f} s ({frames} scattering frames), {args.threads} threads")
    for width in args.widths:
        model = SilentSourceDetector(DetectorConfig(width=width)).eval()
        params = sum(p.numel() for p in model.parameters())
        predict(model, features[..., :400])  # warm-up
        started = time.perf_counter()
        probs = predict(model, features)
        wall = time.perf_counter() - started
        print(f"width {width:<6g} {params:>11,d} parameters: {args.seconds / wall:8.1f} s of audio per s "
              f"({wall:.2f} s, {probs.shape[0]} frames)")


if __name__ == "__main__":
    main()
