"""TasNet's decoder, side by side: the transposed convolution against ``TasNet.decode``'s matrix
product and half-frame overlap-add (``pipeline/separation/tasnet.py``), in whole training steps.

For each size (``ablation``: the model of ``benchmarks/remix_ablation.py``, 16 kHz, batch 8 x 3 s,
one thread, as each of its two Luigi workers trains; ``paper``: the frugal paper's TasNet at
44.1 kHz), the two decoders are timed in alternating repeats of ``--steps`` training steps
(forward, SI-SNR, backward, clipping, Adam) from the same weights, after ``--warmup`` untimed
steps.  Prints the median step of each, their ratio, and the largest difference between the two
decoders' outputs and weight gradients (relative to the largest value), so that the speed is
shown to come with the same function.

    .venv/bin/python benchmarks/tasnet_decoder.py [--sizes ablation paper] [--repeats 3] [--steps 5]
        [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import figure, parse_args
from separator_step import step_times

from pipeline.separation.config import TrainConfig
from pipeline.separation.losses import LOSSES
from pipeline.separation.registry import get, make_config
from pipeline.separation.tasnet import TasNet

# name -> (model config over the registry's paper size, batch, seconds)
SIZES = {
    "ablation": (dict(filters=32, hidden=32, lstm_layers=2, consistency=True, sample_rate=16_000), 8, 3.0),
    "paper": ({}, 4, 2.0),
}
SMOKE = dict(sizes=["ablation"], repeats=1, steps=1, warmup=0, smoke_seconds=0.25)


class TransposedConvolutionTasNet(TasNet):
    """TasNet whose decoder is ``nn.ConvTranspose1d`` itself (the reference)."""

    def decode(self, masked: torch.Tensor) -> torch.Tensor:
        return self.decoder(masked)


def differences(config, batch: int, seconds: float) -> tuple[float, float]:
    """Largest |difference| between the two decoders' outputs and weight gradients on one batch
    of random windows, each over the largest |value| of the reference."""
    torch.manual_seed(0)
    model = TasNet(config)
    reference = TransposedConvolutionTasNet(config)
    reference.load_state_dict(model.state_dict())
    length = model.valid_length(round(seconds * config.sample_rate))
    sources = torch.randn(batch, config.sources, config.audio_channels, length) * 0.1
    mix = sources.sum(dim=1)
    loss_fn = LOSSES["si_snr"].fn
    results = []
    for net in (model, reference):
        estimates = net(mix)
        loss_fn(estimates, sources).backward()
        results.append((estimates.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])))
    (out, grad), (out_ref, grad_ref) = results
    return (float((out - out_ref).abs().max() / out_ref.abs().max()),
            float((grad - grad_ref).abs().max() / grad_ref.abs().max()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of each decoder")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE, argv)
    torch.set_num_threads(args.threads)
    recipe = TrainConfig.for_model("tasnet")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    for size in args.sizes:
        overrides, batch, seconds = SIZES[size]
        seconds = args.smoke_seconds or seconds
        config = make_config("tasnet", {**get("tasnet").sizes["paper"], **overrides})
        times = {"transposed convolution": [], "matrix product + overlap-add": []}
        for _ in range(args.repeats):
            for label, cls in (("transposed convolution", TransposedConvolutionTasNet),
                               ("matrix product + overlap-add", TasNet)):
                torch.manual_seed(0)
                params, length, steps = step_times(cls(config), recipe, batch, seconds, args.steps, args.warmup,
                                                   torch.device("cpu"))
                times[label].append(statistics.median(steps))
        reference, decode = (statistics.median(t) for t in times.values())
        output_diff, gradient_diff = differences(config, min(batch, 2), seconds)
        print(f"{size}: filters {config.filters}, hidden {config.hidden}, {config.lstm_layers} BiLSTM layers, "
              f"{config.sample_rate} Hz, batch {batch} x {seconds:g} s ({length} samples), {params:,} parameters; "
              f"per repeat: " + "; ".join(f"{label} " + ", ".join(f"{t:.3f}" for t in ts)
                                          for label, ts in times.items()))
        figure(f"{size} size, training step, transposed convolution", reference, "s",
               f"median of {args.repeats} repeats of {args.steps} steps", digits=3)
        figure(f"{size} size, training step, matrix product + overlap-add", decode, "s",
               f"median of {args.repeats} repeats of {args.steps} steps", digits=3)
        figure(f"{size} size, transposed convolution / matrix product + overlap-add", reference / decode, "x",
               "step time ratio, measured side by side", digits=2)
        figure(f"{size} size, largest output difference", 1e6 * output_diff, "ppm of the largest output",
               f"weight gradients: {1e6 * gradient_diff:.3f} ppm of the largest", digits=3)


if __name__ == "__main__":
    main()
