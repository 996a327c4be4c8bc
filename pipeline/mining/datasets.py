"""The D_i datasets of one extraction run, as a whole.

Shards write their parts into one run folder (:mod:`pipeline.mining.extraction`); once every shard
of the current catalog scan is done, :func:`finalize_run` gathers the rejects of the earlier
stages beside the extraction's own, removes the parts and audio of shards that are no longer
in the catalog (a changed or removed file), and counts what the run holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.mining.schema import REJECTS_SCHEMA, read_index, read_rejects
from pipeline.sources import SOURCES
from pipeline.storage.outputs import write_parquet_atomic

SCAN_REJECTS = "part-scan.parquet"
STAGE_ORDER = ("scan", "features", "extract")  # the stages that reject files, in pipeline order

# Kinds of reject, read from the wording of the reasons that pipeline.corpora.catalog, pipeline.audio.io,
# pipeline.features.scattering and pipeline.mining.extraction write (lower-cased phrases; first match wins).
# A reason that matches none is counted as "other", so the kinds always add up to the total.
REJECT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("file name not UTF-8", ("not valid utf-8",)),
    ("unreadable", ("permission denied", "not readable", "cannot be read", "does not exist")),
    ("not a regular file", ("not a regular file",)),
    ("duplicate", ("same content as",)),
    ("empty", ("is empty", "(0 bytes)")),
    ("truncated or corrupt", ("truncated", "corrupt", "could not decode")),
    ("no audio stream", ("no audio stream",)),
    ("not audio", ("not an audio file", "no decoder", "not a format")),
    ("NaN or Inf audio", ("nan or inf samples", "not finite", "overflow")),
    ("no samples", ("no samples",)),
    ("too short", ("shorter than",)),
    ("too many channels", ("channels: flac",)),
    ("changed since scan", ("changed since",)),
    ("detector output", ("probabilities", "detector frames")),
)


def reject_kind(reason: str) -> str:
    """The kind of a reject (a short label from ``REJECT_KINDS``, else ``"other"``) from its reason."""
    text = str(reason).lower()
    for kind, phrases in REJECT_KINDS:
        if any(phrase in text for phrase in phrases):
            return kind
    return "other"


def rejects_summary(rejects: pd.DataFrame, examples: int = 1) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Counts of ``rejects`` (REJECTS_SCHEMA rows) by stage and by kind, and summary lines.

    Lines: the total with its split by stage (pipeline order), then one line per kind (most
    frequent first) with ``examples`` file names and reasons.
    """
    stages = rejects["stage"].astype(str).value_counts()
    by_stage = {s: int(stages[s]) for s in [*STAGE_ORDER, *sorted(set(stages.index) - set(STAGE_ORDER))]
                if s in stages.index}
    kinds = rejects["reason"].map(reject_kind)
    counted = kinds.value_counts()
    by_kind = {k: int(counted[k]) for k in sorted(counted.index, key=lambda k: (-counted[k], k))}
    if not len(rejects):
        return by_stage, by_kind, ["rejects: none"]
    lines = [f"rejects: {len(rejects)} files ({', '.join(f'{s} {n}' for s, n in by_stage.items())})"]
    for kind, count in by_kind.items():
        rows = rejects[kinds == kind].head(examples)
        shown = "; ".join(f"{Path(str(r.path)).name} [{r.stage}]: {r.reason}" for r in rows.itertuples())
        lines.append(f"  {kind}: {count}" + (f" (e.g. {shown}{', ...' if count > examples else ''})" if shown else ""))
    return by_stage, by_kind, lines


def _rejects_table(frame: pd.DataFrame) -> pa.Table:
    frame = frame.reindex(columns=REJECTS_SCHEMA.names).fillna("").astype(str)
    return pa.Table.from_pandas(frame, schema=REJECTS_SCHEMA, preserve_index=False)


def finalize_run(run_dir: str | os.PathLike, shard_keys: list[str], scan_rejects: pd.DataFrame,
                 feature_rejects: dict[str, pd.DataFrame]) -> dict:
    """Make ``run_dir`` hold exactly the current shards' D_i and every reject; return counts.

    ``feature_rejects`` maps shard key -> that shard's rejects from the features stage.  The
    counts hold ``rejects`` (total), ``rejects_<stage>``, ``rejects_by_kind`` ({kind: n}, see
    :func:`reject_kind`) and ``summary``: lines for people, excerpts per source, then the
    rejects by stage and by kind with an example of each.
    """
    run_dir = Path(run_dir)
    write_parquet_atomic(_rejects_table(scan_rejects), run_dir / "rejects" / SCAN_REJECTS)
    for key, frame in feature_rejects.items():
        write_parquet_atomic(_rejects_table(frame), run_dir / "rejects" / f"part-features-{key}.parquet")
    current = {f"part-{k}.parquet" for k in shard_keys} | {f"part-features-{k}.parquet" for k in shard_keys}
    current.add(SCAN_REJECTS)
    stale = [p for p in (run_dir / "index").glob("source=*/part-*.parquet") if p.name not in current]
    stale += [p for p in (run_dir / "rejects").glob("part-*.parquet") if p.name not in current]
    for path in stale:
        path.unlink()
    index = read_index(run_dir / "index")
    removed_audio = _remove_unindexed_audio(run_dir, set(index["audio_path"])) if stale else 0
    rejects = read_rejects(run_dir)
    counts = {"shards": len(shard_keys), "excerpts": len(index), "rejects": len(rejects),
              "stale_parts_removed": len(stale), "stale_audio_removed": removed_audio}
    for source in SOURCES:
        rows = index[index["source"] == source]
        counts[f"excerpts_{source}"] = len(rows)
        counts[f"hours_{source}"] = round(float(rows["duration_s"].sum()) / 3600, 4)
    by_stage, by_kind, reject_lines = rejects_summary(rejects)
    for stage, count in by_stage.items():
        counts[f"rejects_{stage}"] = count
    counts["rejects_by_kind"] = by_kind
    counts["summary"] = [f"{s}: {counts[f'excerpts_{s}']} excerpts, {counts[f'hours_{s}'] * 60:.1f} min"
                         for s in SOURCES] + reject_lines
    return counts


def _remove_unindexed_audio(run_dir: Path, indexed: set[str]) -> int:
    removed = 0
    for path in (run_dir / "audio").rglob("*.flac"):
        if path.relative_to(run_dir).as_posix() not in indexed:
            path.unlink()
            removed += 1
    return removed
