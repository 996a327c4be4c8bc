"""Evaluating a separator on whole tracks: overlap-add separation and museval (v4) SDR.

Separation (:func:`separate_track`): a track ``(channels, samples)`` is cut into segments of
``segment_s`` seconds overlapping by ``overlap_s``; each is separated (padded to the model's
valid length and trimmed back) and the outputs are blended with triangular weights
(:func:`crossfade_weights`, > 0 everywhere), normalised by the summed weights, so a model
that returns its input gives the input back exactly.

SDR (:func:`track_sdr`): ``museval.evaluate`` in ``v4`` mode (time-invariant distortion
filters, images SDR) on windows of ``win_s`` = 1 s with hop 1 s, as SiSec 2018 did, then the
median over a track's frames, the median over tracks per source, and ``all`` = the median
over every (track, source) value (the paper's table 1: "concatenating the metrics from all
sources and then taking the median").

Silent stems, explicitly (museval refuses an all-zero reference or estimate, i.e. one whose
channel sum is 0 at every sample):

1. a source whose *reference* is all-zero over the whole track is left out of that track's
   evaluation: its SDR is NaN, it does not enter the medians, and it is counted
   (``silent_reference`` in the per-track table, ``excluded_<source>`` in the summary);
2. the other sources are evaluated together; museval gives NaN to every frame in which one
   of their references (or estimates) is all-zero, and NaN frames are left out of the
   per-track median (``valid_frames`` counts the rest); a source with no valid frame has
   NaN SDR and is left out like rule 1;
3. an *estimate* that is all-zero over the whole track (museval would refuse it) scores
   0 dB in the frames where no evaluated reference is silent: the v4 images SDR of a zero
   estimate, ``10 log10(||s||^2 / ||0 - s||^2)``.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.audio import io as audio
from pipeline.separation.demucs import Demucs, separate
from pipeline.sources import SOURCES
from pipeline.corpora.stemset import StemTrack, list_tracks, load_mixture, load_stems

SUMMARY_COLUMNS = (*SOURCES, "all")


def crossfade_weights(segment: int) -> torch.Tensor:
    """Triangular weights ``(segment,)``, rising from 1 to the centre and back, all > 0."""
    half = segment // 2
    up = torch.arange(1, half + 1, dtype=torch.float32)
    down = torch.arange(segment - half, 0, -1, dtype=torch.float32)
    return torch.cat([up, down])


def overlap_add(fn: Callable[[torch.Tensor], torch.Tensor], mix: torch.Tensor, segment: int, overlap: int,
                batch_size: int = 4) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, segment)`` -> ``(B, ..., C, segment)``) to overlapping segments of
    ``mix`` ``(C, T)`` and blend them: returns ``(..., C, T)``.

    Segments start every ``segment - overlap`` samples; the mixture is zero-padded at its end
    so the last segment is full length, and the result is cut back to ``T``.
    """
    if not 0 <= overlap < segment:
        raise ValueError(f"need 0 <= overlap < segment, got overlap={overlap}, segment={segment}")
    channels, length = mix.shape
    hop = segment - overlap
    count = 1 + max(0, math.ceil((length - segment) / hop))
    padded = torch.nn.functional.pad(mix, (0, (count - 1) * hop + segment - length))
    weights = crossfade_weights(segment).to(mix.device)
    out: torch.Tensor | None = None
    total = torch.zeros(padded.shape[-1], device=mix.device)
    for first in range(0, count, batch_size):
        starts = [k * hop for k in range(first, min(count, first + batch_size))]
        chunks = torch.stack([padded[:, s:s + segment] for s in starts])
        result = fn(chunks)
        if out is None:
            out = torch.zeros(*result.shape[1:-1], padded.shape[-1], dtype=result.dtype, device=mix.device)
        for k, s in enumerate(starts):
            out[..., s:s + segment] += result[k] * weights
            total[s:s + segment] += weights
    return (out / total)[..., :length]


@torch.no_grad()
def separate_track(model: Demucs, mix: np.ndarray, segment_s: float = 8.0, overlap_s: float = 2.0,
                   device: str | torch.device = "cpu", batch_size: int = 4) -> np.ndarray:
    """Separate a whole mixture ``(channels, samples)`` at the model's rate: ``(sources, channels, samples)``."""
    model.eval()
    rate = model.config.sample_rate
    segment = min(round(segment_s * rate), mix.shape[-1])
    overlap = min(round(overlap_s * rate), segment - 1)
    x = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32)).to(device)
    estimates = overlap_add(lambda chunk: separate(model, chunk), x, segment, overlap, batch_size)
    return estimates.cpu().numpy()


def _silent(signal: np.ndarray) -> bool:
    """museval's all-zero test on ``(channels, samples)``: the channel sum is 0 at every sample."""
    return bool(np.all(signal.sum(axis=0) == 0))


def _frames(length: int, win: int, hop: int) -> list[slice]:
    """museval's framing: ``floor((T - win + hop) / hop)`` windows (one if ``win >= T``)."""
    count = int((length - win + hop) // hop) if win < length else 1
    return [slice(t * hop, min(t * hop + win, length)) for t in range(count)]


def track_sdr(references: np.ndarray, estimates: np.ndarray, sample_rate: int, win_s: float = 1.0,
              hop_s: float = 1.0) -> np.ndarray:
    """Framewise SDR in dB ``(sources, frames)`` of estimates vs. references ``(sources, channels, samples)``.

    NaN marks frames (or whole sources) left out by the silent-stem rules of the module docstring.
    """
    import museval

    if references.shape != estimates.shape:
        raise ValueError(f"references {references.shape} and estimates {estimates.shape} differ in shape")
    n_sources, _, length = references.shape
    win, hop = round(win_s * sample_rate), round(hop_s * sample_rate)
    frames = _frames(length, win, hop)
    sdr = np.full((n_sources, len(frames)), np.nan)
    evaluated = [j for j in range(n_sources) if not _silent(references[j])]
    zero_est = [j for j in evaluated if _silent(estimates[j])]
    museval_sources = [j for j in evaluated if j not in zero_est]
    if museval_sources:
        values = museval.evaluate(np.transpose(references[museval_sources], (0, 2, 1)),
                                  np.transpose(estimates[museval_sources], (0, 2, 1)), win=win, hop=hop,
                                  mode="v4")[0]
        sdr[museval_sources] = values
    for j in zero_est:
        for t, span in enumerate(frames):
            if not any(_silent(references[k][:, span]) for k in evaluated):
                sdr[j, t] = 0.0
    return sdr


def load_track(track: StemTrack, sample_rate: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixture ``(channels, T)`` and references ``(4, channels, T)`` at ``sample_rate``, same length."""
    mix, _ = load_mixture(track, sample_rate=sample_rate)
    stems, _ = load_stems(track, sample_rate=sample_rate)
    length = min(mix.shape[-1], stems.shape[-1])
    mix = audio.match_channels(mix[:, :length], channels)
    stems = np.stack([audio.match_channels(s[:, :length], channels) for s in stems])
    return mix, stems


def evaluate_separator(model: Demucs, stem_root: str | os.PathLike, split: str = "test",
                       segment_s: float = 8.0, overlap_s: float = 2.0, device: str | torch.device = "cpu",
                       win_s: float = 1.0, hop_s: float = 1.0,
                       max_tracks: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Separate every track of ``split`` and score it.

    Returns the per-track table (one row per track and source: ``track, source, sdr`` = median
    over frames in dB, ``frames``, ``valid_frames``, ``silent_reference``) and its
    :func:`summarize`.
    """
    tracks = list_tracks(stem_root, split)[:max_tracks]
    if not tracks:
        raise ValueError(f"stem set {stem_root} has no tracks in split {split!r}")
    model = model.to(device)
    rate, channels = model.config.sample_rate, model.config.audio_channels
    rows = []
    for track in tracks:
        mix, references = load_track(track, rate, channels)
        estimates = separate_track(model, mix, segment_s, overlap_s, device)
        rows.extend(score_track(track.name, references, estimates, rate, win_s, hop_s))
    per_track = pd.DataFrame(rows)
    return per_track, summarize(per_track)


def score_track(name: str, references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                win_s: float = 1.0, hop_s: float = 1.0) -> list[dict]:
    """Per-source rows (``track, source, sdr, frames, valid_frames, silent_reference``) of one track."""
    sdr = track_sdr(references, estimates, sample_rate, win_s, hop_s)
    rows = []
    for j, name_j in enumerate(SOURCES):
        valid = sdr[j][~np.isnan(sdr[j])]
        rows.append({"track": name, "source": name_j, "sdr": float(np.median(valid)) if valid.size else math.nan,
                     "frames": int(sdr.shape[1]), "valid_frames": int(valid.size),
                     "silent_reference": _silent(references[j])})
    return rows


def summarize(per_track: pd.DataFrame) -> dict[str, float]:
    """Median over tracks of the per-track SDR, per source and ``all``; NaN values are left out.

    Also ``tracks`` (count) and ``excluded_<source>``: tracks whose value for that source is NaN.
    """
    summary: dict[str, float] = {}
    for name in SOURCES:
        values = per_track.loc[per_track["source"] == name, "sdr"]
        summary[name] = float(values.median()) if values.notna().any() else math.nan
    summary["all"] = float(per_track["sdr"].median()) if per_track["sdr"].notna().any() else math.nan
    summary["tracks"] = int(per_track["track"].nunique())
    for name in SOURCES:
        summary[f"excluded_{name}"] = int(per_track.loc[per_track["source"] == name, "sdr"].isna().sum())
    return summary


def compare_runs(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per run (e.g. "with remix", "without remix"), columns drums, bass, other, vocals, all
    (median SDR in dB), like the paper's table 1."""
    frame = pd.DataFrame([[summary[c] for c in SUMMARY_COLUMNS] for summary in results.values()],
                         index=pd.Index(list(results), name="run"), columns=list(SUMMARY_COLUMNS))
    return frame


def evaluate_runs(checkpoints: dict[str, str | os.PathLike], stem_root: str | os.PathLike, out: str | os.PathLike,
                  split: str = "test", max_tracks: int | None = None) -> dict:
    """The Evaluate stage: score each run's ``best.pt`` on ``split`` and compare them side by side.

    Writes ``per_track.parquet`` (run, track, source, sdr, ...), ``comparison.csv`` /
    ``comparison.parquet`` (one row per run: median SDR in dB per source and over all) into
    ``out``; returns counts and the comparison for the manifest.
    """
    from pathlib import Path

    from pipeline.separation.demucs import load_model
    from pipeline.storage.outputs import write_parquet_atomic

    out = Path(out)
    summaries, tables = {}, []
    for run, checkpoint in checkpoints.items():
        per_track, summaries[run] = evaluate_separator(load_model(checkpoint), stem_root, split,
                                                       max_tracks=max_tracks)
        tables.append(per_track.assign(run=run))
    comparison = compare_runs(summaries)
    write_parquet_atomic(pd.concat(tables, ignore_index=True), out / "per_track.parquet")
    write_parquet_atomic(comparison.reset_index(), out / "comparison.parquet")
    (out / "comparison.csv").write_text(comparison.round(3).to_csv())
    return {"runs": len(checkpoints), "tracks": summaries[next(iter(summaries))]["tracks"],
            "summary": ["median SDR (dB), museval v4:", *comparison.round(2).to_string().splitlines()],
            "comparison": {run: {k: round(v, 3) for k, v in row.items()} for run, row in comparison.iterrows()}}
