"""Separators, their training (with the remix step), augmentations and evaluation."""
