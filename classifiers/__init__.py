"""The silent-source detector: model and checkpoints (``detector``), training (``training``),
per-frame probabilities (``inference``) and quality report on labelled tracks (``report``)."""
