"""``remix-pairs``: remixed training pairs for single-target separators, as track folders.

A pair of source ``s`` is what the remix step of training feeds (paper section 4;
:mod:`pipeline.separation.remix`): ``m``, a crop of an excerpt of ``D_s`` (the music with ``s``
silent), and ``t``, the isolated stem ``s`` of a window of a labelled track; the input is
``m + t``, the target ``t``.  Each pair is drawn by the training code's own rule, from one
generator and in its order: first the stem window (:meth:`StemWindows.sample
<pipeline.separation.data.StemWindows.sample>`: a track weighted by its window positions, a
start uniformly), then the crop (:meth:`RemixSampler.sample
<pipeline.separation.remix.RemixSampler.sample>`: an excerpt uniformly, a start uniformly,
zero-padded when the excerpt is shorter), both ``window`` samples at ``sample_rate`` Hz with
``channels`` channels; no gain and no augmentation, as in the remix step.

Written under :mod:`pipeline.exports.trackfolders`' layout, ``<out>/<s>/<split>/pair-<n>/``:
``mixture.wav`` (``m + t``), ``<s>.wav`` (``t``) and ``no_<s>.wav`` (``m``, the sum of the other
sources).  ``pairs`` maps a split of the labelled stem set (``train``, ``valid``) to the number
of pairs per source; the stems come from that split and the excerpts from the catalog files that
:func:`~pipeline.exports.trackfolders.split_of` puts in it, so valid pairs share no song with
train pairs on either side.

Draw ``k`` of (split, source) uses ``numpy.random.default_rng([seed, split, source, k])``
(split and source as indices): a pair depends on the options and its draw only, so a resumed
export writes the very pairs an uninterrupted one would.  A draw is skipped, with its reason in
the manifest, when its stem is inaudible in the pair (``V_s = 10 log10(||t||^2 / ||m + t||^2)
<= min_target_db``, the "perceptually zero" level by default; a silent stem window gives
``-inf``) or when its excerpt or stem cannot be decoded; draws go on until a source has its
pairs, or ``ATTEMPTS_PER_PAIR`` draws per pair were spent.  A source without excerpts in a
split gets no pairs there, and the summary says why.  Memory: one pair at a time, and the
labelled split in memory only when it takes at most ``STEM_MEMORY_LIMIT`` bytes (else read
window by window).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.audio.common import AudioError
from pipeline.corpora.stemset import fingerprint, list_tracks
from pipeline.exports.trackfolders import (
    MIXTURE,
    SPLITS,
    VALID_FRACTION,
    TrackManifest,
    excerpts_key,
    rest_name,
    split_of,
    track_dir,
    track_folder,
    write_wav,
)
from pipeline.mining.datasets import DatasetRun
from pipeline.progress import progress_bar
from pipeline.separation.config import TrainConfig
from pipeline.separation.data import StemWindows
from pipeline.separation.remix import RemixSampler
from pipeline.sources import INAUDIBLE_DB, SOURCES
from pipeline.storage.journal import Progress

PAIR_SECONDS = TrainConfig.window_s  # the training window's seconds: the remix step's crops are this long
SAMPLE_RATE = 44_100  # Hz: open-unmix's and Demucs' rate
CHANNELS = 2
PAIRS = 100  # train pairs per source asked by default (the command line's and the Export task's)
VALID_PAIRS = 10  # valid pairs per source asked by default
ATTEMPTS_PER_PAIR = 4  # draws allowed per pair asked, skipped ones included
STEM_MEMORY_LIMIT = 256 << 20  # bytes of float32 stems held in memory; a larger split is read lazily


def target_level_db(target: np.ndarray, mixture: np.ndarray) -> float:
    """``10 log10(||target||^2 / ||mixture||^2)`` in dB; ``-inf`` for a silent target."""
    energy = float(np.sum(np.square(target, dtype=np.float64)))
    total = float(np.sum(np.square(mixture, dtype=np.float64)))
    return 10.0 * math.log10(energy / total) if energy > 0 and total > 0 else -math.inf


def pair_name(number: int) -> str:
    return f"pair-{number:06d}"


def export_remix_pairs(run: DatasetRun | str | os.PathLike, records: list[dict[str, Any]], out: Path,
                       stem_root: str | os.PathLike, pairs: Mapping[str, int], seed: int = 0,
                       pair_seconds: float = PAIR_SECONDS, sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS,
                       valid_fraction: float = VALID_FRACTION, min_target_db: float = INAUDIBLE_DB,
                       progress: Progress | None = None,
                       show_progress: bool = True) -> tuple[list[str], dict[str, Any], list[str]]:
    """Write the pairs; return ``(files, counts, notes)``: the manifest files, ``pairs``,
    ``skipped``, ``pairs_<s>_<split>`` and ``skipped_<s>_<split>``, and one line per source and
    split that got fewer pairs than asked, saying why."""
    pairs = {split: int(n) for split, n in pairs.items() if int(n) != 0}
    if not pairs:
        raise ValueError("remix-pairs needs a number of pairs for at least one split (pairs > 0)")
    if set(pairs) - set(SPLITS) or min(pairs.values()) < 0:
        raise ValueError(f"pairs maps splits {SPLITS} to counts >= 0, got {pairs}")
    if pair_seconds <= 0 or sample_rate < 1 or channels < 1:
        raise ValueError(f"pair_seconds, sample_rate and channels must be > 0, got {pair_seconds} s, "
                         f"{sample_rate} Hz, {channels}")
    split_of("", valid_fraction, seed)  # checks valid_fraction
    window = round(pair_seconds * sample_rate)
    stem_sets = {split: list_tracks(stem_root, split) for split in pairs}
    for split, tracks in stem_sets.items():
        if not tracks:
            raise ValueError(f"the stem set {stem_root} has no {split} tracks: no stems for {split} pairs")
    options = {"format": "remix-pairs", "pairs": pairs, "seed": seed, "pair_seconds": pair_seconds,
               "sample_rate": sample_rate, "channels": channels, "valid_fraction": valid_fraction,
               "min_target_db": min_target_db, "excerpts": excerpts_key(records),
               "stem_set": {split: fingerprint(tracks) for split, tracks in stem_sets.items()}}
    excerpts = RemixSampler(run, sample_rate, channels, window)
    every_excerpt = excerpts.excerpts
    splits = {i: rows["catalog_checksum"].map(lambda c: split_of(c, valid_fraction, seed))
              for i, rows in every_excerpt.items()}
    jobs = [(split, i) for split in pairs for i in range(len(SOURCES))]
    asked = sum(pairs[split] for split, i in jobs if (splits.get(i, pd.Series(dtype=str)) == split).any())
    bar = progress_bar(total=asked, desc="remix-pairs", unit="pair", disable=not show_progress)
    notes: list[str] = []
    with TrackManifest(out, options) as manifest:
        for split in pairs:
            stems = StemWindows(stem_root, split, window, sample_rate, channels,
                                 memory_limit_bytes=STEM_MEMORY_LIMIT)
            excerpts.excerpts = {i: rows[(splits[i] == split).to_numpy()].reset_index(drop=True)
                                 for i, rows in every_excerpt.items() if (splits[i] == split).any()}
            for i, source in enumerate(SOURCES):
                if i not in excerpts.excerpts:
                    notes.append(f"{source}/{split}: no pairs: D_{source} has no excerpt in the {split} split")
                    continue
                written = draws = 0
                while written < pairs[split] and draws < ATTEMPTS_PER_PAIR * pairs[split]:
                    key = f"{split}/{source}/{draws:07d}"
                    line = manifest.lines.get(key)
                    if line is None:
                        line = _draw(stems, excerpts, i, split, draws, written, seed, min_target_db, out,
                                     sample_rate, channels)
                        line["key"] = key
                        manifest.append(line)
                    draws += 1
                    if line["status"] == "written":
                        written += 1
                        bar.update()
                        if progress:
                            progress(bar.n, asked, f"{source}/{split}/{line['track']}")
                if written < pairs[split]:
                    notes.append(f"{source}/{split}: {written} of {pairs[split]} pairs: {draws} draws, "
                                 f"{draws - written} skipped (see manifest.jsonl)")
        lines = list(manifest.lines.values())
    bar.close()
    counts: dict[str, Any] = {"pairs": sum(ln["status"] == "written" for ln in lines),
                              "skipped": sum(ln["status"] == "skipped" for ln in lines)}
    for source in SOURCES:
        for split in SPLITS:
            mine = [ln for ln in lines if (ln["source"], ln["split"]) == (source, split)]
            counts[f"pairs_{source}_{split}"] = sum(ln["status"] == "written" for ln in mine)
            counts[f"skipped_{source}_{split}"] = sum(ln["status"] == "skipped" for ln in mine)
    return ["manifest.jsonl", "export-options.json"], counts, notes


def _draw(stems: StemWindows, excerpts: RemixSampler, source_index: int, split: str, draw: int,
          number: int, seed: int, min_target_db: float, out: Path, sample_rate: int,
          channels: int) -> dict[str, Any]:
    """Draw ``draw`` of (split, source): write it as pair ``number``, or say why it is skipped."""
    source = SOURCES[source_index]
    line: dict[str, Any] = {"source": source, "split": split, "draw": draw}
    rng = np.random.default_rng([seed, SPLITS.index(split), source_index, draw])
    # The draws of StemWindows.sample and RemixSampler.sample, in their order, with their origins kept.
    [(track_index, stem_start)] = stems.draw_spans(rng, 1)
    line.update(stem_track=stems.track_names[track_index], stem_start=stem_start)
    try:
        target = stems.read(track_index, stem_start, stems.window)[source_index]  # (channels, window)
    except AudioError as err:
        return {**line, "status": "skipped", "reason": f"stem not decodable: {err}"}
    line["stem_split"] = split
    [row] = excerpts.pick_rows(source_index, 1, rng)
    line["excerpt_id"] = str(row["excerpt_id"])
    try:
        rest, excerpt_start, excerpt_rate = excerpts.crop_with_origin(row, rng)  # (channels, window)
    except AudioError as err:
        return {**line, "status": "skipped", "reason": f"excerpt not decodable: {err}"}
    line.update(excerpt_start=excerpt_start, excerpt_rate=excerpt_rate)  # samples at the excerpt's rate
    mixture = rest + target
    level = target_level_db(target, mixture)
    line["target_db"] = round(level, 3) if math.isfinite(level) else None
    if level <= min_target_db:
        shown = "silent" if not math.isfinite(level) else f"{level:.1f} dB <= {min_target_db:g} dB"
        return {**line, "status": "skipped", "reason": f"stem {source} inaudible in the pair ({shown})"}
    track = track_dir(source, split, pair_name(number))
    with track_folder(out / track) as tmp:
        write_wav(tmp / f"{MIXTURE}.wav", mixture, sample_rate)
        write_wav(tmp / f"{source}.wav", target, sample_rate)
        write_wav(tmp / f"{rest_name(source)}.wav", rest, sample_rate)
    return {**line, "status": "written", "track": track, "pair": number, "num_samples": int(mixture.shape[-1]),
            "sample_rate": sample_rate, "channels": channels,
            "files": [f"{MIXTURE}.wav", f"{source}.wav", f"{rest_name(source)}.wav"]}
