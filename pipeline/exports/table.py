"""``csv``: ``excerpts.csv``, one row per excerpt: ``audio_file`` (absolute), ``num_samples``,
``duration`` and every index column."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pipeline.storage.journal import Progress
from pipeline.storage.outputs import atomic_path


def export_csv(records: list[dict[str, Any]], out: Path, columns: list[str],
               progress: Progress | None = None) -> list[str]:
    with atomic_path(out / "excerpts.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["audio_file", "num_samples", "duration", *columns])
        writer.writeheader()
        writer.writerows({k: r[k] for k in writer.fieldnames} for r in records)
    if progress:
        progress(len(records), len(records), "excerpts.csv")
    return ["excerpts.csv"]
