"""Checkpoints of every model in the project, and the one epoch loop that writes and resumes them.

A checkpoint is a dict of tensors and plain Python values: :func:`save` writes it atomically
with ``torch.save`` (a killed writer leaves the previous file, never half of a new one) and
:func:`read` loads it on the CPU with ``torch.load(weights_only=True)``, so no file runs code
when it is read; a missing, damaged or foreign file raises :class:`CheckpointError` with its
reason.

What each model's file holds (the layouts, built and checked here; the model classes stay in
their own modules, which rebuild a model from these fields):

============================  ===========================================================
file                          fields
============================  ===========================================================
separator (``best.pt``)       ``format`` 2, ``model_name`` (a registered separator),
                              ``model_config`` (dict), ``model`` (state dict), and what
                              the trainer adds (``epoch``, ``best``, ``train_config``)
encoder (``encoder.pt``)      ``format`` 2, ``model_name``, ``model_config``, ``encoder``
                              (the encoder's state), ``epoch``
detector (``detector.pt``)    ``format`` 1, ``config`` (dict), ``state_dict`` (with the
                              feature normalisation), ``extra`` (plain values)
============================  ===========================================================

Separator files of ``format`` 1 (no ``model_name``) were written before the separators had a
registry, when every separator was a Demucs: they are read as ``demucs``.

Resuming (:func:`train_epochs`): a run that trains by epochs (the separator trainer, the
encoder pretrainer, the detector) keeps everything its next epoch depends on in its
``state_dict()`` (model, optimizers, schedulers, random generators, history), and the loop
writes it to the run's ``checkpoint.pt`` after every epoch; started again, the run loads it
and continues, ending with bit-identical weights on CPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.storage.outputs import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"  # a run's resume state, in its output folder
MODEL_FORMAT = 2  # separator and encoder files; 1: separators before the registry (Demucs only)
DETECTOR_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``str(err)`` says why."""


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and plain values only) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path`` (``torch.load(weights_only=True)``); :class:`CheckpointError`
    when it is missing, damaged, or not a dict of tensors and plain values."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    return payload


def _require(payload: dict[str, Any], names: tuple[str, ...], what: str, path: Any) -> None:
    missing = [name for name in names if name not in payload]
    if missing:
        raise CheckpointError(f"{path} is not a {what} checkpoint: it lacks {', '.join(missing)}")


# ---------------------------------------------------------------------------- separators
def separator_fields(name: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A separator's fields: ``format``, ``model_name``, ``model_config`` (dict), ``model`` (state dict)."""
    return {"format": MODEL_FORMAT, "model_name": name, "model_config": config, "model": state}


def separator_parts(payload: dict[str, Any], path: Any = "checkpoint") -> tuple[str, dict[str, Any], dict]:
    """``(model_name, model_config, state dict)`` of a separator file (``format`` 1 reads as demucs)."""
    _require(payload, ("model_config", "model"), "separator", path)
    name = payload.get("model_name")
    if name is None:
        if int(payload.get("format", 1)) > 1:
            raise CheckpointError(f"{path} is not a separator checkpoint: it has no model_name")
        name = "demucs"
        log.info("separator checkpoint of format 1 (before the registry): reading it as demucs")
    return name, payload["model_config"], payload["model"]


# ---------------------------------------------------------------------------- encoder
def encoder_fields(name: str, config: dict[str, Any], encoder: dict[str, torch.Tensor], epoch: int) -> dict[str, Any]:
    """A pretrained encoder's file: the separator it belongs to (name and config), its state, its epoch."""
    return {"format": MODEL_FORMAT, "model_name": name, "model_config": config, "epoch": epoch, "encoder": encoder}


def encoder_parts(payload: dict[str, Any], path: Any = "encoder") -> tuple[str, dict[str, Any], dict]:
    """``(model_name, model_config, encoder state)`` of an encoder file."""
    _require(payload, ("model_name", "model_config", "encoder"), "pretrained encoder", path)
    return payload["model_name"], payload["model_config"], payload["encoder"]


# ---------------------------------------------------------------------------- detector
def detector_fields(config: dict[str, Any], state: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """A detector's file: its config (dict), state dict (moved to the CPU) and ``extra`` plain values."""
    return {"format": DETECTOR_FORMAT, "config": config,
            "state_dict": {k: v.detach().cpu() for k, v in state.items()}, "extra": dict(extra)}


def detector_parts(payload: dict[str, Any], path: Any = "detector") -> tuple[dict[str, Any], dict, dict[str, Any]]:
    """``(config, state dict, extra)`` of a detector file."""
    if payload.get("format") != DETECTOR_FORMAT:
        raise CheckpointError(f"{path} is not a detector checkpoint of format {DETECTOR_FORMAT}")
    _require(payload, ("config", "state_dict", "extra"), "detector", path)
    return payload["config"], payload["state_dict"], payload["extra"]


# ---------------------------------------------------------------------------- the loop
class ComparableConfig(Protocol):
    """A run's configuration that names the fields in which it differs from another."""

    def changed_fields(self, other: Any) -> list[str]:
        """The fields of ``self`` whose values differ from ``other``'s (empty when none)."""


def require_same_config(config: ComparableConfig, saved: ComparableConfig) -> None:
    """Refuse to resume a run from a checkpoint written under another configuration
    (``ValueError`` naming the changed fields)."""
    changed = config.changed_fields(saved)
    if changed:
        raise ValueError(f"checkpoint was made with a different configuration ({', '.join(changed)}); "
                         "use another out_dir or resume=False")


class EpochRun(Protocol):
    """A run that trains by epochs (what :func:`train_epochs` needs of it)."""

    epoch: int  # epochs done

    def finished(self) -> bool:
        """True once no further epoch should run (epochs reached, stopped early, budget spent)."""

    def train_epoch(self) -> None:
        """Train one epoch, count it in ``epoch`` and write the epoch's own outputs (logs, best model)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on (collective when distributed: every rank calls it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``ValueError`` when it was made under another configuration)."""


def train_epochs(run: EpochRun, path: str | os.PathLike | None, resume: bool = True, write: bool = True) -> None:
    """Train ``run`` until it is finished, writing its checkpoint to ``path`` after every epoch.

    With ``resume`` and a checkpoint at ``path``, the run first continues from it.  ``path=None``:
    no checkpoint (nothing to resume from, nothing written).  ``write=False``: the state is
    still gathered each epoch (a collective call) but not written: the ranks of a distributed
    run other than rank 0.
    """
    path = None if path is None else Path(path)
    if resume and path is not None and path.exists():
        run.load_state_dict(read(path))
        log.info("resumed from %s after epoch %s", path, run.epoch)
    while not run.finished():
        run.train_epoch()
        if path is not None:
            state = run.state_dict()
            if write:
                save(path, state)
