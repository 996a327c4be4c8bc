"""D_i in the formats training code reads: one module a format, :func:`build_exports` for all.

Every export is made from one D_i (:class:`pipeline.mining.datasets.DatasetRun`), one record per
excerpt in ``excerpt_id`` order (:mod:`pipeline.exports.records`).  Files are written atomically;
``export.json`` (format, the D_i folder, options, counts, files written) is written last.

Excerpt formats (one item per excerpt, with its provenance):

* ``lhotse`` (:mod:`~pipeline.exports.lhotse`): recordings and cuts manifests.
* ``hf`` (:mod:`~pipeline.exports.hf`): Parquet splits that ``datasets.load_dataset`` reads.
* ``webdataset`` (:mod:`~pipeline.exports.webdataset`): tar shards.
* ``nemo`` (:mod:`~pipeline.exports.nemo`): a NeMo manifest.
* ``csv`` (:mod:`~pipeline.exports.table`): one table.

Track-folder formats (what music-separation trainers read, :mod:`~pipeline.exports.trackfolders`):

* ``musdb`` (:mod:`~pipeline.exports.musdb`): every excerpt as a MUSDB18-HQ-style track with a
  zero stem for its silent source.
* ``remix-pairs`` (:mod:`~pipeline.exports.remix_pairs`): remixed pairs ``(m + t, t)`` drawn by
  the training code's remix rule, from the D_i and a labelled stem set.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from pipeline.exports.records import SHARD_SIZE, export_records
from pipeline.mining.datasets import DatasetRun
from pipeline.sources import SOURCES
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, write_json_atomic

EXCERPT_FORMATS = ("lhotse", "hf", "webdataset", "nemo", "csv")
TRACK_FORMATS = ("musdb", "remix-pairs")
FORMATS = EXCERPT_FORMATS + TRACK_FORMATS
EXPORT_RECORD = "export.json"


def _excerpt_export(run: DatasetRun, records: list[dict[str, Any]], fmt: str, out: Path, progress: Progress | None,
                    shard_size: int = SHARD_SIZE, nemo_reference: str = "excerpt") -> StageResult:
    if fmt == "lhotse":
        from pipeline.exports.lhotse import export_lhotse
        files = export_lhotse(records, out, progress)
    elif fmt == "hf":
        from pipeline.exports.hf import export_hf
        files = export_hf(records, out, shard_size, progress)
    elif fmt == "webdataset":
        from pipeline.exports.webdataset import export_webdataset
        files = export_webdataset(records, out, shard_size, progress)
    elif fmt == "nemo":
        from pipeline.exports.nemo import export_nemo
        files = export_nemo(records, out, nemo_reference, progress)
    else:
        from pipeline.exports.table import export_csv
        files = export_csv(records, out, list(run.index().columns), progress)
    counts: dict[str, Any] = {"format": fmt, "excerpts": len(records)}
    for source in SOURCES:
        rows = [r for r in records if r["source"] == source]
        counts[f"excerpts_{source}"] = len(rows)
        counts[f"seconds_{source}"] = round(sum(r["duration"] for r in rows), 3)
    summary = [f"{fmt}: {len(records)} excerpts in {len(files)} files under {out}"] + [
        f"  {s}: {counts[f'excerpts_{s}']} excerpts, {counts[f'seconds_{s}'] / 60:.1f} min" for s in SOURCES]
    return StageResult(counts, summary, files)


def _track_export(run: DatasetRun, records: list[dict[str, Any]], fmt: str, out: Path, progress: Progress | None,
                  **options: Any) -> StageResult:
    notes: list[str] = []
    if fmt == "musdb":
        from pipeline.exports.musdb import export_musdb
        files, counts = export_musdb(records, out, progress=progress, **options)
        unit, total = "tracks", counts["tracks"]
    else:
        from pipeline.exports.remix_pairs import export_remix_pairs
        files, counts, notes = export_remix_pairs(run, records, out, progress=progress, **options)
        unit, total = "pairs", counts["pairs"]
    counts = {"format": fmt, **counts}
    per_split = [f"  {s}: " + ", ".join(f"{counts[f'{unit}_{s}_{split}']} {split}" for split in ("train", "valid"))
                 for s in SOURCES]
    summary = [f"{fmt}: {total} {unit} ({counts['skipped']} skipped, see manifest.jsonl) under {out}",
               *per_split, *(f"  {note}" for note in notes)]
    return StageResult(counts, summary, files)


def _check_options(fmt: str, function: Any, options: dict[str, Any]) -> None:
    """``ValueError`` for an option that format ``fmt`` (written by ``function``) does not take."""
    taken = set(inspect.signature(function).parameters) - {"run", "records", "fmt", "out", "progress"}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise ValueError(f"format {fmt} takes no option {', '.join(unknown)} (its options: {', '.join(sorted(taken))})")


def build_exports(run: DatasetRun | str | os.PathLike, fmt: str, out: str | os.PathLike,
                  progress: Progress | None = None, **options: Any) -> StageResult:
    """The exports stage (and ``silentmine export``): write ``run``'s D_i in format ``fmt`` (one
    of :data:`FORMATS`) into the folder ``out``.

    ``options`` are the format's: ``shard_size`` (webdataset, hf), ``nemo_reference`` (nemo);
    ``sample_rate``, ``channels``, ``valid_fraction``, ``seed``, ``show_progress`` (musdb, and
    remix-pairs with ``stem_root``, ``pairs``, ``pair_seconds``, ``min_target_db``), see each
    module.  Counts: ``format`` and the format's (``excerpts``, ``excerpts_<s>``, ``seconds_<s>``
    for excerpt formats; ``tracks``/``pairs``, ``skipped`` and per source and split for the
    track formats), with summary lines and the ``files`` written (relative to ``out``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    run = DatasetRun.of(run)
    if not run.index_dir.is_dir():
        raise FileNotFoundError(f"{run.folder} is not a D_i folder (no index/)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = export_records(run)
    if fmt in EXCERPT_FORMATS:
        _check_options(fmt, _excerpt_export, options)
        result = _excerpt_export(run, records, fmt, out, progress, **options)
    else:
        if fmt == "musdb":
            from pipeline.exports.musdb import export_musdb as function
        else:
            from pipeline.exports.remix_pairs import export_remix_pairs as function
        _check_options(fmt, function, options)
        result = _track_export(run, records, fmt, out, progress, **options)
    shown = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in options.items() if k != "show_progress"}
    write_json_atomic(out / EXPORT_RECORD, {"format": fmt, "dataset": str(run.folder.resolve()), "options": shown,
                                            "counts": result.counts, "files": result.files})
    return result
