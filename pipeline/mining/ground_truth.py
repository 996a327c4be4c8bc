"""How right an extraction was, measured against a catalog whose stems are known (the demo catalog).

The truth table (``catalog_truth.parquet``) has one row per grid window of each catalog file:
``file`` (posix path relative to the catalog root), ``window``, ``start_s`` and ``V_<source>``
in dB.  The index is the D_i index (``pipeline.mining.schema.INDEX_SCHEMA``).  Per source:

* **Precision side.**  A truth window counts as *inside* the excerpts when its whole span
  ``[start_s, start_s + WINDOW_S)`` lies inside the union of the excerpts of the same source and
  file (1e-6 s tolerance); each such window has weight 1.  Windows share the detector's grid, so
  these are the detector windows the excerpts were built from.  ``fraction_silent`` is the share
  of inside windows with ``V_i <= silent_db`` (-20 dB), ``fraction_inaudible`` the share with
  ``V_i <= inaudible_db`` (-30 dB), ``v95_db`` the 95th percentile (inverted CDF, no
  interpolation) of ``V_i`` over inside windows.  ``-inf`` counts as silent.
* **Recall side.**  A *truly silent run* is a run of truth windows with ``V_i <= inaudible_db``
  kept by the extraction's duration rule (``pipeline.mining.extraction.select_runs``, ``min_seconds``;
  a file's length is taken as the end of its last window).  It is *recovered* when the union of
  the excerpts of the same source and file overlaps at least half of its span in seconds.

Excerpts whose file is not under ``catalog_root`` or has no truth rows are counted in
``n_excerpts_without_truth`` and take no part in the fractions.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from pipeline.mining.calibration import inverted_cdf_quantile
from pipeline.mining.extraction import MIN_SECONDS, select_runs
from pipeline.sources import SOURCES, WINDOW_S

SILENT_DB = -20.0  # dB: the calibration target
INAUDIBLE_DB = -30.0  # dB: "perceptually zero" (paper section 4.1)
RECOVERED_OVERLAP = 0.5  # fraction of a true run that excerpts must cover
_TOLERANCE_S = 1e-6

MEASURE_COLUMNS = ("source", "n_excerpts", "extracted_seconds", "n_excerpts_without_truth", "n_windows_inside",
                   "fraction_silent", "fraction_inaudible", "v95_db", "n_true_runs", "n_recovered", "recall")


def relative_file(catalog_path: str, catalog_root: str | os.PathLike) -> str | None:
    """``catalog_path`` relative to ``catalog_root`` (posix, symlinks resolved), or None if outside."""
    rel = os.path.relpath(os.path.realpath(catalog_path), os.path.realpath(catalog_root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return rel.replace(os.sep, "/")


def merge_intervals(intervals: np.ndarray) -> np.ndarray:
    """Union of ``[start, end)`` intervals ``(k, 2)`` as sorted disjoint intervals ``(m, 2)``."""
    intervals = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    if intervals.shape[0] == 0:
        return intervals
    intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
    reach = np.maximum.accumulate(intervals[:, 1])
    new_group = np.append(True, intervals[1:, 0] > reach[:-1] + _TOLERANCE_S)
    group = np.cumsum(new_group) - 1
    starts = intervals[new_group, 0]
    ends = np.zeros(starts.size)
    np.maximum.at(ends, group, intervals[:, 1])
    return np.stack([starts, ends], axis=1)


def windows_inside(window_starts: np.ndarray, union: np.ndarray, window_s: float = WINDOW_S) -> np.ndarray:
    """Bool per window: ``[start, start + window_s)`` lies inside one interval of ``union`` (disjoint, sorted)."""
    window_starts = np.asarray(window_starts, dtype=np.float64)
    if union.shape[0] == 0:
        return np.zeros(window_starts.shape, dtype=bool)
    slot = np.searchsorted(union[:, 0], window_starts + _TOLERANCE_S, side="right") - 1
    valid = slot >= 0
    slot = np.maximum(slot, 0)
    return valid & (window_starts + window_s <= union[slot, 1] + _TOLERANCE_S)


def covered_seconds(spans: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Seconds of each span ``(k, 2)`` covered by the disjoint intervals ``union`` ``(m, 2)``."""
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    if spans.shape[0] == 0 or union.shape[0] == 0:
        return np.zeros(spans.shape[0])
    lo = np.maximum(spans[:, None, 0], union[None, :, 0])
    hi = np.minimum(spans[:, None, 1], union[None, :, 1])
    return np.clip(hi - lo, 0.0, None).sum(axis=1)


def measure_extraction(
    index: pd.DataFrame,
    truth: pd.DataFrame,
    catalog_root: str | os.PathLike,
    silent_db: float = SILENT_DB,
    inaudible_db: float = INAUDIBLE_DB,
    min_seconds: float = MIN_SECONDS,
) -> pd.DataFrame:
    """One row per source (:data:`MEASURE_COLUMNS`): what the excerpts in ``index`` got right.

    ``index``: D_i index rows (needs ``source, catalog_path, start_s, end_s, duration_s``);
    ``truth``: ``file, window, start_s, V_<source>``.  See the module docstring for the rules.
    """
    relative = [relative_file(str(p), catalog_root) for p in index["catalog_path"]]
    truth_by_file = {str(name): group.sort_values("window", kind="stable")
                     for name, group in truth.groupby("file", sort=True)}
    for name, windows in truth_by_file.items():
        if not np.array_equal(windows["window"].to_numpy(np.int64), np.arange(len(windows))):
            raise ValueError(f"truth windows of {name!r} are not exactly 0..{len(windows) - 1}")
    excerpts = pd.DataFrame({"source": index["source"].astype(str).to_numpy(),
                             "file": pd.Series(relative, dtype=object),
                             "start_s": index["start_s"].to_numpy(np.float64),
                             "end_s": index["end_s"].to_numpy(np.float64),
                             "duration_s": index["duration_s"].to_numpy(np.float64)})
    excerpts["known"] = excerpts["file"].isin(list(truth_by_file))
    unions = {key: merge_intervals(group[["start_s", "end_s"]].to_numpy())
              for key, group in excerpts[excerpts["known"]].groupby(["source", "file"], sort=False)}
    rows = []
    for source in SOURCES:
        mine = excerpts[excerpts["source"] == source]
        inside_volumes, n_runs, n_recovered = [], 0, 0
        for name, windows in truth_by_file.items():
            union = unions.get((source, name), np.zeros((0, 2)))
            volumes = windows[f"V_{source}"].to_numpy(np.float64)
            starts = windows["start_s"].to_numpy(np.float64)
            inside_volumes.append(volumes[windows_inside(starts, union)])
            duration = float(starts[-1] + WINDOW_S) if len(starts) else 0.0
            _, spans = select_runs(volumes <= inaudible_db, duration, min_seconds)
            covered = covered_seconds(spans, union)
            n_runs += spans.shape[0]
            n_recovered += int((covered >= RECOVERED_OVERLAP * (spans[:, 1] - spans[:, 0]) - _TOLERANCE_S).sum())
        inside = np.concatenate(inside_volumes) if inside_volumes else np.zeros(0)
        rows.append({
            "source": source,
            "n_excerpts": int(len(mine)),
            "extracted_seconds": float(mine["duration_s"].sum()),
            "n_excerpts_without_truth": int((~mine["known"]).sum()),
            "n_windows_inside": int(inside.size),
            "fraction_silent": float((inside <= silent_db).mean()) if inside.size else float("nan"),
            "fraction_inaudible": float((inside <= inaudible_db).mean()) if inside.size else float("nan"),
            "v95_db": inverted_cdf_quantile(inside, 0.95),
            "n_true_runs": n_runs,
            "n_recovered": n_recovered,
            "recall": n_recovered / n_runs if n_runs else float("nan"),
        })
    return pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))


def measure_stage(run_dir: str | os.PathLike, truth_path: str | os.PathLike, catalog_root: str | os.PathLike,
                  out: str | os.PathLike) -> dict:
    """The MeasureExtraction stage: :func:`measure_extraction` of a run's index against a truth
    file, written to ``measure.parquet`` / ``measure.csv``; returns counts and summary lines."""
    from pathlib import Path

    from pipeline.mining.schema import read_index
    from pipeline.storage.outputs import write_parquet_atomic

    out = Path(out)
    table = measure_extraction(read_index(Path(run_dir) / "index"), pd.read_parquet(truth_path), catalog_root)
    write_parquet_atomic(table, out / "measure.parquet")
    (out / "measure.csv").write_text(table.to_csv(index=False))
    lines = [f"{r.source}: {r.extracted_seconds / 60:.1f} min in {r.n_excerpts} excerpts, "
             f"{r.fraction_silent:.1%} truly <= {SILENT_DB:g} dB, V95 {r.v95_db:.1f} dB, "
             f"recall of silent runs {r.recall:.0%} ({r.n_recovered}/{r.n_true_runs})"
             for r in table.itertuples() if r.n_excerpts or r.n_true_runs]
    return {"excerpts": int(table["n_excerpts"].sum()), "summary": lines,
            "measure": json.loads(table.to_json(orient="records"))}
