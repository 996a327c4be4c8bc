"""Time one training step (forward, the model's main loss, backward, clipping, Adam step) of
every registered separator, at its paper's size and at a CPU size, side by side in one run.

Sizes come from the registry (``pipeline.separation.registry``: ``sizes["paper"]`` and
``sizes["cpu"]``); the loss, learning rate and clipping from each model's recipe.  Input: a
batch of ``--batch`` random stereo windows of ``--seconds`` s at the model's rate (44.1 kHz but
where ``--config`` says otherwise; padded to the model's valid length).  Prints the parameter
count and one figure line per model and size: the median time of ``--steps`` steps after
``--warmup`` untimed steps (and min/max in the note).
On a CPU with ``--processes P`` (P > 1), each model and size is also timed in P processes of one
thread each, running at once, as P Luigi workers train P runs: the figure is their steps per
second together over one process's at P threads (``--threads``, default P), measured side by side.

    .venv/bin/python benchmarks/separator_step.py [--models demucs tasnet] [--sizes paper cpu]
        [--config JSON] [--device cpu] [--threads 2] [--processes 2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from _common import figure, parse_args

from pipeline.separation.config import TrainConfig
from pipeline.separation.contract import center_trim
from pipeline.separation.distributed import default_device
from pipeline.separation.losses import LOSSES
from pipeline.separation.registry import build_model, get, make_config, model_names

# --smoke: tiny models (config overrides on top of the "cpu" size), one short step.
SMOKE_CONFIGS = {"demucs": dict(channels=4, depth=3), "demucs2019": dict(channels=4, depth=3),
                 "tasnet": dict(filters=16, hidden=16, lstm_layers=1)}
SMOKE = dict(sizes=["cpu"], batch=1, seconds=0.25, steps=1, warmup=0, processes=2)


def time_steps(name: str, config, batch: int, seconds: float, steps: int, warmup: int,
               device: torch.device) -> tuple[int, int, list[float]]:
    """(parameter count, input length in samples, per-step seconds) of model ``name``."""
    torch.manual_seed(0)
    return step_times(build_model(name, config), TrainConfig.for_model(name, model=config), batch, seconds, steps,
                      warmup, device)


def step_times(model: torch.nn.Module, recipe: TrainConfig, batch: int, seconds: float, steps: int, warmup: int,
               device: torch.device) -> tuple[int, int, list[float]]:
    """(parameter count, input length in samples, per-step seconds) of ``model`` trained under
    ``recipe``'s loss, learning rate and clipping on random windows of ``seconds``."""
    config = model.config
    model = model.to(device)
    loss_fn = LOSSES[recipe.loss].fn
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    generator = torch.Generator().manual_seed(0)
    length = model.valid_length(round(seconds * config.sample_rate))
    sources = torch.randn(batch, config.sources, config.audio_channels, length, generator=generator).to(device) * 0.1
    mix = sources.sum(dim=1)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        estimates = model(mix)
        loss = loss_fn(estimates, center_trim(sources, estimates.shape[-1]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return sum(p.numel() for p in model.parameters()), length, times


def _one_thread_steps(name: str, values: dict, batch: int, seconds: float, steps: int, warmup: int) -> list[float]:
    """Per-step seconds of model ``name`` (config ``values``) on one CPU thread, in this process."""
    torch.set_num_threads(1)
    return time_steps(name, make_config(name, values), batch, seconds, steps, warmup, torch.device("cpu"))[2]


def parallel_gain(name: str, values: dict, args: argparse.Namespace, single: list[float]) -> float:
    """Steps per second of ``args.processes`` one-thread processes at once, over ``single``'s (the
    per-step seconds of one process at ``args.threads`` threads)."""
    with ProcessPoolExecutor(args.processes) as pool:
        futures = [pool.submit(_one_thread_steps, name, values, args.batch, args.seconds, args.steps, args.warmup)
                   for _ in range(args.processes)]
        together = [statistics.median(f.result()) for f in futures]
    return sum(1 / t for t in together) * statistics.median(single)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=model_names(), choices=model_names())
    parser.add_argument("--sizes", nargs="+", default=["paper", "cpu"], choices=["paper", "cpu"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--config", default="{}",
                        help="JSON over each size's model config (e.g. the ablation's TasNet: "
                             "'{\"filters\": 32, \"hidden\": 32, \"lstm_layers\": 2, \"sample_rate\": 16000}')")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: --processes if > 1)")
    parser.add_argument("--processes", type=int, default=1,
                        help="CPU only: also time this many one-thread processes at once against one process")
    args = parse_args(parser, SMOKE, argv)
    if args.processes > 1 and not args.threads:
        args.threads = args.processes
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or default_device())
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch} x {args.seconds} s stereo")
    for name in args.models:
        for size in args.sizes:
            values = {**get(name).sizes[size], **(SMOKE_CONFIGS[name] if args.smoke else {}),
                      **json.loads(args.config)}
            config = make_config(name, values)
            params, length, times = time_steps(name, config, args.batch, args.seconds, args.steps, args.warmup,
                                               device)
            median = statistics.median(times)
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            print(f"{name} {size} ({shown}): {params:,} parameters, input {length} samples")
            figure(f"{name} training step, {size} size", median, "s",
                   f"{params:,} parameters, min {min(times):.3f}, max {max(times):.3f}, {len(times)} steps, "
                   f"{args.batch * args.seconds / median:.2f} s of audio per s", digits=3)
            if args.processes > 1 and device.type == "cpu":
                gain = parallel_gain(name, values, args, times)
                figure(f"{name} training steps, {size} size, {args.processes} one-thread processes against one of "
                       f"{args.threads} threads", gain, "x", "steps per second together, side by side", digits=2)


if __name__ == "__main__":
    main()
