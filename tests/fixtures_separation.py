"""Checks shared by the separator tests: a run killed after an epoch, and the input rules every
registered model keeps.

:func:`killed_after_epoch` runs a training (separator, encoder pretraining or detector) once with
the checkpoint writer (:func:`pipeline.storage.checkpoints.save`) raising ``KeyboardInterrupt``
right after the ``checkpoint.pt`` of epoch ``epoch`` is written, as a killed process would leave
it; the test then runs it again to resume.
:func:`assert_rejects_bad_shapes` checks that a stereo model refuses an input of invalid length
or of the wrong channel count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from pipeline.storage import checkpoints

# Tiny configs of every registered model at 8 kHz (seconds of audio train them in seconds).
TINY = {"demucs": dict(channels=4, depth=3, lstm_layers=1, sample_rate=8000),
        "demucs2019": dict(channels=4, depth=3, lstm_layers=1, sample_rate=8000),
        "tasnet": dict(filters=16, hidden=16, lstm_layers=1, frame=40, hop=20, sample_rate=8000)}


def killed_after_epoch(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object], epoch: int = 2) -> None:
    """Call ``run()`` with the checkpoint writer raising ``KeyboardInterrupt`` once it has written the
    ``checkpoint.pt`` of epoch ``epoch``; the writer is restored after."""
    original = checkpoints.save

    def save_then_die(path, payload):
        original(path, payload)
        if Path(path).name == checkpoints.CHECKPOINT and payload.get("epoch") == epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch}")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run()


def assert_rejects_bad_shapes(model: torch.nn.Module, length: int) -> None:
    """``model`` (stereo in, ``length`` a valid length) refuses ``length + 1`` samples and mono."""
    with pytest.raises(ValueError, match="valid length"):
        model(torch.randn(1, 2, length + 1))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 1, length))
