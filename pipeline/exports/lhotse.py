"""``lhotse``: ``recordings.jsonl.gz`` (one Recording per excerpt file) and ``cuts.jsonl.gz`` (one
MonoCut, or MultiCut for several channels, per excerpt, covering the whole file, with one
supervision whose ``custom.silent_source`` names the silent source; provenance in the cut's
``custom``).  Read with ``lhotse.CutSet.from_file``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.exports.records import provenance, write_jsonl_gz
from pipeline.storage.journal import Progress


def lhotse_items(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(recording, cut)`` dicts of one excerpt, as lhotse serialises them."""
    channels = list(range(int(record["channels"])))
    channel: int | list[int] = channels[0] if len(channels) == 1 else channels
    rid = record["excerpt_id"]
    recording = {"id": rid, "sources": [{"type": "file", "channels": channels, "source": record["audio_file"]}],
                 "sampling_rate": int(record["sample_rate"]), "num_samples": record["num_samples"],
                 "duration": record["duration"], "channel_ids": channels}
    supervision = {"id": f"{rid}-silent", "recording_id": rid, "start": 0.0, "duration": record["duration"],
                   "channel": channel, "custom": {"silent_source": record["source"]}}
    cut = {"id": rid, "start": 0.0, "duration": record["duration"], "channel": channel,
           "supervisions": [supervision], "recording": recording, "custom": provenance(record),
           "type": "MonoCut" if len(channels) == 1 else "MultiCut"}
    return recording, cut


def export_lhotse(records: list[dict[str, Any]], out: Path, progress: Progress | None = None) -> list[str]:
    items = [lhotse_items(r) for r in records]
    write_jsonl_gz(out / "recordings.jsonl.gz", (recording for recording, _ in items))
    write_jsonl_gz(out / "cuts.jsonl.gz", (cut for _, cut in items))
    if progress:
        progress(len(records), len(records), "cuts.jsonl.gz")
    return ["recordings.jsonl.gz", "cuts.jsonl.gz"]
