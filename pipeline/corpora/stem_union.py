"""A labelled stem set with more labelled songs: the "supervised + catalog stems" rung.

:func:`build_stem_union` makes a stem set in the MUSDB18-HQ folder layout
(``<out>/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``) whose ``train`` split holds
the train tracks of a stem set and every train track of a second one (for the mining value
ladder: the catalog's true stems, ``pipeline.corpora.demo.write_catalog_stems``), and whose
``valid`` split is the first set's, so that a run trained on it is validated (and stopped)
on the same songs as the runs it is compared with.  Its ``calibration`` folder is empty: the
union trains separators only, so none of its train tracks is carved out for calibration
(:func:`~pipeline.corpora.stemset.list_tracks`).  Files are hard links (copies where the
filesystem cannot link), each made atomically; the tracks of the second set are renamed
``<EXTRA_PREFIX><name>`` so that no name clashes.  Both sets need the folder layout (a
``.stem.mp4`` set has no per-source files to link).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.corpora.stemset import CALIBRATION, StemTrack, list_tracks
from pipeline.sources import SOURCES
from pipeline.storage.outputs import StageResult, link_or_copy

EXTRA_PREFIX = "extra-"
PARTS = ("mixture", *SOURCES)


def _folder_tracks(root: str | os.PathLike, split: str) -> list[StemTrack]:
    tracks = list_tracks(root, split)
    if any(track.folder is None for track in tracks):
        raise ValueError(f"stem set {root} is not in the folder layout (<split>/<track>/<part>.wav): "
                         "its tracks cannot be linked into a union")
    return tracks


def build_stem_union(out: str | os.PathLike, stem_root: str | os.PathLike,
                     extra_root: str | os.PathLike) -> StageResult:
    """Write the union stem set into ``out`` (module docstring): ``train`` = ``stem_root``'s train
    tracks + ``extra_root``'s train tracks (prefixed :data:`EXTRA_PREFIX`), ``valid`` =
    ``stem_root``'s valid tracks.  Track folders of an earlier, different union are removed.

    Counts ``train_tracks``, ``extra_tracks``, ``valid_tracks``; ``ValueError`` when
    ``extra_root`` has no train track.
    """
    out = Path(out)
    extra = _folder_tracks(extra_root, "train")
    if not extra:
        raise ValueError(f"{extra_root} has no train track to add (expected {extra_root}/train/<track>/<part>.wav)")
    plan = {("train", track.name): track for track in _folder_tracks(stem_root, "train")}
    plan.update({("train", EXTRA_PREFIX + track.name): track for track in extra})
    plan.update({("valid", track.name): track for track in _folder_tracks(stem_root, "valid")})
    for split in ("train", "valid"):
        folder = out / split
        for stale in (sorted(folder.iterdir()) if folder.is_dir() else []):
            if stale.is_dir() and (split, stale.name) not in plan:
                shutil.rmtree(stale)
    for (split, name), track in plan.items():
        for part in PARTS:
            link_or_copy(track.path(part), out / split / name / f"{part}.wav")
    (out / CALIBRATION).mkdir(parents=True, exist_ok=True)  # no calibration songs: every train track trains
    counts = {"train_tracks": sum(split == "train" for split, _ in plan) - len(extra), "extra_tracks": len(extra),
              "valid_tracks": sum(split == "valid" for split, _ in plan)}
    return StageResult(counts, [f"labelled set + {len(extra)} extra tracks: {counts['train_tracks']} + "
                                f"{len(extra)} train, {counts['valid_tracks']} valid tracks"])
