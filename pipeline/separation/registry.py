"""The separators by name: their config dataclasses, sizes, training recipes and checkpoints.

=============  =============================================  ===================================
name           model                                          recipe (TrainConfig overrides)
=============  =============================================  ===================================
``demucs``     :class:`~pipeline.separation.demucs.Demucs`,   the Demucs paper: L1, Adam 5e-4 / 5
               the Demucs paper's text (section 3)            every 160 epochs, 4 augmentations
``demucs2019`` :class:`~pipeline.separation.demucs2019.       the same as ``demucs``
               Demucs2019`, the 2019 code exactly
``tasnet``     :class:`~pipeline.separation.tasnet.TasNet`,   the frugal paper: SI-SNR, Adam 1e-3,
               TasNet-BLSTM (frugal paper 2.4)                clip 5, lr / 2 after 3 stale epochs,
                                                              early stop after 10, 20 s, no aug.
=============  =============================================  ===================================

``sizes`` name config overrides: ``paper`` (the size its paper trained) and ``cpu`` (small
enough to train on a laptop), used by the benchmark and the demo.

Checkpoints (``best.pt``, ``checkpoint.pt``) hold the model's name, its config as a dict and its
state dict (:mod:`pipeline.storage.checkpoints`, which writes and reads every model file of the
project); :func:`load_model` rebuilds the model from one.  Checkpoints of the 2019 code itself
(pickled modules) do not load here: take their ``state_dict()`` and constructor arguments and
use :func:`load_2019_state`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.separation.contract import ModelConfig, Separator
from pipeline.separation.demucs import Demucs
from pipeline.separation.demucs2019 import Demucs2019, config_from_2019, convert_state_dict
from pipeline.separation.tasnet import TasNet
from pipeline.storage import checkpoints


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its class (whose ``config_class`` is its config dataclass), the
    :class:`~pipeline.separation.config.TrainConfig` overrides of its paper's recipe, and
    named sizes (config overrides)."""

    model_class: type[Separator]
    recipe: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.model_class.name

    @property
    def config_class(self) -> type:
        return self.model_class.config_class


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` under its model's ``name`` (a name is registered once)."""
    if entry.name in MODELS:
        raise ValueError(f"a model named {entry.name!r} is already registered")
    MODELS[entry.name] = entry
    return entry


def get(name: str) -> ModelEntry:
    """The entry of ``name``; ``ValueError`` naming the registered models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown separator model {name!r}; registered: {sorted(MODELS)}") from None


def model_names() -> list[str]:
    return list(MODELS)


def make_config(name: str, values: ModelConfig | dict[str, Any] | None = None, size: str | None = None):
    """The config of model ``name``: its defaults, then ``sizes[size]``, then ``values`` (a dict of
    fields, or a config instance, which must be of the model's config class)."""
    entry = get(name)
    if isinstance(values, entry.config_class):
        return values
    if values is not None and not isinstance(values, dict):
        raise TypeError(f"{name} needs a {entry.config_class.__name__} or a dict, got {type(values).__name__}")
    if size is not None and size not in entry.sizes:
        raise ValueError(f"{name} has no size {size!r}; sizes: {sorted(entry.sizes)}")
    merged = {**(entry.sizes[size] if size else {}), **dict(values or {})}
    return entry.config_class.from_dict(merged)


def build_model(name: str, config: ModelConfig | dict[str, Any] | None = None) -> Separator:
    """A freshly initialised model ``name`` (draws from torch's global generator)."""
    return get(name).model_class(make_config(name, config))


def checkpoint_fields(model: Separator) -> dict[str, Any]:
    """``format``, ``model_name``, ``model_config`` (dict) and ``model`` (state dict) of a checkpoint."""
    return checkpoints.separator_fields(model.name, model.config.to_dict(), model.state_dict())


def model_from_checkpoint(state: dict[str, Any], path: Any = "checkpoint") -> Separator:
    """Rebuild the model a checkpoint dict describes (:func:`pipeline.storage.checkpoints.separator_parts`)."""
    name, config, weights = checkpoints.separator_parts(state, path)
    model = build_model(name, config)
    model.load_state_dict(weights)
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Separator:
    """The model saved in the checkpoint at ``path`` (``best.pt``, ``checkpoint.pt`` or any file of
    :func:`checkpoint_fields`); :class:`~pipeline.storage.checkpoints.CheckpointError` when it is
    missing, damaged or not a separator's."""
    return model_from_checkpoint(checkpoints.read(path, map_location), path).to(map_location)


def load_2019_state(state_dict: dict[str, torch.Tensor], kwargs: dict[str, Any],
                    sample_rate: int = 44_100) -> Demucs2019:
    """A :class:`~pipeline.separation.demucs2019.Demucs2019` from the 2019 code's ``state_dict()``
    and constructor arguments."""
    model = Demucs2019(config_from_2019(kwargs, sample_rate))
    model.load_state_dict(convert_state_dict(state_dict))
    return model


_DEMUCS_RECIPE: dict[str, Any] = {}  # TrainConfig's defaults are the Demucs paper's

register(ModelEntry(Demucs, recipe=_DEMUCS_RECIPE,
                    sizes={"paper": dict(channels=48, depth=6), "cpu": dict(channels=16, depth=5)}))
register(ModelEntry(Demucs2019, recipe=_DEMUCS_RECIPE,
                    sizes={"paper": dict(channels=100, depth=6), "cpu": dict(channels=16, depth=5)}))
register(ModelEntry(TasNet, recipe=dict(
    loss="si_snr", lr=1e-3, grad_clip=5.0, lr_schedule="plateau", lr_decay=2.0, lr_patience=3,
    early_stop_patience=10, window_s=20.0, epoch_hop_s=None, max_shift_s=0.0, flip_sign=False,
    flip_channels=False, shuffle_sources=False),
    sizes={"paper": dict(filters=500, lstm_layers=4, hidden=500),
           "cpu": dict(filters=64, lstm_layers=2, hidden=64)}))
