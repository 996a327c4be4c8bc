"""Training any registered separator: the entry points (a function, the pipeline stage, ``torchrun``).

:func:`train_separator` builds a run's parts and trains it: the model ``config.model_name``
of :mod:`pipeline.separation.registry` (initial weights from ``config.seed``), windows of the
stem set's train and valid splits (:mod:`pipeline.separation.data`), the parts of its scheme
from their inputs (:mod:`pipeline.separation.schemes`: the D_i of an Extract run, a catalog
scan's tracks, a pretrained encoder), and the trainer that takes them
(:mod:`pipeline.separation.trainer`).  What a run is: :mod:`pipeline.separation.config`.

Outputs in ``out_dir`` (rank 0 only, each written atomically):

- ``checkpoint.pt`` after every epoch: model, optimizers, learning-rate schedules, every
  random generator's state (of every rank), the counts and the history; a run started again
  with ``resume=True`` continues from it and ends with bit-identical weights on CPU
  (:func:`pipeline.storage.checkpoints.train_epochs`);
- ``best.pt``: the model of the epoch with the lowest validation loss (the main loss on fixed
  windows of the ``valid`` split; without a valid split, the lowest training loss);
- ``history.csv`` / ``history.json`` (one row per epoch, with ``main_steps``, the running
  totals ``updates`` / ``examples`` and each part's columns) and ``losses.png``;
- ``summary.json``: the best epoch, whether it stopped early, the parts' inputs (D_i sizes,
  critics, encoder) and the compute spent: ``main_steps`` and ``main_examples``, ``updates``
  and ``examples`` (every separator step and example), each part's extra steps and examples
  (``remix_steps``, ``critic_steps``, ``pretrain_steps``, ...; 0 where absent), the
  ``budget`` mode and whether the budget was spent.

Checkpoints hold only tensors and plain Python values (``torch.load(weights_only=True)`` reads
them); :func:`pipeline.separation.registry.load_model` reads ``best.pt`` and ``checkpoint.pt``.
Distributed runs: see :mod:`pipeline.separation.distributed`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.separation import distributed, registry, schemes
from pipeline.separation.config import TrainConfig
from pipeline.separation.data import StemWindows
from pipeline.separation.trainer import SeparatorTrainer, Windows
from pipeline.storage.outputs import StageResult

log = logging.getLogger(__name__)


def make_trainer(
    config: TrainConfig,
    stem_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    datasets: str | os.PathLike | None = None,
    catalog_tracks: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
) -> SeparatorTrainer:
    """A :class:`SeparatorTrainer` for ``config`` with its parts built (module docstring).

    ``datasets``: an extraction run holding the D_i index (``None``: no remix step);
    ``catalog_tracks``: a catalog scan's ``tracks.parquet`` (the adversarial scheme's unlabelled
    mixtures); ``encoder``: an ``encoder.pt`` (the contrastive scheme's initial encoder); each is
    required by its scheme and ignored otherwise.  ``device=None``: ``cuda`` when available.
    """
    ctx = distributed.setup(device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = registry.build_model(config.model_name, config.model).to(ctx.device)
    windows = Windows.of(model, config)
    rate, channels = config.model.sample_rate, config.model.audio_channels
    data = dict(sample_rate=rate, audio_channels=channels, lazy=config.lazy,
                memory_limit_bytes=config.memory_limit_bytes)
    train_data = StemWindows(stem_root, "train", windows.input + windows.shift, **data)
    try:
        valid_data: StemWindows | None = StemWindows(stem_root, "valid", windows.input, **data)
    except ValueError:
        valid_data = None
        log.warning("stem set %s has no valid split: best.pt follows the training loss", stem_root)
    parts = schemes.build(config, rate, channels, windows.input, datasets=datasets, catalog_tracks=catalog_tracks,
                          encoder=encoder)
    return SeparatorTrainer(config, model, train_data, valid_data, parts, out_dir, ctx, progress)


def train_separator(
    config: TrainConfig,
    stem_root: str | os.PathLike,
    dataset_run_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    catalog_tracks: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Train a separator (see the module docstring) on ``stem_root`` into ``out_dir``, with the D_i
    of ``dataset_run_dir``; returns the per-epoch history.  ``catalog_tracks`` and ``encoder``:
    the adversarial and contrastive schemes' inputs (:func:`make_trainer`)."""
    return make_trainer(config, stem_root, out_dir, device, progress, datasets=dataset_run_dir,
                        catalog_tracks=catalog_tracks, encoder=encoder).run(resume)


def build_separator(
    config: TrainConfig,
    stem_root: str | os.PathLike,
    dataset_run_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    catalog_tracks: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
) -> StageResult:
    """The separator stage: :func:`train_separator`, resumed from ``out_dir``'s checkpoint if
    there is one; counts ``model``, ``scheme``, ``epochs``, ``seed``, the compute spent
    (``main_steps``, ``updates``, ``examples``, ``remix_steps``, ``critic_steps``,
    ``pretrain_steps``) and the last epoch's losses."""
    history = train_separator(config, stem_root, dataset_run_dir, out_dir, resume=True,
                              catalog_tracks=catalog_tracks, encoder=encoder)
    summary = json.loads((Path(out_dir) / "summary.json").read_text())
    last = history[-1] if history else {}
    return StageResult({
        "model": config.model_name,
        "scheme": config.scheme,
        "epochs": len(history),
        "seed": config.seed,
        **{name: summary[name] for name in ("main_steps", "updates", "examples", "remix_steps", "critic_steps",
                                            "pretrain_steps")},
        "final_train_loss": last.get("train_loss"),
        "final_valid_loss": last.get("valid_loss"),
    })


def main(argv: list[str] | None = None) -> int:
    """Command line for ``torchrun`` (one process per GPU): train one separator into ``--out``.

    ``torchrun --nproc_per_node 4 -m pipeline.separation.training --stem-root S --datasets D --out O``
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.separation.training", description=main.__doc__)
    parser.add_argument("--stem-root", required=True, help="stem set (MUSDB18-HQ layout or .stem.mp4 folder)")
    parser.add_argument("--datasets", default=None, help="an Extract run folder (D_i); omit for no remix")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs); resumed if it holds one")
    parser.add_argument("--model", default="demucs", choices=registry.model_names(), help="registered model")
    parser.add_argument(
        "--config",
        default="{}",
        help="JSON of TrainConfig fields over the model's recipe, e.g. '{\"epochs\": 400}'; "
        '"model" takes the model\'s config fields',
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--catalog-tracks", default=None, help="a catalog scan's tracks.parquet (adversarial scheme)")
    parser.add_argument("--encoder", default=None, help="a pretrained encoder.pt (contrastive scheme)")
    args = parser.parse_args(argv)
    config = TrainConfig.for_model(args.model, **json.loads(args.config))
    try:
        train_separator(
            config,
            args.stem_root,
            args.datasets,
            args.out,
            resume=True,
            device=args.device,
            catalog_tracks=args.catalog_tracks,
            encoder=args.encoder,
        )
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
