"""``musdb``: each excerpt of D_i as a MUSDB18-HQ-style track (:mod:`pipeline.exports.trackfolders`).

An excerpt ``m`` of ``D_s`` becomes ``<out>/<s>/<split>/<excerpt_id>/``:

- ``mixture.wav``: the excerpt, resampled to ``sample_rate`` Hz with ``channels`` channels;
- ``<s>.wav``: zeros, the silent source (the detector's claim, not a measurement);
- ``no_<s>.wav``: the sum of the other sources, which is the mixture itself (a hard link to it).

The other sources are not known one by one: no file is written for them, and the manifest line
declares them ``unknown`` (``stems``: ``{"<s>": "silent", "no_<s>": "mixture", others:
"unknown"}``), next to the excerpt's provenance.  ``split``: ``valid`` for the excerpts of about
``valid_fraction`` of the catalog files (:func:`~pipeline.exports.trackfolders.split_of`),
``train`` for the rest.  An excerpt whose file cannot be decoded is skipped with its reason.
Audio streams through in blocks: memory does not grow with an excerpt's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import rejects
from pipeline.audio import io as audio_io
from pipeline.exports.records import provenance
from pipeline.exports.trackfolders import (
    MIXTURE,
    VALID_FRACTION,
    TrackManifest,
    excerpts_key,
    link_or_copy,
    open_wav,
    rest_name,
    split_of,
    track_dir,
    track_folder,
)
from pipeline.progress import progress_bar
from pipeline.sources import SOURCES
from pipeline.storage.journal import Progress

SAMPLE_RATE = 44_100  # Hz of the written tracks: MUSDB18-HQ's, and open-unmix's and Demucs' default
CHANNELS = 2  # MUSDB18-HQ's; mono excerpts are duplicated


def stem_roles(source: str) -> dict[str, str]:
    """What a track of ``D_source`` knows of each stem: ``silent``, ``mixture`` or ``unknown``."""
    roles = {s: "unknown" for s in SOURCES}
    roles[source] = "silent"
    roles[rest_name(source)] = "mixture"
    return roles


def _write_excerpt(record: dict[str, Any], folder: Path, sample_rate: int, channels: int) -> int:
    """Stream one excerpt into ``folder``'s three files; return its samples at ``sample_rate``."""
    source, written = record["source"], 0
    with track_folder(folder) as tmp:
        mixture, silent = tmp / f"{MIXTURE}.wav", tmp / f"{source}.wav"
        with open_wav(mixture, sample_rate, channels) as mix, open_wav(silent, sample_rate, channels) as zero, \
                audio_io.open_stream(record["audio_file"], sample_rate=sample_rate) as blocks:
            for block in blocks:
                block = audio_io.match_channels(block, channels)
                mix.write(np.ascontiguousarray(block.T))
                zero.write(np.zeros((block.shape[1], channels), dtype=np.float32))
                written += block.shape[1]
        if written == 0:
            raise audio_io.AudioError(f"no samples left at {sample_rate} Hz", kind=rejects.NO_SAMPLES)
        link_or_copy(mixture, tmp / f"{rest_name(source)}.wav")
    return written


def export_musdb(records: list[dict[str, Any]], out: Path, sample_rate: int = SAMPLE_RATE,
                 channels: int = CHANNELS, valid_fraction: float = VALID_FRACTION, seed: int = 0,
                 progress: Progress | None = None, show_progress: bool = True) -> tuple[list[str], dict[str, Any]]:
    """Write every excerpt of ``records`` as a track; return ``(files, counts)``: the manifest
    files, and ``tracks``, ``skipped``, ``tracks_<s>_<split>`` and ``seconds_<s>_<split>``."""
    if sample_rate < 1 or channels < 1:
        raise ValueError(f"sample_rate and channels must be >= 1, got {sample_rate} Hz, {channels}")
    split_of("", valid_fraction, seed)  # checks valid_fraction
    options = {"format": "musdb", "sample_rate": sample_rate, "channels": channels,
               "valid_fraction": valid_fraction, "seed": seed, "excerpts": excerpts_key(records)}
    bar = progress_bar(total=len(records), desc="musdb", unit="excerpt", disable=not show_progress)
    with TrackManifest(out, options) as manifest:
        for done, record in enumerate(records, start=1):
            key = record["excerpt_id"]
            if key not in manifest:
                source = record["source"]
                split = split_of(record["catalog_checksum"], valid_fraction, seed)
                line = {"key": key, "excerpt_id": key, "source": source, "split": split,
                        "stems": stem_roles(source), "provenance": provenance(record)}
                try:
                    samples = _write_excerpt(record, out / track_dir(source, split, key), sample_rate, channels)
                except audio_io.AudioError as err:
                    line.update(status="skipped", reason=f"excerpt not decodable: {err}")
                else:
                    line.update(status="written", track=track_dir(source, split, key), num_samples=samples,
                                sample_rate=sample_rate, channels=channels,
                                files=[f"{MIXTURE}.wav", f"{source}.wav", f"{rest_name(source)}.wav"])
                manifest.append(line)
            bar.update()
            if progress:
                progress(done, len(records), key)
        lines = list(manifest.lines.values())
    bar.close()
    counts: dict[str, Any] = {"tracks": sum(ln["status"] == "written" for ln in lines),
                              "skipped": sum(ln["status"] == "skipped" for ln in lines)}
    for source in SOURCES:
        for split in ("train", "valid"):
            rows = [ln for ln in lines if ln["status"] == "written" and (ln["source"], ln["split"]) == (source, split)]
            counts[f"tracks_{source}_{split}"] = len(rows)
            counts[f"seconds_{source}_{split}"] = round(sum(ln["num_samples"] for ln in rows) / sample_rate, 3)
    return ["manifest.jsonl", "export-options.json"], counts
