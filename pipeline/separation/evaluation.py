"""Evaluating a separator on whole tracks: overlap-add separation, museval (v4) SDR and SI-SNR.

Any registered model (:mod:`pipeline.separation.registry`) is evaluated the same way; runs
are loaded from their checkpoints through the registry (:func:`build_evaluate`, the evaluate stage).

Separation: :func:`pipeline.separation.apply.separate_track`, overlap-add of segments of
``segment_s`` seconds overlapping by ``overlap_s``.

SDR (:func:`track_sdr`): museval's v4 BSS Eval (``museval.metrics.bss_eval`` with the
arguments ``museval.evaluate(mode="v4")`` passes: time-invariant distortion filters, images
SDR) on windows of ``win_s`` = 1 s with hop 1 s, as SiSec 2018 did, then the
median over a track's frames, the median over tracks per source, and ``all`` = the median
over every (track, source) value (the paper's table 1: "concatenating the metrics from all
sources and then taking the median").  The references' part of museval's computation (their
correlation matrix and its LU factorisation, most of the cost) is done once per track and
reused for every row scored on it (:class:`ReferenceProjection`): the same SDR, to the bit on
the tests' signals, for a fraction of the time when several runs are compared.

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

SI-SNR (:func:`track_si_snr`, the frugal paper's metric, :func:`pipeline.separation.losses.si_snr`)
on the same frames, per source over both channels; a frame whose reference is silent for the
SI-SNR loss (mean square <= -100 dBFS) is left out for that source only, and the medians
follow SDR's (per track over frames, then over tracks; ``si_snr_<source>``, ``si_snr_all``).

Reference rows (:func:`reference_estimates`), scored beside the runs at their rate: trivial
(every source = mixture / 4) and oracle (ideal ratio masks of the true stems on an STFT whose
frames are sized in seconds, 92.9 ms windows and 23.2 ms hops at any rate: 4096 / 1024
samples at 44.1 kHz, 1486 / 372 at 16 kHz; :func:`oracle_stft_size`).  The contrasts between
rows and their intervals are :mod:`pipeline.separation.comparison`'s.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import torch

from pipeline.audio import io as audio
from pipeline.corpora.stemset import StemTrack, list_tracks, load_mixture, load_stems
from pipeline.mining.extraction import separator_volumes
from pipeline.progress import progress_bar
from pipeline.separation.apply import separate_track
from pipeline.separation.comparison import (
    INTERVAL_METHOD,
    box_plot,
    contrast_lines,
    default_contrasts,
    paired_comparison,
    run_statistics,
    too_small_warning,
)
from pipeline.separation.contract import Separator
from pipeline.separation.losses import si_snr, silent
from pipeline.sources import SOURCES
from pipeline.storage.outputs import StageResult
from pipeline.threads import available_cores

SUMMARY_COLUMNS = (*SOURCES, "all")


def _silent(signal: np.ndarray) -> bool:
    """museval's all-zero test on ``(channels, samples)``: the channel sum is 0 at every sample."""
    return bool(np.all(signal.sum(axis=0) == 0))


def _frames(length: int, win: int, hop: int) -> list[slice]:
    """museval's framing: ``floor((T - win + hop) / hop)`` windows (one if ``win >= T``)."""
    count = int((length - win + hop) // hop) if win < length else 1
    return [slice(t * hop, min(t * hop + win, length)) for t in range(count)]


@functools.lru_cache(maxsize=1)
def museval_metrics() -> ModuleType:
    """museval's ``metrics`` module (numpy and scipy only), loaded from its file.

    Importing the museval package (or ``museval.metrics``) runs its ``__init__``, which imports musdb ->
    stempeg, and stempeg raises at import when no ffmpeg program is on the PATH; the metrics
    file itself needs neither, so it is loaded on its own under the name ``museval_metrics``.
    """
    spec = importlib.util.find_spec("museval")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("museval is not installed (pip install museval): it computes the SDR")
    path = Path(next(iter(spec.submodule_search_locations))) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


FILTERS_LEN = 512  # museval's distortion filters, samples
_EPS = np.finfo(float).eps


def _factor(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """LAPACK's LU factors of ``matrix`` (what ``np.linalg.solve`` computes on every call), or
    None when it is exactly singular (museval then falls back to least squares)."""
    import scipy.linalg

    lu, pivots = scipy.linalg.lu_factor(matrix, check_finite=False)
    return None if np.any(np.diag(lu) == 0) else (lu, pivots)


class ReferenceProjection:
    """What museval's v4 BSS Eval (images, time-invariant filters, no permutation) computes from
    the references alone, computed once per track and reused for every estimate scored on it.

    museval factorises the references' correlation matrix ``G`` (``sources x channels x 512``
    square, 4096 rows for four stereo sources) anew for every source of every estimate; the
    factorisation is most of its cost.  Here it is done once (``scipy.linalg.lu_factor``, the
    LU that ``np.linalg.solve`` computes), so that scoring R rows of a track costs about one
    museval call instead of R; :meth:`sdr` equals museval's SDR to rounding (tests).
    ``references``: ``(sources, channels, samples)``.
    """

    def __init__(self, references: np.ndarray) -> None:
        metrics = museval_metrics()
        self.references = np.transpose(references, (0, 2, 1))  # museval's (sources, samples, channels)
        self.correlations, self.spectra = metrics._compute_reference_correlations(self.references, FILTERS_LEN)
        whole = metrics._reshape_G(self.correlations)
        self.factors = _factor(whole + _EPS * np.eye(whole.shape[0]))
        self.own_factors = []
        for j in range(self.references.shape[0]):
            own = metrics._reshape_G(self.correlations[j, j][None, None])
            self.own_factors.append(_factor(own + _EPS * np.eye(own.shape[0])))

    def _filters(self, factors, correlations: np.ndarray, spectra: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """museval's ``_compute_projection_filters`` of ``estimate`` ``(samples, channels)`` on the
        references of ``spectra`` ``(sources, channels, n_fft)``, solved with ``factors``."""
        import scipy.fftpack
        import scipy.linalg

        metrics = museval_metrics()
        samples, channels = estimate.shape
        sources = spectra.shape[0]
        padded = metrics._zeropad(estimate.T, FILTERS_LEN - 1, axis=1)
        n_fft = int(2 ** np.ceil(np.log2(samples + FILTERS_LEN - 1.0)))
        estimate_spectra = scipy.fftpack.fft(padded, n=n_fft)
        cross = np.zeros((sources, channels, FILTERS_LEN, channels))
        for j in range(sources):
            for cj in range(channels):
                for c in range(channels):
                    lagged = np.real(scipy.fftpack.ifft(spectra[j, cj] * np.conj(estimate_spectra[c])))
                    cross[j, cj, :, c] = np.hstack((lagged[0], lagged[-1:-FILTERS_LEN:-1]))
        cross = cross.reshape(sources * channels * FILTERS_LEN, channels)
        if factors is not None:
            filters = scipy.linalg.lu_solve(factors, cross, check_finite=False)
        else:
            filters = np.linalg.lstsq(metrics._reshape_G(correlations), cross)[0]
        filters = filters.reshape(sources, channels, FILTERS_LEN, channels)
        return filters[0] if sources == 1 else filters

    def sdr(self, estimates: np.ndarray, win: int, hop: int) -> np.ndarray:
        """Framewise SDR in dB ``(sources, frames)`` of ``estimates`` ``(sources, channels, samples)``:
        museval's ``bss_eval(..., framewise_filters=False, compute_permutation=False,
        bsseval_sources_version=False)[0]`` with ``window=win``, ``hop=hop`` (samples)."""
        metrics = museval_metrics()
        estimates = np.transpose(estimates, (0, 2, 1))
        if estimates.shape != self.references.shape:
            raise ValueError(f"estimates {estimates.shape} and references {self.references.shape} differ in shape")
        sources = estimates.shape[0]
        interference = [self._filters(self.factors, self.correlations, self.spectra, estimates[j])
                        for j in range(sources)]
        spatial = [self._filters(self.own_factors[j], self.correlations[j, j][None, None], self.spectra[j][None],
                                 estimates[j]) for j in range(sources)]
        framer = metrics.Framing(win, hop, estimates.shape[1])
        sdr = np.full((sources, framer.nwin), np.nan)
        for t, span in enumerate(framer):
            references = self.references[:, span]
            if metrics._any_source_silent(references) or metrics._any_source_silent(estimates[:, span]):
                continue
            for j in range(sources):
                parts = metrics._bss_decomp_mtifilt(references, estimates[j, span], j, interference[j], spatial[j])
                sdr[j, t] = metrics._bss_crit(*parts, False)[0]
        return sdr


_PROJECTIONS: dict[str, ReferenceProjection] = {}  # the last track's, per process


def reference_projection(references: np.ndarray) -> ReferenceProjection:
    """The :class:`ReferenceProjection` of ``references``, kept for the next call with the same
    references (one track per process: the scoring jobs of a track come one after the other)."""
    import hashlib

    data = np.ascontiguousarray(references)
    digest = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest() + f"{data.shape}{data.dtype}"
    if digest not in _PROJECTIONS:
        _PROJECTIONS.clear()
        _PROJECTIONS[digest] = ReferenceProjection(references)
    return _PROJECTIONS[digest]


def bss_eval_v4_sdr(references: np.ndarray, estimates: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Framewise SDR in dB ``(sources, frames)`` of ``(sources, channels, samples)`` arrays of one
    length: ``museval.evaluate(references, estimates, win, hop, mode="v4")[0]`` without importing
    the museval package (see :func:`museval_metrics`), the references' projection reused from
    the previous call on the same references (:func:`reference_projection`); ``win``/``hop`` in samples."""
    return reference_projection(references).sdr(estimates, win, hop)


def track_sdr(references: np.ndarray, estimates: np.ndarray, sample_rate: int, win_s: float = 1.0,
              hop_s: float = 1.0) -> np.ndarray:
    """Framewise SDR in dB ``(sources, frames)`` of estimates vs. references ``(sources, channels, samples)``.

    NaN marks frames (or whole sources) left out by the silent-stem rules of the module docstring.
    """
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
        sdr[museval_sources] = bss_eval_v4_sdr(references[museval_sources], estimates[museval_sources], win, hop)
    for j in zero_est:
        for t, span in enumerate(frames):
            if not any(_silent(references[k][:, span]) for k in evaluated):
                sdr[j, t] = 0.0
    return sdr


def track_si_snr(references: np.ndarray, estimates: np.ndarray, sample_rate: int, win_s: float = 1.0,
                 hop_s: float = 1.0) -> np.ndarray:
    """Framewise SI-SNR in dB ``(sources, frames)`` over both channels, frames as :func:`track_sdr`'s;
    NaN where the source's reference is silent in the frame (:func:`pipeline.separation.losses.silent`)."""
    if references.shape != estimates.shape:
        raise ValueError(f"references {references.shape} and estimates {estimates.shape} differ in shape")
    win, hop = round(win_s * sample_rate), round(hop_s * sample_rate)
    frames = _frames(references.shape[-1], win, hop)
    ref = torch.stack([torch.from_numpy(np.asarray(references[..., span], dtype=np.float64)).flatten(1)
                       for span in frames], dim=1)  # (sources, frames, channels x win)
    est = torch.stack([torch.from_numpy(np.asarray(estimates[..., span], dtype=np.float64)).flatten(1)
                       for span in frames], dim=1)
    return torch.where(silent(ref), torch.nan, si_snr(est, ref)).numpy()


def load_track(track: StemTrack, sample_rate: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixture ``(channels, T)`` and references ``(4, channels, T)`` at ``sample_rate``, same length."""
    mix, _ = load_mixture(track, sample_rate=sample_rate)
    stems, _ = load_stems(track, sample_rate=sample_rate)
    length = min(mix.shape[-1], stems.shape[-1])
    mix = audio.match_channels(mix[:, :length], channels)
    stems = np.stack([audio.match_channels(s[:, :length], channels) for s in stems])
    return mix, stems


TRIVIAL = "trivial (mixture / 4)"
ORACLE = "oracle (IRM)"
REFERENCE_ROWS = (TRIVIAL, ORACLE)
# The oracle's STFT frames, in seconds so that they are the same at every rate: a Hann window of
# 4096 samples and a hop of 1024 at 44.1 kHz (92.9 ms / 23.2 ms); at 16 kHz 1486 / 372 samples.
ORACLE_WINDOW_S = 4096 / 44_100
ORACLE_HOP_S = 1024 / 44_100


def oracle_stft_size(sample_rate: int, window_s: float = ORACLE_WINDOW_S,
                     hop_s: float = ORACLE_HOP_S) -> tuple[int, int]:
    """``(n_fft, hop)`` in samples at ``sample_rate`` Hz of the oracle's STFT: the window and hop
    in seconds, rounded to the nearest sample."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    return max(2, round(window_s * sample_rate)), max(1, round(hop_s * sample_rate))


def trivial_estimates(mix: np.ndarray, n_sources: int = len(SOURCES)) -> np.ndarray:
    """The "does nothing" row: every source = mixture / 4, ``(sources, channels, samples)``."""
    return np.repeat((np.asarray(mix, dtype=np.float32) / n_sources)[None], n_sources, axis=0)


def oracle_estimates(mix: np.ndarray, references: np.ndarray, sample_rate: int) -> np.ndarray:
    """The "perfect" row: ideal ratio masks from the true stems, ``(sources, channels, samples)``.

    ``torch.stft`` (Hann window of ``n_fft`` samples, ``hop``, centred: :func:`oracle_stft_size`
    at ``sample_rate`` Hz, 92.9 ms and 23.2 ms at any rate) of the mixture
    ``(channels, samples)`` and of each reference ``(sources, channels, samples)``, in float64;
    mask of source j = ``|S_j| / sum_k |S_k|`` per channel and bin (magnitude ratio, sigsep's
    IRM1; 1/4 where every stem is 0); estimate j = the inverse STFT of mask_j x the mixture's STFT.
    """
    n_fft, hop = oracle_stft_size(sample_rate)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    length = mix.shape[-1]

    def stft(x: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(-1, length)
        return torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True)

    magnitude = stft(references).abs().reshape(*references.shape[:2], n_fft // 2 + 1, -1)
    total = magnitude.sum(dim=0, keepdim=True)
    masks = torch.where(total > 0, magnitude / total.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.full_like(magnitude, 1.0 / references.shape[0]))
    spectra = masks * stft(mix)[None]  # (sources, channels, bins, frames)
    out = torch.istft(spectra.reshape(-1, *spectra.shape[2:]), n_fft, hop, window=window, center=True,
                      length=length)
    return out.reshape(references.shape).numpy().astype(np.float32)


def reference_estimates(kind: str, mix: np.ndarray, references: np.ndarray, sample_rate: int) -> np.ndarray:
    """The estimates of reference row ``kind`` (:data:`TRIVIAL` or :data:`ORACLE`) of a track at
    ``sample_rate`` Hz."""
    if kind == TRIVIAL:
        return trivial_estimates(mix, references.shape[0])
    if kind == ORACLE:
        return oracle_estimates(mix, references, sample_rate)
    raise ValueError(f"unknown reference row {kind!r}; known: {REFERENCE_ROWS}")


def evaluate_separator(model: Separator, stem_root: str | os.PathLike, split: str = "test",
                       segment_s: float = 8.0, overlap_s: float = 2.0, device: str | torch.device = "cpu",
                       win_s: float = 1.0, hop_s: float = 1.0,
                       max_tracks: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Separate every track of ``split`` with ``model`` (in this process) and score it.

    Returns the per-track table (one row per track and source: ``track, source, sdr`` = median
    over frames in dB, ``frames``, ``valid_frames``, ``silent_reference``, ``si_snr`` = median
    over frames in dB, ``si_snr_frames``) and its :func:`summarize`.
    """
    tracks = _split_tracks(stem_root, split, max_tracks)
    model = model.to(device)
    rate, channels = model.config.sample_rate, model.config.audio_channels
    rows = []
    for track in tracks:
        mix, references = load_track(track, rate, channels)
        estimates = separate_track(model, mix, segment_s, overlap_s, device)
        rows.extend(score_track(track.name, references, estimates, rate, win_s, hop_s))
    per_track = pd.DataFrame(rows)
    return per_track, summarize(per_track)


def _split_tracks(stem_root: str | os.PathLike, split: str, max_tracks: int | None) -> list[StemTrack]:
    tracks = list_tracks(stem_root, split)[:max_tracks or None]
    if not tracks:
        raise ValueError(f"stem set {stem_root} has no tracks in split {split!r}")
    return tracks


@dataclass(frozen=True)
class Job:
    """One (estimator, track) to score: ``estimator`` is a checkpoint path or a reference row
    name; the reference rows are scored at ``rate`` Hz and ``channels``."""

    run: str
    seed: int | None
    estimator: str
    track: StemTrack
    rate: int
    channels: int
    segment_s: float = 8.0
    overlap_s: float = 2.0


@functools.lru_cache(maxsize=8)
def _cached_model(path: str, mtime_ns: int) -> Separator:
    from pipeline.separation.registry import load_model

    return load_model(path)


def score_job(job: Job) -> list[dict]:
    """Per-source rows of one job (:func:`score_track`'s, with ``run``, ``seed``, ``model``)."""
    if job.estimator in REFERENCE_ROWS:
        mix, references = load_track(job.track, job.rate, job.channels)
        estimates = reference_estimates(job.estimator, mix, references, job.rate)
        model_name, rate = "reference", job.rate
    else:
        model = _cached_model(job.estimator, os.stat(job.estimator).st_mtime_ns)
        rate, model_name = model.config.sample_rate, model.name
        mix, references = load_track(job.track, rate, model.config.audio_channels)
        estimates = separate_track(model, mix, job.segment_s, job.overlap_s)
    rows = score_track(job.track.name, references, estimates, rate)
    return [{"run": job.run, "seed": job.seed, "model": model_name, **row} for row in rows]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def score_jobs(jobs: list[Job], workers: int = 0, progress: bool = True) -> pd.DataFrame:
    """Score every job, in ``workers`` processes (0: every core; 1: in this process), each with
    cores / workers torch threads; the rows come back in the jobs' order, so the table does not
    depend on ``workers``.  Give a track's jobs one after the other: a process keeps the last
    track's reference projection (:func:`reference_projection`)."""
    workers = min(workers or available_cores(), len(jobs)) or 1
    bar = progress_bar(total=len(jobs), desc="evaluate", unit="track", disable=not progress)
    results: list[list[dict] | None] = [None] * len(jobs)
    try:
        if workers == 1:
            for k, job in enumerate(jobs):
                results[k] = score_job(job)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch thread pools
            threads = max(1, available_cores() // workers)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                futures = {pool.submit(score_job, job): k for k, job in enumerate(jobs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
        _PROJECTIONS.clear()  # the last track's projection, held in this process when workers == 1
    return pd.DataFrame([row for rows in results for row in rows])

def score_track(name: str, references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                win_s: float = 1.0, hop_s: float = 1.0) -> list[dict]:
    """Per-source rows (``track, source, sdr, frames, valid_frames, silent_reference, si_snr,
    si_snr_frames``) of one track."""
    sdr = track_sdr(references, estimates, sample_rate, win_s, hop_s)
    sisnr = track_si_snr(references, estimates, sample_rate, win_s, hop_s)
    rows = []
    for j, name_j in enumerate(SOURCES):
        valid = sdr[j][~np.isnan(sdr[j])]
        valid_si = sisnr[j][~np.isnan(sisnr[j])]
        rows.append({"track": name, "source": name_j, "sdr": float(np.median(valid)) if valid.size else math.nan,
                     "frames": int(sdr.shape[1]), "valid_frames": int(valid.size),
                     "silent_reference": _silent(references[j]),
                     "si_snr": float(np.median(valid_si)) if valid_si.size else math.nan,
                     "si_snr_frames": int(valid_si.size)})
    return rows


def summarize(per_track: pd.DataFrame) -> dict[str, float]:
    """Median over tracks of the per-track SDR, per source and ``all``; NaN values are left out.

    Also ``tracks`` (count) and ``excluded_<source>``: tracks whose value for that source is NaN;
    with an ``si_snr`` column, the same medians of it as ``si_snr_<source>`` and ``si_snr_all``.
    """
    summary: dict[str, float] = {}
    for column, prefix in (("sdr", ""), ("si_snr", "si_snr_")):
        if column not in per_track:
            continue
        for name in SOURCES:
            values = per_track.loc[per_track["source"] == name, column]
            summary[prefix + name] = float(values.median()) if values.notna().any() else math.nan
        summary[prefix + "all"] = float(per_track[column].median()) if per_track[column].notna().any() else math.nan
    summary["tracks"] = int(per_track["track"].nunique())
    for name in SOURCES:
        summary[f"excluded_{name}"] = int(per_track.loc[per_track["source"] == name, "sdr"].isna().sum())
    return summary


def compare_runs(results: dict[str, dict[str, float]], metric: str = "sdr") -> pd.DataFrame:
    """One row per run (e.g. "with remix", "without remix"), columns drums, bass, other, vocals, all
    (median ``metric`` in dB: ``"sdr"`` or ``"si_snr"``), like the paper's table 1."""
    prefix = {"sdr": "", "si_snr": "si_snr_"}[metric]
    frame = pd.DataFrame([[summary[prefix + c] for c in SUMMARY_COLUMNS] for summary in results.values()],
                         index=pd.Index(list(results), name="run"), columns=list(SUMMARY_COLUMNS))
    return frame


# What a row says of its run's compute (per seed): the main steps, each scheme's extra steps
# and the examples fed to the separator (summary.json of pipeline.separation.training).
COMPUTE_COLUMNS = ("main_steps", "remix_steps", "critic_steps", "pretrain_steps", "examples")


def run_compute(checkpoint: str | os.PathLike) -> dict[str, int | None]:
    """:data:`COMPUTE_COLUMNS` of the training run that wrote ``checkpoint`` (its ``summary.json``,
    :mod:`pipeline.separation.training`); None where it does not say."""
    path = Path(checkpoint).parent / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    return {column: summary.get(column) for column in COMPUTE_COLUMNS}


def _compute_value(values: list[int | None]) -> float | None:
    """One figure for a row from its seeds' counts: their mean (equal when the budget stopped them)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def comparison_table(per_track: pd.DataFrame, metric: str, compute: dict[str, dict]) -> pd.DataFrame:
    """One row per run (reference rows first): the paper's statistic per source and ``all``,
    then ``mean_all``, ``seed_sd_all`` (spread of ``all`` across seeds), ``seeds`` and
    :data:`COMPUTE_COLUMNS` (per seed; NaN for the reference rows)."""
    statistics = run_statistics(per_track, metric)
    table = statistics["median"][list(SUMMARY_COLUMNS)].copy()
    table["mean_all"] = statistics[("mean", "all")]
    table["seed_sd_all"] = statistics[("seed_sd", "all")]
    for column in ("seeds", *COMPUTE_COLUMNS):
        table[column] = [compute.get(run, {}).get(column) for run in table.index]
    return table.astype({c: float for c in ("seeds", *COMPUTE_COLUMNS)})


def _rounded(value: float, digits: int = 3) -> float | None:
    """``value`` rounded for a manifest (JSON): None for NaN."""
    return None if pd.isna(value) else round(float(value), digits)


def _table_lines(table: pd.DataFrame) -> list[str]:
    shown = table.copy()
    for column in SUMMARY_COLUMNS + ("mean_all", "seed_sd_all"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    for column in ("seeds", *COMPUTE_COLUMNS):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    names = {"seed_sd_all": "sd(seeds)", "main_steps": "main", "remix_steps": "+remix", "critic_steps": "+critic",
             "pretrain_steps": "+pretrain"}
    return shown.rename(columns=names).to_string().splitlines()


def build_evaluate(runs: dict[str, str | os.PathLike | dict[int, str | os.PathLike]], stem_root: str | os.PathLike,
                   out: str | os.PathLike, split: str = "test", max_tracks: int | None = None, workers: int = 0,
                   contrasts: list[tuple[str, str]] | None = None, progress: bool = True) -> StageResult:
    """The evaluate stage: score each run's checkpoint (any registered model, loaded through the
    registry) and the reference rows on ``split``, side by side, with paired contrasts.

    ``runs``: row label -> ``best.pt`` path, or -> ``{seed: best.pt path}`` (a run trained under
    several seeds); every run must have the same sample rate and channel count, at which the
    reference rows (:data:`TRIVIAL`, :data:`ORACLE`) are scored too.  ``contrasts``:
    ``(run, baseline)`` pairs, reported as ``run - baseline``
    (:func:`pipeline.separation.comparison.paired_comparison`); ``None``: every pair of runs.
    ``workers``: scoring processes (0: every core).

    Writes into ``out``: ``per_track.parquet`` (run, seed, model, track, source, sdr, si_snr,
    ...), ``comparison.csv`` / ``.parquet`` (:func:`comparison_table` of SDR),
    ``comparison_si_snr.csv`` / ``.parquet`` (SI-SNR), ``contrasts.csv`` / ``.parquet`` (one
    row per contrast, metric and scope, with ``equal_main_steps``) and ``boxplot_sdr.png`` /
    ``boxplot_si_snr.png``.  Counts ``runs``, ``seeds``, ``tracks``, ``models`` (run -> model),
    the tables as dicts (``comparison``, ``comparison_si_snr``, ``contrasts``: SDR, per contrast
    and scope), ``interval_method`` (how the intervals were made) and ``warning`` (None, or why
    the comparison is too small to conclude: :func:`~pipeline.separation.comparison.too_small_warning`
    of the tracks and the fewest seeds of a run); the summary: the tables and contrasts as text,
    then the interval's method and the warning.
    """
    from pipeline.separation.registry import load_model
    from pipeline.storage.outputs import write_bytes_atomic, write_parquet_atomic

    if not runs:
        raise ValueError("build_evaluate needs at least one run")
    out = Path(out)
    seeded = {label: ({int(k): str(v) for k, v in paths.items()} if isinstance(paths, dict) else {None: str(paths)})
              for label, paths in runs.items()}
    clash = set(seeded) & set(REFERENCE_ROWS)
    if clash or any(not paths for paths in seeded.values()):
        raise ValueError(f"run labels must be new and have a checkpoint: {sorted(clash) or list(seeded)}")
    contrasts = [tuple(pair) for pair in contrasts] if contrasts else default_contrasts(list(seeded))
    for pair in contrasts:
        if len(pair) != 2 or not set(pair) <= set(seeded) | set(REFERENCE_ROWS):
            raise ValueError(f"contrast {list(pair)} must name two rows of {list(seeded) + list(REFERENCE_ROWS)}")
    tracks = _split_tracks(stem_root, split, max_tracks)
    formats = {(label, seed): (model.config.sample_rate, model.config.audio_channels)
               for label, paths in seeded.items() for seed, path in paths.items() for model in [load_model(path)]}
    if len(set(formats.values())) > 1:  # SDRs at different rates or channel counts are not comparable
        raise ValueError(f"the runs compared must share one sample rate and channel count: {formats}")
    rate, channels = next(iter(formats.values()))
    jobs = []  # a track's rows one after the other: each process factorises its references once (ReferenceProjection)
    for track in tracks:
        jobs += [Job(kind, None, kind, track, rate, channels) for kind in REFERENCE_ROWS]
        jobs += [Job(label, seed, path, track, rate, channels) for label, paths in seeded.items()
                 for seed, path in paths.items()]
    per_track = score_jobs(jobs, workers, progress)
    per_track["seed"] = per_track["seed"].astype("float64")  # NaN for the reference rows
    write_parquet_atomic(per_track, out / "per_track.parquet")

    compute = {}
    for label, paths in seeded.items():
        counts = [run_compute(path) for path in paths.values()]
        compute[label] = {"seeds": len(paths),
                          **{column: _compute_value([c[column] for c in counts]) for column in COMPUTE_COLUMNS}}
    result: dict = {"runs": len(seeded), "seeds": max(len(p) for p in seeded.values()), "tracks": len(tracks)}
    summary: list[str] = []
    result["models"] = dict(per_track[~per_track["run"].isin(REFERENCE_ROWS)].groupby("run", sort=False)["model"]
                            .first())
    contrast_rows = []
    for metric, suffix, label in (("sdr", "", "SDR"), ("si_snr", "_si_snr", "SI-SNR")):
        table = comparison_table(per_track, metric, compute)
        write_parquet_atomic(table.reset_index(), out / f"comparison{suffix}.parquet")
        write_bytes_atomic(out / f"comparison{suffix}.csv", table.round(3).to_csv().encode())
        result[f"comparison{suffix}"] = {run: {k: _rounded(v) for k, v in row.items()}
                                         for run, row in table.iterrows()}
        how = "museval v4" if metric == "sdr" else "frugal paper"
        title = (f"median {label} (dB, {how}) over {len(tracks)} {split} tracks (per track: median over 1 s "
                 "frames), mean over tracks, sd across seeds; per seed: main steps, the extra remix, critic "
                 "and pretraining steps on top of them, examples fed to the separator:")
        summary += [title, *_table_lines(table)]
        box_plot(per_track, out / f"boxplot_{metric}.png", metric, f"{label} (dB)")
        for run, baseline in contrasts:
            name = f"{run} - {baseline}"
            paired = paired_comparison(per_track, run, baseline, metric)
            a, b = compute.get(run, {}), compute.get(baseline, {})
            equal = a.get("main_steps") == b.get("main_steps")
            contrast_rows += [{"contrast": name, "run": run, "baseline": baseline, "metric": metric, "scope": scope,
                               **row, "equal_main_steps": equal} for scope, row in paired.iterrows()]
            if metric == "sdr":
                summary += contrast_lines(f"{name}, SDR", paired)
                if not equal and run not in REFERENCE_ROWS and baseline not in REFERENCE_ROWS:
                    summary.append(f"  unequal main steps: {a.get('main_steps')} vs {b.get('main_steps')} "
                                   "(the budget counted extra steps, or a run stopped early)")
    trained_seeds = min(len(paths) for paths in seeded.values())
    warning = too_small_warning(len(tracks), trained_seeds)
    if contrasts:
        summary += [INTERVAL_METHOD, *([warning] if warning else [])]
    result["interval_method"], result["warning"] = INTERVAL_METHOD, warning
    contrast_table = pd.DataFrame(contrast_rows, columns=list(contrast_rows[0]) if contrast_rows else
                                  ["contrast", "run", "baseline", "metric", "scope", "equal_main_steps"])
    write_parquet_atomic(contrast_table, out / "contrasts.parquet")
    write_bytes_atomic(out / "contrasts.csv", contrast_table.round(4).to_csv(index=False).encode())
    result["contrasts"] = {}
    for row in contrast_table[contrast_table["metric"] == "sdr"].itertuples() if len(contrast_table) else ():
        result["contrasts"].setdefault(row.contrast, {})[row.scope] = {
            "median_diff": _rounded(row.median_diff), "ci": [_rounded(row.ci_low), _rounded(row.ci_high)],
            "p": _rounded(row.wilcoxon_p, 4), "tracks": int(row.tracks), "pairs": int(row.pairs),
            "seeds": [int(row.seeds_run), int(row.seeds_baseline)]}
    return StageResult(result, summary)


class SeparatorScorer:
    """A trained separator's second opinion on an excerpt, a
    :data:`pipeline.mining.extraction.Scorer`: :func:`separate_track` (resampled and
    channel-matched to the model first, with soxr), then
    :func:`pipeline.mining.extraction.separator_volumes` at the model's rate."""

    def __init__(self, model: Separator, device: str = "cpu") -> None:
        self.model = model.eval()
        self.device = device

    def __call__(self, excerpt: np.ndarray, sample_rate: int) -> np.ndarray:
        rate, channels = self.model.config.sample_rate, self.model.config.audio_channels
        mixture = audio.match_channels(audio.resample(np.asarray(excerpt, dtype=np.float32), sample_rate, rate),
                                       channels)
        estimates = separate_track(self.model, mixture, device=self.device)
        return separator_volumes(estimates, mixture, rate)
