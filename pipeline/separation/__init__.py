"""Separators (a registry of models by name: Demucs, Demucs as published in 2019, TasNet-BLSTM),
their losses, training (with the remix step), augmentations and evaluation."""
