"""The separators' losses: L1 (Demucs), SI-SNR (TasNet) and the remix loss (3).

All take estimates and targets of the same shape ``(B, S, C, T)`` (targets centre-trimmed
to the model's output beforehand).  ``*_totals`` give ``(sum, count)`` so that a validation
pass over many batches (and ranks) averages exactly like one big batch.

SI-SNR (frugal paper 2.5), per (item, source), over both channels and all samples of the
source at once (one scale for both channels, so the stereo image is kept)::

    s_t = <s, s_hat> / ||s||^2 s,   e = s_hat - s_t,   SI-SNR = 10 log10(||s_t||^2 / ||e||^2)

No mean removal (the formula as the paper gives it).  Guards, so it is never NaN or
infinite: the ratio is ``(||s_t||^2 + tiny) / (||e||^2 + eps ||s_t||^2 + tiny)`` with
``eps = 1e-8``, which caps a perfect estimate at 80 dB and gives an all-zero estimate 0 dB.

Silent targets: a target whose mean square is at most :data:`SILENT_MEAN_SQUARE` (-100 dBFS)
is left out of the SI-SNR loss: it contributes nothing and is not counted in the mean.  Scale
invariance cannot score it (every non-zero estimate of silence is infinitely worse than zero),
and any finite stand-in would outweigh the sources that are there.  A batch whose targets are
all silent has loss 0 with zero gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

SILENT_MEAN_SQUARE = 1e-10  # -100 dBFS: quieter targets are silent for the SI-SNR loss
SI_SNR_EPS = 1e-8  # caps SI-SNR at 10 log10(1 / eps) = 80 dB
_TINY = 1e-30


def l1_loss(estimates: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Main loss of Demucs: mean absolute error per element of ``(B, S, C, T)`` estimates vs. sources."""
    return (estimates - sources).abs().mean()


def l1_totals(estimates: torch.Tensor, sources: torch.Tensor) -> tuple[float, int]:
    """``(sum of absolute errors (float64), number of elements)``."""
    return float((estimates - sources).abs().sum(dtype=torch.float64)), sources.numel()


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = SI_SNR_EPS) -> torch.Tensor:
    """SI-SNR in dB over the last dimension: ``(..., T)`` -> ``(...)`` (see the module docstring).

    A silent reference gives a meaningless (very negative) finite value: mask it with
    :func:`silent`.
    """
    energy = (reference * reference).sum(-1, keepdim=True)
    dot = (reference * estimate).sum(-1, keepdim=True)
    target = dot / energy.clamp_min(_TINY) * reference
    noise = estimate - target
    t = (target * target).sum(-1)
    n = (noise * noise).sum(-1)
    return 10 * torch.log10((t + _TINY) / (n + eps * t + _TINY))


def silent(reference: torch.Tensor) -> torch.Tensor:
    """Whether the mean square over the last dimension is at most :data:`SILENT_MEAN_SQUARE`."""
    return (reference * reference).mean(-1) <= SILENT_MEAN_SQUARE


def _per_source(estimates: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative SI-SNR ``(B, S)`` over channels x samples, and the mask of non-silent targets."""
    est, ref = estimates.flatten(2), sources.flatten(2)
    return -si_snr(est, ref), ~silent(ref)


def si_snr_loss(estimates: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Main loss of TasNet: mean negative SI-SNR (dB) over the non-silent (item, source) targets."""
    values, keep = _per_source(estimates, sources)
    return (values * keep).sum() / keep.sum().clamp_min(1)


def si_snr_totals(estimates: torch.Tensor, sources: torch.Tensor) -> tuple[float, int]:
    """``(sum of negative SI-SNR over non-silent targets (float64), their count)``."""
    values, keep = _per_source(estimates, sources)
    return float((values * keep).sum(dtype=torch.float64)), int(keep.sum())


def remix_loss(estimates: torch.Tensor, source_index: int, stem: torch.Tensor, excerpt: torch.Tensor,
               lam: float) -> torch.Tensor:
    """Loss (3) of the Demucs paper on estimates ``(B, S, C, T)`` of ``s' = stem + excerpt``.

    ``stem`` ``(B, C, T)`` is ``s_i``, ``excerpt`` ``(B, C, T)`` is ``m_i``: strong supervision of
    source ``source_index``, weak supervision (weight ``lam``) of the sum of the others; both
    terms are mean absolute errors per element.  The same for every model.
    """
    others = torch.cat([estimates[:, :source_index], estimates[:, source_index + 1:]], dim=1).sum(dim=1)
    strong = (estimates[:, source_index] - stem).abs().mean()
    weak = (others - excerpt).abs().mean()
    return strong + lam * weak


@dataclass(frozen=True)
class Loss:
    """A main-step loss: the differentiable ``fn`` and the ``totals`` of a validation pass."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    totals: Callable[[torch.Tensor, torch.Tensor], tuple[float, int]]
    label: str


LOSSES: dict[str, Loss] = {
    "l1": Loss(l1_loss, l1_totals, "L1 (mean abs. error per sample)"),
    "si_snr": Loss(si_snr_loss, si_snr_totals, "negative SI-SNR (dB)"),
}
