"""Detector recipes the benchmarks train: complete ``[TrainDetector]`` parameters (luigi.cfg's
section is overridden), and the smoke size's overrides.

- ``plain``: the demo's recipe before remixes: the labelled train songs, the paper's optimiser
  (lr 5e-4, batch 64) and labels (-13 dB), width 1/8, 6 epochs.
- ``remix``: the same songs remixed (``classifiers.remix``: 24 remixes of 30 s per epoch, stems
  of different songs, random gains, sources dropped or faded), width 1/16, 4 epochs, lr 2e-3,
  batch 32, -20 dB labels: higher held-out AUC for drums and bass and more audio mined at 95 %
  purity on the demo generator's catalogs (docs/calibration.md, "Its table at the default size").
"""

from __future__ import annotations

PLAIN = {"width": 0.125, "epochs": 6, "patience": 3, "crop_seconds": 5.0, "gain_db": 12.0, "shift_rows": 2,
         "lr": 5e-4, "batch_size": 64, "silent_db": -13.0, "crop_stride_seconds": 0.5, "remix_songs": 0}
RECIPES = {
    "plain": PLAIN,
    "remix": {**PLAIN, "width": 0.0625, "epochs": 4, "patience": 4, "lr": 2e-3, "batch_size": 32, "silent_db": -20.0,
              "remix_songs": 24, "remix_seconds": 30.0, "remix_every": 1},
}
# --smoke: a tiny detector, one epoch of short crops and (for ``remix``) two short remixes.
SMOKE_RECIPE = {"width": 0.0625, "epochs": 1, "patience": 1, "crop_seconds": 2.0, "remix_seconds": 4.0,
                "remix_songs": 2}


def recipe_options(name: str, smoke: bool = False) -> dict:
    """``[TrainDetector]`` parameters of recipe ``name``, shrunk to the smoke size when ``smoke``."""
    recipe = dict(RECIPES[name])
    if smoke:
        recipe.update(SMOKE_RECIPE, remix_songs=SMOKE_RECIPE["remix_songs"] if recipe["remix_songs"] else 0)
    return recipe
