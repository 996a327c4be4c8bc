"""``hf``: a folder that ``datasets.load_dataset(folder)`` reads on a bare machine.

One split per source that has excerpts, declared in ``README.md``'s YAML header, each split
Parquet files ``<source>/part-<n>.parquet`` of ``shard_size`` excerpts with an ``audio`` column
(the FLAC's bytes and name), ``num_samples``, ``duration`` and the provenance (``source`` among
it).  ``audio`` is declared an ``Audio(decode=False)`` feature (in the files' ``huggingface``
schema metadata): ``datasets`` hands out ``{"bytes", "path"}`` and never needs its own audio
decoder (torchcodec, which needs FFmpeg's libraries); the README shows the soundfile decode.
Self-contained: the audio travels inside the Parquet files, so the folder can be copied or
pushed to a hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.exports.records import SHARD_SIZE, provenance
from pipeline.sources import SOURCES
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import atomic_path, write_bytes_atomic

# The audio column's feature: not decoded by datasets (its decoder needs torchcodec and FFmpeg).
HF_FEATURES = {"audio": {"_type": "Audio", "decode": False}}  # the other columns' types: the Arrow schema's
HF_LAYOUT = 2  # enters the export's key: 2 = audio declared with decode=False
HF_ROW_GROUP = 64  # excerpts per Parquet row group (their audio bytes are read together)

README_USAGE = '''```python
import io

import datasets
import soundfile as sf

dataset = datasets.load_dataset({folder!r})  # or the folder's new place, or a hub repository id
row = dataset[{split!r}][0]  # audio: {{"bytes": the FLAC file, "path": "<excerpt_id>.flac"}}
audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32", always_2d=True)
print(row["excerpt_id"], row["source"], audio.shape, rate)  # (samples, channels), Hz
```'''


def hf_readme(splits: list[str], folder: Path) -> str:
    """The dataset card: a YAML header declaring one split per source (``datasets`` reads it)
    and how to load and decode a row."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: \"{split}/*.parquet\""]
    lines += ["---", "", "# D_i: excerpts where one source is silent (silentmine)", "",
              "One split per silent source; `audio` holds the excerpt (FLAC), the other columns its provenance",
              "(catalog file and checksum, offsets, threshold, detector and calibration keys).", "",
              "`audio` is declared `Audio(decode=False)`: rows give the FLAC's bytes, decoded here with soundfile,",
              "so loading needs neither torchcodec nor FFmpeg:", "",
              README_USAGE.format(folder=str(folder.resolve()), split=splits[0]), "",
              "On a machine with torchcodec and FFmpeg's libraries, "
              "`dataset.cast_column(\"audio\", datasets.Audio())` lets datasets decode instead.", ""]
    return "\n".join(lines)


def _hf_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {"audio": [{"bytes": Path(r["audio_file"]).read_bytes(),
                                                "path": f"{r['excerpt_id']}.flac"} for r in rows]}
    for name in ("num_samples", "duration", *provenance(rows[0])):
        columns[name] = [r[name] for r in rows]
    table = pa.table(columns)
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()})


def export_hf(records: list[dict[str, Any]], out: Path, shard_size: int = SHARD_SIZE,
              progress: Progress | None = None) -> list[str]:
    if not records:
        raise ValueError("the D_i has no excerpts: a Hugging Face dataset needs at least one split")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 excerpt, got {shard_size}")
    files, done = [], 0
    splits = [s for s in SOURCES if any(r["source"] == s for r in records)]
    for split in splits:
        rows = [r for r in records if r["source"] == split]
        for first in range(0, len(rows), shard_size):
            name = f"{split}/part-{first // shard_size:05d}.parquet"
            chunk = rows[first:first + shard_size]
            with atomic_path(out / name) as tmp:
                writer = None
                try:
                    for lo in range(0, len(chunk), HF_ROW_GROUP):
                        table = _hf_table(chunk[lo:lo + HF_ROW_GROUP])
                        writer = writer or pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                        done += len(chunk[lo:lo + HF_ROW_GROUP])
                        if progress:
                            progress(done, len(records), chunk[min(lo + HF_ROW_GROUP, len(chunk)) - 1]["excerpt_id"])
                finally:
                    if writer is not None:
                        writer.close()
            files.append(name)
    write_bytes_atomic(out / "README.md", hf_readme(splits, out).encode("utf-8"))
    return [*files, "README.md"]
