"""A training run's history files: one row per epoch in ``history.csv`` and ``history.json``, and
its loss curves in ``losses.png`` (each written atomically, by rank 0 only)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.separation.losses import LOSSES
from pipeline.storage.outputs import write_bytes_atomic, write_json_atomic, write_png_atomic


def json_value(value: Any) -> Any:
    """``value`` for a JSON file: None for a non-finite float."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write(rows: list[dict[str, Any]], out_dir: str | os.PathLike,
          plot: Callable[[pd.DataFrame, Path], None]) -> None:
    """``history.csv``, ``history.json`` (NaN as null) and ``losses.png`` (``plot(frame, path)``) in ``out_dir``."""
    out_dir = Path(out_dir)
    frame = pd.DataFrame(rows)
    write_bytes_atomic(out_dir / "history.csv", frame.to_csv(index=False).encode())
    write_json_atomic(out_dir / "history.json", [{k: json_value(v) for k, v in row.items()} for row in rows])
    plot(frame, out_dir / "losses.png")


def plot_losses(history: pd.DataFrame, path: str | os.PathLike, loss_label: str = LOSSES["l1"].label) -> None:
    """Plot train (main), remix and valid losses per epoch into a PNG at ``path`` (log scale when
    every value is positive; the remix loss is L1 whatever ``loss_label`` says of the others)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for column, label in (("train_loss", "main step (train)"), ("remix_loss", "remix step"), ("valid_loss", "valid")):
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(loss_label)
    values = history[[c for c in ("train_loss", "remix_loss", "valid_loss") if c in history]].to_numpy(float)
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_png_atomic(fig, path)


def plot_triplet_loss(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """The encoder pretraining's triplet loss per epoch into a PNG at ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if len(history):
        ax.plot(history["epoch"], history["triplet_loss"], marker=".", label="triplet margin loss (train)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("triplet margin loss (L2, margin 1)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_png_atomic(fig, path)
