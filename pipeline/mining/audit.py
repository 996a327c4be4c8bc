"""Audit report of a catalog's D_i (:class:`pipeline.mining.datasets.DatasetRun`): static HTML to read and hear.

:func:`write_audit` (the audit stage's body, :func:`build_audit`) writes ``out_dir/index.html``
(the overview), one page per source (``out_dir/<source>.html``), pictures in ``out_dir/img/``
and preview clips in ``out_dir/clips/``.
Every link is relative and the pages use only inline CSS and JavaScript, so the folder can be
zipped and opened anywhere without a network.

What the report shows is computed here, as plain values (:class:`Table` and the cell kinds
beside it); the pages are rendered from the Jinja2 templates in ``templates/audit/`` (markup,
style and the sorting script), which compute nothing.

What it shows:

* overview: excerpts and hours per source, the distributions of duration and detector
  probability, the calibration curves and thresholds, the rejected files and their reasons
  (grouped, and listed up to ``MAX_REJECT_ROWS`` rows), where the excerpts came from (top catalog
  folders and tracks by extracted seconds), for each source its weakest excerpts, and, with a
  ground-truth table, the true relative volume ``V_i`` inside the excerpts;
* per source: a table of at most ``per_source`` excerpts, the ones with the lowest mean
  probability plus a seeded random sample of the rest, each with a player of its first
  ``clip_seconds`` seconds (mono, ``CLIP_RATE`` Hz, MP3 or Ogg Vorbis), a small spectrogram and
  its index fields; the table sorts when a column header is clicked (default: ``prob_mean``
  ascending).

Size stays bounded for a catalog of any size: aggregate plots and tables are computed from the
index table, and only the sampled excerpts (at most ``per_source`` per source) get clips and
pictures.

Ground truth (the demo catalog only) has columns ``file`` (posix path relative to the catalog
root), ``window``, ``start_s``, ``V_<source>`` (dB) on the shared grid.  A truth window belongs to
an excerpt when its whole span ``[start_s, start_s + WINDOW_S)`` lies inside the excerpt; the
fraction of extracted audio that is truly silent is the share of those windows with
``V_i <= TRULY_SILENT_DB`` (``-inf`` counts as silent).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import soundfile as sf
from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image

from pipeline.audio.io import AudioError, load
from pipeline.mining.datasets import DatasetRun
from pipeline.mining.ground_truth import relative_file, window_inside
from pipeline.sources import INAUDIBLE_DB, SOURCES, TRULY_SILENT_DB
from pipeline.storage.outputs import MANIFEST, StageResult, atomic_path, read_manifest, stable_hash

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CLIP_RATE = 22_050  # Hz, preview clips (mono)
SPECTROGRAM_SHAPE = (60, 160)  # pixels (rows = log-frequency, columns = time)
SPECTROGRAM_RANGE_DB = 80.0  # dynamic range shown, dB below the clip's loudest bin
SPECTROGRAM_LEVELS = 64  # colours in a spectrogram picture
SPECTROGRAM_FMIN = 30.0  # Hz, lowest row
MAX_REJECT_ROWS = 200  # rejects listed one by one; the rest are only counted
MAX_REASON_ROWS = 50  # grouped reasons listed
TOP_N = 20  # catalog folders and tracks in the provenance tables
N_WEAKEST_OVERVIEW = 3  # lowest-probability excerpts played on the overview, per source
_VOLUME_FLOOR_DB = -60.0  # histogram range of true volumes (lower values are drawn in the first bin)

def sample_excerpts(index: pd.DataFrame, n: int, seed: int, n_lowest: int | None = None) -> pd.DataFrame:
    """At most ``n`` rows of ``index``: the ``n_lowest`` with the lowest ``prob_mean`` plus a
    uniform random sample (``numpy.random.default_rng(seed)``) of the others.

    ``n_lowest`` defaults to ``max(N_WEAKEST_OVERVIEW, n // 5)`` (at most ``n``).  The result does
    not depend on the row order of ``index`` (ties are broken by ``excerpt_id``) and is sorted by
    ``prob_mean`` ascending.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    n_lowest = min(n, max(N_WEAKEST_OVERVIEW, n // 5) if n_lowest is None else n_lowest)
    ordered = index.sort_values(["prob_mean", "excerpt_id"], kind="mergesort")
    if len(ordered) <= n:
        return ordered.reset_index(drop=True)
    lowest = ordered.iloc[:n_lowest]
    rest = ordered.iloc[n_lowest:].sort_values("excerpt_id", kind="mergesort")
    picked = np.sort(np.random.default_rng(seed).choice(len(rest), size=n - n_lowest, replace=False))
    sample = pd.concat([lowest, rest.iloc[picked]])
    return sample.sort_values(["prob_mean", "excerpt_id"], kind="mergesort").reset_index(drop=True)


def clip_format() -> tuple[str, str, str, str]:
    """``(format, subtype, extension, mime type)`` for preview clips: MP3 if libsndfile writes it,
    else Ogg Vorbis, else 16-bit WAV."""
    formats = sf.available_formats()
    if "MP3" in formats and "MPEG_LAYER_III" in sf.available_subtypes("MP3"):
        return "MP3", "MPEG_LAYER_III", "mp3", "audio/mpeg"
    if "OGG" in formats and "VORBIS" in sf.available_subtypes("OGG"):
        return "OGG", "VORBIS", "ogg", "audio/ogg"
    return "WAV", "PCM_16", "wav", "audio/wav"


def write_clip(audio_file: str | os.PathLike, out_path: str | os.PathLike, clip_seconds: float,
               sample_rate: int, fmt: tuple[str, str, str, str] | None = None) -> np.ndarray:
    """Write the first ``clip_seconds`` s of ``audio_file`` (original rate ``sample_rate`` Hz) as a
    mono ``CLIP_RATE`` Hz clip in ``fmt`` (default :func:`clip_format`); return it ``(samples,)``.

    Raises :class:`pipeline.audio.io.AudioError` when the excerpt cannot be decoded.
    """
    fmt = fmt or clip_format()
    audio, _ = load(audio_file, sample_rate=CLIP_RATE, mono=True, frames=max(1, int(round(clip_seconds * sample_rate))))
    clip = np.clip(audio[0], -1.0, 1.0)
    sf.write(str(out_path), clip, CLIP_RATE, format=fmt[0], subtype=fmt[1])
    return clip


def spectrogram_pixels(clip: np.ndarray, rate: int, shape: tuple[int, int] = SPECTROGRAM_SHAPE,
                       n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-frequency power spectrogram of a mono ``clip`` as ``shape`` (rows, columns) in dB,
    row 0 the lowest frequency (``SPECTROGRAM_FMIN`` Hz), the top row ``rate / 2``."""
    rows, cols = shape
    clip = np.asarray(clip, dtype=np.float64)
    if clip.size < n_fft:
        clip = np.pad(clip, (0, n_fft - clip.size))
    frames = np.lib.stride_tricks.sliding_window_view(clip, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # (time, bins)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = np.geomspace(SPECTROGRAM_FMIN, rate / 2, rows + 1)
    bands = np.empty((rows, power.shape[0]))
    for r in range(rows):
        in_band = (freqs >= edges[r]) & (freqs < edges[r + 1])
        bands[r] = power[:, in_band].mean(axis=1) if in_band.any() else power[:, np.abs(freqs - edges[r]).argmin()]
    columns = np.minimum((np.arange(cols) + 0.5) * bands.shape[1] / cols, bands.shape[1] - 1).astype(int)
    return 10.0 * np.log10(bands[:, columns] + 1e-12)


def write_spectrogram(clip: np.ndarray, rate: int, out_path: str | os.PathLike) -> None:
    """Save :func:`spectrogram_pixels` of ``clip`` as a PNG of ``SPECTROGRAM_SHAPE`` pixels.

    The top ``SPECTROGRAM_RANGE_DB`` dB are drawn in ``SPECTROGRAM_LEVELS`` colours of a palette
    image (a few kB each), high frequencies at the top.
    """
    pixels = spectrogram_pixels(clip, rate)[::-1]
    top = float(pixels.max())
    level = np.clip((pixels - (top - SPECTROGRAM_RANGE_DB)) / SPECTROGRAM_RANGE_DB, 0.0, 1.0)
    index = np.ascontiguousarray(np.round(level * (SPECTROGRAM_LEVELS - 1)).astype(np.uint8))
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    from matplotlib import colormaps  # here, as every plotting import: the stages that do not draw skip it

    palette = colormaps["magma"](np.linspace(0.0, 1.0, SPECTROGRAM_LEVELS))[:, :3]
    image.putpalette((palette * 255).round().astype(np.uint8).ravel().tolist())
    image.save(str(out_path), format="PNG", optimize=True)


def truth_inside_excerpts(index: pd.DataFrame, truth: pd.DataFrame,
                          catalog_root: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """True relative volumes (dB) inside each excerpt of ``index``.

    Returns ``(per_excerpt, values)``: ``per_excerpt`` is aligned with ``index`` (same row order)
    with columns ``true_windows`` (truth windows inside), ``true_v_median_db``, ``true_v_max_db``,
    ``true_fraction_silent`` (share with ``V <= TRULY_SILENT_DB``; NaN without truth); ``values`` maps
    each source to the ``V_<source>`` of every truth window inside one of its excerpts.
    """
    missing = {"file", "start_s"} - set(truth.columns)
    if missing:
        raise ValueError(f"truth table lacks columns {sorted(missing)}")
    relative = {path: relative_file(path, catalog_root) for path in index["catalog_path"].unique()}
    files = index["catalog_path"].map(relative)
    by_file = {name: rows.sort_values("start_s", kind="mergesort") for name, rows in truth.groupby("file", sort=False)}

    n = len(index)
    counts = np.zeros(n, dtype=np.int64)
    medians, maxima, silent = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    values: dict[str, list[np.ndarray]] = {s: [] for s in SOURCES}
    starts_s, ends_s, sources = index["start_s"].to_numpy(), index["end_s"].to_numpy(), index["source"].to_numpy()
    for i, name in enumerate(files.to_numpy()):
        rows = by_file.get(name)
        column = f"V_{sources[i]}"
        if rows is None or column not in rows.columns:
            continue
        inside = window_inside(rows["start_s"].to_numpy(), starts_s[i], ends_s[i])
        volume = rows[column].to_numpy(dtype=np.float64)[inside]
        counts[i] = volume.size
        if volume.size:
            medians[i], maxima[i] = np.median(volume), volume.max()
            silent[i] = float(np.mean(volume <= TRULY_SILENT_DB))
            values.setdefault(str(sources[i]), []).append(volume)
    per_excerpt = pd.DataFrame({"true_windows": counts, "true_v_median_db": medians, "true_v_max_db": maxima,
                                "true_fraction_silent": silent}, index=index.index)
    return per_excerpt, {s: np.concatenate(v) if v else np.zeros(0) for s, v in values.items()}


# ------------------------------------------------------------------------------ what the pages show


@dataclass(frozen=True)
class Link:
    href: str  # relative to the report folder
    text: str


@dataclass(frozen=True)
class Player:
    """An excerpt's preview clip."""

    src: str
    title: str


@dataclass(frozen=True)
class Unavailable:
    """A clip that could not be made, and why."""

    reason: str


@dataclass(frozen=True)
class Picture:
    src: str
    alt: str
    css_class: str = "plot"


@dataclass(frozen=True)
class Mono:
    """An identifier, shown in a fixed-width font."""

    text: str


@dataclass(frozen=True)
class Titled:
    """Text shown short, with its full form on hover."""

    text: str
    title: str


@dataclass(frozen=True)
class Blank:
    """An empty cell."""


_CELL_KINDS = {Link: "link", Player: "player", Unavailable: "unavailable", Picture: "picture", Mono: "mono",
               Titled: "titled", Blank: "blank"}


@dataclass
class Table:
    """A sortable table: ``rows`` of values (numbers, text, None, or one of the cell kinds above),
    floats shown with ``digits`` decimals; ``sorted_by``: the header it is sorted by."""

    headers: list[str]
    rows: list[list[Any]]
    table_id: str | None = None
    sorted_by: str | None = None
    digits: int = 3


def cell_kind(value: Any) -> str:
    """How a table cell shows ``value``: missing (None, NaN), bool, int, float, text, or a cell kind."""
    if type(value) in _CELL_KINDS:
        return _CELL_KINDS[type(value)]
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "missing"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return "text"


def sort_value(value: float) -> str:
    """A number's ``data-v`` (what the table sorts by): full precision, ``Infinity`` for inf."""
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def frame_table(frame: pd.DataFrame, table_id: str | None = None, digits: int = 3) -> Table:
    return Table([str(c) for c in frame.columns], [list(rec) for rec in frame.itertuples(index=False)], table_id,
                 digits=digits)


def _safe_page(source: str) -> str:
    return source if re.fullmatch(r"[a-z0-9_]+", source) and source != "index" else f"source-{stable_hash(source, 8)}"


# ----------------------------------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _plot_per_source(index: pd.DataFrame, sources: list[str], column: str, xlabel: str, path: Path,
                     thresholds: dict[str, float] | None = None, bins=30) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(sources), 2.6))
    for k, source in enumerate(sources):
        ax = fig.add_subplot(1, len(sources), k + 1)
        data = index.loc[index["source"] == source, column].to_numpy(dtype=np.float64)
        data = data[np.isfinite(data)]
        if data.size:
            ax.hist(data, bins=bins, color="#4a7ab5")
        else:
            ax.text(0.5, 0.5, "no excerpts", ha="center", va="center", transform=ax.transAxes)
        if thresholds and np.isfinite(thresholds.get(source, np.nan)):
            ax.axvline(thresholds[source], color="#c33", ls="--", lw=1, label="threshold")
            ax.legend(fontsize=7)
        ax.set_title(f"{source} (n={data.size})", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    _save(fig, path)


def _plot_truth(values: dict[str, np.ndarray], sources: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(sources), 2.6))
    bins = np.arange(_VOLUME_FLOOR_DB, 10.0 + 1e-9, 2.0)
    for k, source in enumerate(sources):
        ax = fig.add_subplot(1, len(sources), k + 1)
        data = values.get(source, np.zeros(0))
        if data.size:
            ax.hist(np.clip(data, _VOLUME_FLOOR_DB, 10.0), bins=bins, color="#5a9e6f")
            ax.set_title(f"{source}: {np.mean(data <= TRULY_SILENT_DB):.0%} <= {TRULY_SILENT_DB:g} dB", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no truth windows", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(source, fontsize=9)
        ax.axvline(TRULY_SILENT_DB, color="#c33", ls="--", lw=1)
        ax.set_xlim(_VOLUME_FLOOR_DB, 10.0)
        ax.set_xlabel("true V_i in excerpts (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
    _save(fig, path)


def _plot_curves(curves: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for source, rows in curves.groupby("source", sort=False):
        rows = rows.sort_values("threshold")
        left.plot(rows["threshold"], rows["fraction_silent"], label=str(source))
        right.plot(rows["threshold"], rows["coverage"], label=str(source))
    left.set_xlabel("threshold p_i")
    left.set_ylabel("fraction silent above p_i")
    right.set_xlabel("threshold p_i")
    right.set_ylabel("coverage")
    left.legend(fontsize=7)
    _save(fig, path)


# ------------------------------------------------------------------------------------- sections


def _read_calibration(calibration_dir: Path | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None, Path | None]:
    if calibration_dir is None:
        return None, None, None
    calibration_dir = Path(calibration_dir)
    thresholds = calibration_dir / "thresholds.parquet"
    curves = calibration_dir / "curves.parquet"
    png = calibration_dir / "curves.png"
    return (pd.read_parquet(thresholds) if thresholds.is_file() else None,
            pd.read_parquet(curves) if curves.is_file() else None,
            png if png.is_file() else None)


def _display_path(path: str, catalog_root: str | None) -> str:
    if catalog_root:
        rel = os.path.relpath(path, catalog_root)
        if not rel.startswith(os.pardir):
            return rel.replace(os.sep, "/")
    return path


def provenance(index: pd.DataFrame, catalog_root: str | None) -> dict | None:
    """Where the excerpts came from: the top ``TOP_N`` catalog folders and tracks by extracted
    seconds (paths relative to ``catalog_root`` when under it); None without excerpts."""
    if index.empty:
        return None
    shown = index["catalog_path"].map({p: _display_path(p, catalog_root) for p in index["catalog_path"].unique()})
    folders = shown.map(lambda p: os.path.dirname(p) or ".")
    frame = index.assign(folder=folders, file=shown)
    by_folder = (frame.groupby("folder").agg(tracks=("track_id", "nunique"), excerpts=("excerpt_id", "size"),
                                             seconds=("duration_s", "sum"))
                 .sort_values(["seconds", "excerpts"], ascending=False))
    total = float(frame["duration_s"].sum()) or 1.0
    folder_rows = [[name, int(r.tracks), int(r.excerpts), float(r.seconds), float(r.seconds / 3600),
                    float(100 * r.seconds / total)] for name, r in by_folder.head(TOP_N).iterrows()]
    per_source = frame.pivot_table(index=["file", "track_id"], columns="source", values="duration_s",
                                   aggfunc="sum", fill_value=0.0)
    by_track = frame.groupby(["file", "track_id"]).agg(excerpts=("excerpt_id", "size"), seconds=("duration_s", "sum"))
    by_track = by_track.join(per_source).sort_values(["seconds", "excerpts"], ascending=False)
    sources = [s for s in SOURCES if s in per_source.columns] + sorted(set(per_source.columns) - set(SOURCES))
    track_rows = [[name[0], name[1], int(r.excerpts), float(r.seconds), *[float(r[s]) for s in sources]]
                  for name, r in by_track.head(TOP_N).iterrows()]
    return {"folders_total": len(by_folder), "tracks_total": len(by_track), "top": TOP_N,
            "catalog_root": catalog_root,
            "folders": Table(["folder", "tracks", "excerpts", "seconds", "hours", "% of extracted"], folder_rows,
                             "provenance-folders", digits=2),
            "tracks": Table(["catalog file", "track_id", "excerpts", "seconds", *[f"{s} s" for s in sources]],
                            track_rows, "provenance-tracks", digits=2)}


def rejects_figures(rejects: pd.DataFrame) -> dict:
    """The rejected files: their reasons grouped (numbers replaced by N, at most
    ``MAX_REASON_ROWS``) and the first ``MAX_REJECT_ROWS`` files by stage and path."""
    if rejects.empty:
        return {"count": 0}
    grouped = rejects.assign(reason_kind=rejects["reason"].astype(str).str.replace(r"\d+(\.\d+)?", "N", regex=True))
    by_reason = (grouped.groupby(["stage", "reason_kind"]).size().rename("files").reset_index()
                 .sort_values(["files", "reason_kind"], ascending=[False, True]))
    reason_rows = [[r.stage, r.reason_kind, int(r.files)] for r in by_reason.head(MAX_REASON_ROWS).itertuples()]
    listed = rejects.sort_values(["stage", "path"], kind="mergesort").head(MAX_REJECT_ROWS)
    return {"count": len(rejects), "reasons_total": len(by_reason),
            "reasons": Table(["stage", "reason", "files"], reason_rows, "reject-reasons"),
            "files": Table(["path", "track_id", "stage", "reason"],
                           [[r.path, r.track_id, r.stage, r.reason] for r in listed.itertuples()], "rejects")}


def run_figures(run_dir: Path) -> dict:
    """The D_i's manifest: its identity fields and, as JSON, its parameters, inputs and counts."""
    if not (run_dir / MANIFEST).is_file():
        return {"name": run_dir.name, "folder": str(run_dir), "manifest": None}
    manifest = read_manifest(run_dir)
    rows = [[name, "" if manifest.get(name) is None else str(manifest.get(name))]
            for name in ("stage", "key", "code_version", "started_at", "finished_at", "wall_s", "host")
            if name in manifest]
    details = {k: manifest.get(k) for k in ("params", "inputs", "store", "scan", "counts") if k in manifest}
    return {"name": run_dir.name, "folder": str(run_dir), "manifest": manifest,
            "fields": Table(["field", "value"], rows),
            "details": json.dumps(details, indent=2, sort_keys=True, default=str)}


def truth_figures(index: pd.DataFrame, sources: list[str], truth_cols: pd.DataFrame,
                  truth_values: dict[str, np.ndarray], img: Path) -> dict:
    """Per source: excerpts, those without truth, truth windows inside, the fractions at or below
    ``TRULY_SILENT_DB`` and ``INAUDIBLE_DB``, median V and V95; and the histogram of V inside."""
    known = truth_cols.reindex(index["excerpt_id"].to_numpy())["true_windows"].fillna(0).to_numpy() > 0
    rows = []
    for s in sources:
        v = truth_values.get(s, np.zeros(0))
        in_source = (index["source"] == s).to_numpy()
        rows.append([s, int(in_source.sum()), int((in_source & ~known).sum()), int(v.size),
                     float(np.mean(v <= TRULY_SILENT_DB)) if v.size else None,
                     float(np.mean(v <= INAUDIBLE_DB)) if v.size else None,
                     float(np.median(v)) if v.size else None,
                     float(np.quantile(v, 0.95, method="inverted_cdf")) if v.size else None])
    picture = None
    if any(v.size for v in truth_values.values()):
        _plot_truth(truth_values, sources, img / "truth_volume.png")
        picture = Picture("img/truth_volume.png", "true relative volume inside the excerpts")
    return {"silent_db": TRULY_SILENT_DB, "inaudible_db": INAUDIBLE_DB, "picture": picture,
            "table": Table(["source", "excerpts", "excerpts without truth", "windows inside",
                            f"fraction <= {TRULY_SILENT_DB:g} dB", f"fraction <= {INAUDIBLE_DB:g} dB",
                            "median V (dB)", "V95 (dB)"], rows, "truth-table")}


def measured_figures(measure_dir: Path, img: Path) -> dict:
    """The yield-against-purity curve of a MeasureExtraction output: its plot, the rules' figures
    and the curve's table (:mod:`pipeline.mining.ground_truth`)."""
    png, rules, curve = (measure_dir / name for name in ("yield_curve.png", "rules.parquet", "yield_curve.parquet"))
    picture = None
    if png.is_file():
        shutil.copyfile(png, img / "yield_curve.png")
        picture = Picture("img/yield_curve.png", "purity against extracted audio as the threshold varies")
    return {"folder": str(measure_dir), "curve_picture": picture,
            "rules": frame_table(pd.read_parquet(rules), "yield-rules") if rules.is_file() else None,
            "curve": frame_table(pd.read_parquet(curve), "yield-curve") if curve.is_file() else None}


def calibration_figures(thresholds: pd.DataFrame | None, curves: pd.DataFrame | None, curves_png: Path | None,
                        img: Path) -> dict:
    """The calibration's curves (its picture, or one drawn from ``curves``) and thresholds table."""
    picture = Picture("img/calibration_curves.png", "calibration curves")
    if curves_png is not None:
        shutil.copyfile(curves_png, img / "calibration_curves.png")
    elif curves is not None and {"source", "threshold", "fraction_silent", "coverage"} <= set(curves.columns):
        _plot_curves(curves, img / "calibration_curves.png")
    else:
        picture = None
    return {"curves": picture,
            "thresholds": frame_table(thresholds, "calibration-thresholds") if thresholds is not None else None}


def distribution_figures(index: pd.DataFrame, sources: list[str], summaries: dict, img: Path) -> list | None:
    """Histograms per source of duration, mean and minimum probability (thresholds marked); None
    without excerpts."""
    if index.empty:
        return None
    threshold_of = {s: np.nan if summaries[s]["threshold"] is None else summaries[s]["threshold"] for s in sources}
    _plot_per_source(index, sources, "duration_s", "excerpt duration (s)", img / "duration.png")
    _plot_per_source(index, sources, "prob_mean", "mean P_i over the excerpt", img / "prob_mean.png",
                     thresholds=threshold_of, bins=np.linspace(0, 1, 41))
    _plot_per_source(index, sources, "prob_min", "min P_i over the excerpt", img / "prob_min.png",
                     thresholds=threshold_of, bins=np.linspace(0, 1, 41))
    return [("Duration", [Picture("img/duration.png", "excerpt durations per source")]),
            ("Detector probability", [Picture("img/prob_mean.png", "mean probability per source"),
                                      Picture("img/prob_min.png", "minimum probability per source")])]


class _Clips:
    """Writes the clip and spectrogram of each sampled excerpt once and remembers its two cells."""

    def __init__(self, run: DatasetRun, out_dir: Path, clip_seconds: float):
        self.run, self.out_dir, self.clip_seconds = run, out_dir, clip_seconds
        self.fmt = clip_format()
        self.cells: dict[str, tuple[Any, Any]] = {}
        self.failures: list[tuple[str, str]] = []

    def add(self, row, name: str) -> tuple[Any, Any]:
        if row.excerpt_id in self.cells:
            return self.cells[row.excerpt_id]
        clip_rel, spec_rel = f"clips/{name}.{self.fmt[2]}", f"img/spec-{name}.png"
        try:
            try:
                audio_file = self.run.audio_file(row)
            except ValueError as err:
                raise AudioError(str(err)) from None
            clip = write_clip(audio_file, self.out_dir / clip_rel, self.clip_seconds, int(row.sample_rate),
                              self.fmt)
            write_spectrogram(clip, CLIP_RATE, self.out_dir / spec_rel)
            cells = (Player(clip_rel, str(row.excerpt_id)),
                     Picture(spec_rel, f"spectrogram of {row.excerpt_id}", "spec"))
        except (AudioError, OSError, sf.LibsndfileError) as err:
            for partial in (self.out_dir / clip_rel, self.out_dir / spec_rel):
                partial.unlink(missing_ok=True)
            self.failures.append((str(row.excerpt_id), str(err)))
            cells = (Unavailable(str(err)), Blank())
        self.cells[row.excerpt_id] = cells
        return cells


def excerpts_table(sample: pd.DataFrame, clips: _Clips, source: str, truth_cols: pd.DataFrame | None,
                   catalog_root: str | None) -> Table:
    """A source page's table: each sampled excerpt's player, spectrogram and index fields (and
    the truth inside it, with ground truth), sorted by ``prob_mean``."""
    headers = ["player", "spectrogram", "excerpt_id", "catalog file", "start_s", "end_s", "duration_s",
               "prob_mean", "prob_min", "threshold", "n_frames", "sample_rate", "channels"]
    if truth_cols is not None:
        headers += ["true V median (dB)", "true V max (dB)", f"truly <= {TRULY_SILENT_DB:g} dB"]
    headers += ["audio_path", "audio_format", "audio_checksum", "catalog_checksum", "detector_key", "calibration_key"]
    rows = []
    for k, row in enumerate(sample.itertuples(index=False)):
        player, spectrogram = clips.add(row, f"{_safe_page(source)}-{k:04d}")
        values = [player, spectrogram, Mono(str(row.excerpt_id)),
                  Titled(_display_path(str(row.catalog_path), catalog_root), str(row.catalog_path)),
                  row.start_s, row.end_s, row.duration_s, row.prob_mean, row.prob_min, row.threshold,
                  int(row.n_frames), int(row.sample_rate), int(row.channels)]
        if truth_cols is not None:
            t = truth_cols.loc[row.excerpt_id] if row.excerpt_id in truth_cols.index else None
            values += [None, None, None] if t is None else [t.true_v_median_db, t.true_v_max_db, t.true_fraction_silent]
        values += [row.audio_path, row.audio_format, str(row.audio_checksum)[:16], str(row.catalog_checksum)[:16],
                   row.detector_key, row.calibration_key]
        rows.append(values)
    return Table(headers, rows, f"excerpts-{_safe_page(source)}", sorted_by="prob_mean")


def source_summary(index: pd.DataFrame, source: str, thresholds: pd.DataFrame | None) -> dict:
    """A source's excerpts, seconds, hours and tracks, and whether (and where) it was calibrated."""
    rows = index[index["source"] == source]
    seconds = float(rows["duration_s"].sum())
    info = {"name": source, "page": f"{_safe_page(source)}.html", "excerpts": len(rows), "seconds": seconds,
            "hours": seconds / 3600, "tracks": int(rows["track_id"].nunique()), "calibratable": None,
            "threshold": None}
    if thresholds is not None and "source" in thresholds.columns:
        match = thresholds[thresholds["source"] == source]
        if len(match):
            if "calibratable" in match.columns:
                info["calibratable"] = bool(match["calibratable"].iloc[0])
            if "threshold" in match.columns:
                info["threshold"] = float(match["threshold"].iloc[0])
    calibrated = info["threshold"] is not None and np.isfinite(info["threshold"])
    info["threshold_text"] = f"{info['threshold']:.3f}" if calibrated else "none"
    return info


def sources_table(index: pd.DataFrame, summaries: dict) -> Table:
    rows = []
    for s, info in summaries.items():
        mine = index[index["source"] == s]
        rows.append([Link(info["page"], s), info["calibratable"], info["threshold"], info["excerpts"],
                     info["seconds"], info["hours"], info["tracks"],
                     float(mine["duration_s"].median()) if len(mine) else None,
                     float(mine["prob_mean"].median()) if len(mine) else None,
                     float(mine["prob_mean"].min()) if len(mine) else None])
    return Table(["source", "calibratable", "threshold", "excerpts", "seconds", "hours", "tracks",
                  "median duration s", "median prob_mean", "min prob_mean"], rows, "sources-table")


def weakest_table(sample: pd.DataFrame, clips: _Clips, source: str) -> Table:
    """The overview's preview of a source: its ``N_WEAKEST_OVERVIEW`` lowest-probability excerpts."""
    rows = []
    for k, row in enumerate(sample.head(N_WEAKEST_OVERVIEW).itertuples(index=False)):
        player, spectrogram = clips.add(row, f"{_safe_page(source)}-{k:04d}")
        rows.append([player, spectrogram, Mono(str(row.excerpt_id)), row.prob_mean, row.prob_min, row.duration_s])
    return Table(["player", "spectrogram", "excerpt_id", "prob_mean", "prob_min", "duration_s"], rows,
                 sorted_by="prob_mean")


# ---------------------------------------------------------------------------------------- pages


def templates() -> Environment:
    """The report's Jinja2 templates (``templates/audit/``), escaping every value they insert."""
    environment = Environment(loader=PackageLoader("pipeline.mining", "templates/audit"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)
    environment.filters.update(cell_kind=cell_kind, sort_value=sort_value)
    return environment


def write_audit(
    run: DatasetRun | str | os.PathLike,
    calibration_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    truth: pd.DataFrame | str | os.PathLike | None = None,
    catalog_root: str | os.PathLike | None = None,
    per_source: int = 50,
    clip_seconds: float = 6.0,
    seed: int = 0,
    measure_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the audit report of a D_i (a :class:`pipeline.mining.datasets.DatasetRun` or its folder)
    into ``out_dir``; return its index.html.

    ``calibration_dir``: the Calibrate output (``thresholds.parquet``, ``curves.parquet``,
    ``curves.png``), or None.  ``truth``: a ground-truth DataFrame or Parquet path (needs
    ``catalog_root``, the folder its ``file`` column is relative to).  ``per_source``: at most
    this many excerpts per source get a row, clip and spectrogram; ``clip_seconds``: length of
    each preview (s); ``seed``: the sample's random seed.  ``measure_dir``: a MeasureExtraction
    output (``rules.parquet``, ``yield_curve.parquet`` / ``.png``), shown as "Yield and purity"
    when given.  ``out_dir`` is replaced atomically.
    """
    run = DatasetRun.of(run)
    run_dir = run.folder
    if not run_dir.is_dir():
        raise FileNotFoundError(f"D_i folder {run_dir} does not exist")
    if per_source < 0:
        raise ValueError(f"per_source must be >= 0, got {per_source}")
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    if truth is not None and catalog_root is None:
        raise ValueError("a ground-truth table needs catalog_root, the folder its 'file' paths are relative to")
    if truth is not None and not isinstance(truth, pd.DataFrame):
        truth = pd.read_parquet(truth)
    root = str(catalog_root) if catalog_root is not None else None

    index = run.index()
    rejects = run.rejects()
    thresholds, curves, curves_png = _read_calibration(Path(calibration_dir) if calibration_dir else None)
    sources = list(SOURCES) + sorted(set(index["source"]) - set(SOURCES))
    truth_cols, truth_values = None, {}
    if truth is not None:
        per_excerpt, truth_values = truth_inside_excerpts(index, truth, root)
        truth_cols = per_excerpt.set_index(index["excerpt_id"].to_numpy())
        truth_cols = truth_cols[~truth_cols.index.duplicated()]

    pages = templates()
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        img = tmp / "img"
        img.mkdir(parents=True)
        (tmp / "clips").mkdir()
        clips = _Clips(run, tmp, clip_seconds)
        summaries = {s: source_summary(index, s, thresholds) for s in sources}
        samples = {s: sample_excerpts(index[index["source"] == s], per_source, seed) for s in sources}
        common = {"sources": list(summaries.values()), "seed": seed, "clip_seconds": clip_seconds,
                  "clip_rate": CLIP_RATE}
        for source, info in summaries.items():
            shown = {**info, "shown": len(samples[source]),
                     "lowest": min(len(samples[source]), max(N_WEAKEST_OVERVIEW, per_source // 5)),
                     "table": excerpts_table(samples[source], clips, source, truth_cols, root)
                     if info["excerpts"] else None}
            (tmp / info["page"]).write_text(
                pages.get_template("source.html.j2").render(title=f"D_i audit: {source}", s=shown, **common),
                encoding="utf-8")
        overview = {
            "run": run_figures(run_dir),
            "totals": {"excerpts": len(index), "hours": float(index["duration_s"].sum()) / 3600,
                       "rejects": len(rejects)},
            "sources_table": sources_table(index, summaries),
            "per_source": [{**info, "weakest": weakest_table(samples[s], clips, s) if info["excerpts"] else None}
                           for s, info in summaries.items()],
            "distributions": distribution_figures(index, sources, summaries, img),
            "calibration": calibration_figures(thresholds, curves, curves_png, img),
            "measured": measured_figures(Path(measure_dir), img) if measure_dir is not None else None,
            "rejects": rejects_figures(rejects),
            "provenance": provenance(index, root),
            "truth": truth_figures(index, sources, truth_cols, truth_values, img) if truth_cols is not None else None,
        }
        overview["clip_failures"] = clips.failures[:MAX_REJECT_ROWS]
        (tmp / "index.html").write_text(
            pages.get_template("overview.html.j2").render(title=f"D_i audit: {run_dir.name}", **overview, **common),
            encoding="utf-8")
    return out_dir / "index.html"


def build_audit(
    run: DatasetRun | str | os.PathLike,
    calibration_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    catalog_root: str | os.PathLike | None = None,
    per_source: int = 50,
    clip_seconds: float = 6.0,
    seed: int = 0,
    measure_dir: str | os.PathLike | None = None,
) -> StageResult:
    """The audit stage: :func:`write_audit` of these arguments; the summary names the report."""
    report = write_audit(run, calibration_dir, out_dir, truth=truth, catalog_root=catalog_root, per_source=per_source,
                         clip_seconds=clip_seconds, seed=seed, measure_dir=measure_dir)
    return StageResult(summary=[f"report: {report}"])
