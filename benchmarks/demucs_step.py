"""Time one Demucs training step (forward, L1 loss, backward, Adam step).

Sizes: ``paper`` (C_1 = 48, L = 6, the paper's model) and ``cpu`` (C_1 = 16, L = 5, a model
small enough to train on a laptop).  Input: a batch of ``--batch`` random stereo windows of
``--seconds`` s at 44.1 kHz (padded to the model's valid length).  Prints the parameter count
and the median (and min/max) time of ``--steps`` steps after ``--warmup`` untimed steps.

    .venv/bin/python benchmarks/demucs_step.py [--sizes paper cpu] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.distributed import default_device
from pipeline.separation.remix import l1_loss

SIZES = {"paper": dict(channels=48, depth=6), "cpu": dict(channels=16, depth=5)}


def time_steps(config: DemucsConfig, batch: int, seconds: float, steps: int, warmup: int,
               device: torch.device) -> tuple[int, int, list[float]]:
    """(parameter count, input length in samples, per-step seconds)."""
    torch.manual_seed(0)
    model = Demucs(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    length = model.valid_length(round(seconds * config.sample_rate))
    sources = torch.randn(batch, config.sources, config.audio_channels, length, device=device) * 0.1
    mix = sources.sum(dim=1)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = l1_loss(model(mix), sources)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return sum(p.numel() for p in model.parameters()), length, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or default_device())
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch} x {args.seconds} s stereo at 44.1 kHz")
    for name in args.sizes:
        config = DemucsConfig(**SIZES[name])
        params, length, times = time_steps(config, args.batch, args.seconds, args.steps, args.warmup, device)
        median = statistics.median(times)
        print(f"{name:6s} C1={config.channels:3d} L={config.depth}  params {params:,}  input {length} samples  "
              f"step median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}, {len(times)} steps)  "
              f"{args.batch * args.seconds / median:.2f} s of audio per s")


if __name__ == "__main__":
    main()
