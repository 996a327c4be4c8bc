"""Checks shared by the separator tests: a run killed after an epoch, and the input rules every
registered model keeps.

:func:`killed_after_epoch` runs a training (or pretraining) once with its checkpoint writer
raising ``KeyboardInterrupt`` right after the checkpoint of epoch ``epoch`` is written, as a
killed process would leave it; the test then runs it again to resume.
:func:`assert_rejects_bad_shapes` checks that a stereo model refuses an input of invalid length
or of the wrong channel count.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch


def killed_after_epoch(monkeypatch: pytest.MonkeyPatch, owner: type, writer: str, run: Callable[[], object],
                       epoch: int = 2) -> None:
    """Call ``run()`` with ``owner.<writer>`` (the method that saves the checkpoint) raising
    ``KeyboardInterrupt`` once it has saved epoch ``epoch``; the writer is restored after."""
    original = getattr(owner, writer)

    def save_then_die(self):
        original(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch}")

    with monkeypatch.context() as patch:
        patch.setattr(owner, writer, save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run()


def assert_rejects_bad_shapes(model: torch.nn.Module, length: int) -> None:
    """``model`` (stereo in, ``length`` a valid length) refuses ``length + 1`` samples and mono."""
    with pytest.raises(ValueError, match="valid length"):
        model(torch.randn(1, 2, length + 1))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 1, length))
