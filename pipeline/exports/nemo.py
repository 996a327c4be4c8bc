"""``nemo``: ``manifest.jsonl``, one line per excerpt: ``audio_filepath``, ``duration``, the
provenance; with ``reference="catalog"`` the lines point into the catalog files instead, with
``offset`` = ``start_s`` (for catalogs that must not be copied)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.exports.records import provenance, write_jsonl
from pipeline.storage.journal import Progress

NEMO_REFERENCES = ("excerpt", "catalog")


def nemo_line(record: dict[str, Any], reference: str = "excerpt") -> dict[str, Any]:
    """One NeMo manifest line: ``audio_filepath``, ``duration`` (and ``offset`` into the catalog
    file with ``reference="catalog"``), then the provenance."""
    if reference == "excerpt":
        where = {"audio_filepath": record["audio_file"], "duration": record["duration"]}
    elif reference == "catalog":
        where = {"audio_filepath": record["catalog_path"], "offset": float(record["start_s"]),
                 "duration": record["duration"]}
    else:
        raise ValueError(f"nemo reference must be one of {NEMO_REFERENCES}, got {reference!r}")
    return {**provenance(record), **where}


def export_nemo(records: list[dict[str, Any]], out: Path, reference: str = "excerpt",
                progress: Progress | None = None) -> list[str]:
    write_jsonl(out / "manifest.jsonl", [nemo_line(r, reference) for r in records])
    if progress:
        progress(len(records), len(records), "manifest.jsonl")
    return ["manifest.jsonl"]
