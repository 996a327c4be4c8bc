"""Adversarial source priors: per-source Wasserstein critics on unlabelled mixtures.

``papers/adversarial-semi-supervised-separation.txt``, sections 3-4.  One critic ``D_k``
per source ``k`` of :attr:`AdversarialSettings.sources` learns to tell *real* excerpts of that
source (isolated stems of the stem set's train split) from the separator's *estimates* of it
on unlabelled mixtures (random excerpts of catalog tracks,
:mod:`pipeline.separation.unlabelled`).  The separator minimises::

    L = L_s + alpha L_u + beta L_add
    L_u   = sum_k -E[D_k(f(m)_k)]                               (the generator side of W_P, eq. 3)
    L_add = 1/U sum_i ||sum_k f(m_i)_k - m_i||_2 / sqrt(C T)     (eq. 5, per element)

``L_s`` is the model's own main loss (L1 or SI-SNR, :mod:`pipeline.separation.losses`).

The paper's scale.  In the paper ``L_s`` (eq. 1) and ``L_add`` (eq. 5) are L2 norms per item
and the critics work on the separator's own output (magnitude spectrograms): per item, the
gradient of ``L_s`` at the separator's output has norm 1, that of ``L_add`` norm ``sqrt(K)``
(a unit gradient reaching each of the K estimates), and the gradient penalty (eq. 4) holds
each critic's gradient to norm 1 at most, so alpha and beta are, in effect, the ratios of the
adversarial and additive gradients to the supervised one.  Here ``L_s`` is a per-element L1
(gradient norm ``1 / sqrt(S C T)`` per item) or an SI-SNR in dB, and the critics see
spectrograms computed from waveform estimates, so raw weights would mean something else for
every loss and size (eq. (5) unnormalised, next to the L1 of 5 s of 44.1 kHz stereo, would
outweigh it about ``sqrt(S C T) beta`` = 13-fold at beta = 0.01).  So
:meth:`AdversarialTraining.output_gradient` sets the ratios themselves: at the separator's
output, per item (:func:`item_norm`), each critic's term gets gradient norm ``alpha`` times
``L_s``'s, and ``L_add`` gets ``beta sqrt(S)`` times ``L_s``'s (S sources), the paper's ratios
with its critics at their bound.  ``L_add`` is reported per element (the root
mean square of the residual ``sum_k f(m)_k - m``, the same units as the mixture), so its value
reads like a per-element L1.

When the separator projects its estimates to sum to its input (TasNet's ``consistency``,
``model.mixture_consistent``), the residual is 0 by construction: ``L_add`` is identically 0
(float rounding aside) and beta has no effect; the term is then left out, and the run says so
(``summary.json``: ``additive_loss_vanishes``, ``additive_loss_max``).

After each separator step, ``N_disc = 5`` Adam steps (lr 5e-5) of every critic on the
Wasserstein loss with the one-sided gradient penalty of eq. (4)::

    L_D = E[D(fake)] - E[D(real)] + gp_weight * E_{x ~ p_hat} max(||grad_x D(x)||_2 - 1, 0)^2

with ``x = eps * real + (1 - eps) * fake``, ``eps ~ U(0, 1)`` per item, on the critic's input
(the log-magnitudes below), using one shared batch of estimates and one batch of real
excerpts for the five steps (section 3.3).  ``gp_weight`` is not given by the paper: 10, as
in the improved Wasserstein GAN it follows.

Critic input (section 4.3.1): the waveform downmixed to mono, ``|STFT|`` (Hann window,
``n_fft`` / ``hop`` samples at the model's rate) computed differentiably with ``torch.stft``,
normalised by ``x -> log(1 + x)``: ``(B, 1, n_fft // 2 + 1 bins, frames)``.  Unlabelled
mixtures are multiplied by a factor drawn uniformly from [0.2, 1.2] per item before the
separator sees them: the STFT is linear, so their magnitudes are scaled by it, as in the paper.

Critic architecture (section 4.3.3, DCGAN-like, :class:`Critic`): four Conv2d 4x4, stride 2,
zero padding 1 (``width``, 2, 4, 8 x ``width`` channels, ``width = 32``), then two Conv2d 4x2
with stride 2x1 (frequency x time, padding 1) across frequency bands, LeakyReLU(0.2) after
each, a dense layer of 32 units (LeakyReLU) and one linear output.  No batch norm: the
gradient penalty is per sample, which batch statistics would break (as in WGAN-GP).

alpha = beta default 0.01 with a single (vocals) critic and 0.001 with more (section 4.3.4,
:func:`default_weight`).  All critics form one :class:`CriticBank` (one module, one Adam,
wrapped in DistributedDataParallel when distributed; it is called once per step on
``real | fake | interpolates`` concatenated so DDP sees one forward per backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.sources import SOURCES

N_DISC = 5  # critic steps per separator step (section 4.3.4)
# How alpha L_u and beta L_add are scaled next to L_s (the module docstring); it names the rule in
# the keys of adversarial runs, so a different rule gives new runs.
LOSS_SCALE = "gradient ratios to L_s; L_add per element"
CRITIC_LR = 5e-5  # Adam, section 4.3.4
GP_WEIGHT = 10.0  # weight of eq. (4): the improved WGAN's (the paper gives none)
WEIGHT_ONE_CRITIC = 0.01  # alpha = beta with the vocals critic only
WEIGHT_ALL_CRITICS = 0.001  # alpha = beta with every critic
UNLABELLED_SCALE = (0.2, 1.2)  # magnitudes of the unlabelled mixtures times U(0.2, 1.2)
CRITIC_WIDTH = 32  # filters of the first critic layer
CRITIC_DENSE = 32  # units of the dense layer before the output
LEAKY_SLOPE = 0.2


def default_weight(critic_sources: tuple[str, ...] | list[str]) -> float:
    """alpha (= beta) of section 4.3.4: 0.01 with one critic, 0.001 with several."""
    return WEIGHT_ONE_CRITIC if len(critic_sources) <= 1 else WEIGHT_ALL_CRITICS


def source_indices(critic_sources: tuple[str, ...] | list[str]) -> list[int]:
    """Indices into :data:`~pipeline.sources.SOURCES`; ``ValueError`` for unknown or repeated names."""
    if not critic_sources:
        raise ValueError("the adversarial scheme needs at least one critic source")
    unknown = [s for s in critic_sources if s not in SOURCES]
    if unknown or len(set(critic_sources)) != len(critic_sources):
        raise ValueError(f"critic sources must be distinct names of {SOURCES}, got {list(critic_sources)}")
    return [SOURCES.index(s) for s in critic_sources]


def log_magnitude(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Critic input of waveforms ``(B, C, T)``: ``log(1 + |STFT(mono)|)`` as ``(B, 1, n_fft // 2 + 1, frames)``.

    Differentiable (``torch.stft``, Hann window of ``n_fft`` samples, hop ``hop``, centred frames).
    """
    mono = wav.mean(dim=1)
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(mono, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    return torch.log1p(spec.abs())[:, None]


def spectrogram_shape(samples: int, n_fft: int, hop: int) -> tuple[int, int]:
    """``(bins, frames)`` of :func:`log_magnitude` for ``samples`` samples."""
    return n_fft // 2 + 1, samples // hop + 1


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class Critic(nn.Module):
    """One source's critic: ``(B, 1, bins, frames)`` log-magnitudes -> ``(B,)`` scores (see module doc).

    ``input_shape`` = ``(bins, frames)`` it is built for (the dense layer's size depends on it);
    ``ValueError`` when the input is too small for the six strided layers.
    """

    def __init__(self, input_shape: tuple[int, int], width: int = CRITIC_WIDTH, dense: int = CRITIC_DENSE) -> None:
        super().__init__()
        bins, frames = input_shape
        layers: list[nn.Module] = []
        chin = 1
        for k in range(4):
            chout = width * 2 ** k
            layers += [nn.Conv2d(chin, chout, 4, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            bins, frames, chin = _conv_out(bins, 4, 2, 1), _conv_out(frames, 4, 2, 1), chout
        for _ in range(2):
            layers += [nn.Conv2d(chin, chin, (4, 2), stride=(2, 1), padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            bins, frames = _conv_out(bins, 4, 2, 1), _conv_out(frames, 2, 1, 1)
        if bins < 1 or frames < 1:
            raise ValueError(f"critic input {tuple(input_shape)} (bins, frames) is too small for its six strided "
                             "layers: use a longer window, a larger n_fft or a smaller hop")
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chin * bins * frames, dense), nn.LeakyReLU(LEAKY_SLOPE),
                                  nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_shape:
            raise ValueError(f"critic built for {self.input_shape} (bins, frames), got {tuple(x.shape[-2:])}")
        return self.head(self.features(x))[:, 0]


class CriticBank(nn.Module):
    """The critics of several sources as one module: ``(K, B, 1, bins, frames)`` -> ``(K, B)``."""

    def __init__(self, sources: list[str], input_shape: tuple[int, int], width: int = CRITIC_WIDTH) -> None:
        super().__init__()
        self.sources = list(sources)
        self.critics = nn.ModuleList(Critic(input_shape, width) for _ in sources)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.critics):
            raise ValueError(f"expected inputs for {len(self.critics)} critics, got {x.shape[0]}")
        return torch.stack([critic(part) for critic, part in zip(self.critics, x)])


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``eps * real + (1 - eps) * fake`` with ``eps`` ``(..., B)`` broadcast over each item's sample."""
    shape = eps.shape + (1,) * (real.dim() - eps.dim())
    return eps.reshape(shape) * real + (1 - eps.reshape(shape)) * fake


def one_sided_penalty(scores: torch.Tensor, inputs: torch.Tensor, item_dims: int = 3) -> torch.Tensor:
    """Eq. (4), ``mean max(||grad_x D(x)||_2 - 1, 0)^2`` over the leading dimensions of ``scores``.

    ``scores`` are the critic's outputs on ``inputs`` (which require grad), one score per item;
    each item of ``inputs`` spans its last ``item_dims`` dimensions.  Keeps the graph (the
    penalty is trained through).
    """
    grad, = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    norms = grad.flatten(-item_dims).norm(dim=-1)
    return F.relu(norms - 1).pow(2).mean(dim=-1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. (4) for one critic on interpolates of ``real`` and ``fake`` ``(B, ...)`` with weights ``eps`` ``(B,)``."""
    points = interpolate(real, fake.detach(), eps).detach().requires_grad_(True)
    return one_sided_penalty(critic(points), points, real.dim() - 1)


def critic_loss(bank: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor,
                gp_weight: float = GP_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Wasserstein loss with eq. (4) of every critic, summed: ``real``/``fake`` ``(K, B, 1, F, T)``, ``eps`` ``(K, B)``.

    One call of ``bank`` on ``real | fake | interpolates`` (concatenated over the batch).
    Returns the loss and, per critic, ``gap`` = ``E D(real) - E D(fake)`` (the Wasserstein
    estimate) and ``penalty`` (eq. 4), each ``(K,)`` and detached.
    """
    batch = real.shape[1]
    fake = fake.detach()
    points = interpolate(real, fake, eps).detach().requires_grad_(True)
    scores = bank(torch.cat([real, fake, points], dim=1))
    on_real, on_fake, on_points = scores[:, :batch], scores[:, batch:2 * batch], scores[:, 2 * batch:]
    penalty = one_sided_penalty(on_points, points)
    gap = on_real.mean(dim=1) - on_fake.mean(dim=1)
    loss = (-gap + gp_weight * penalty).sum()
    return loss, {"gap": gap.detach(), "penalty": penalty.detach()}


def additive_loss(estimates: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Eq. (5) per element: mean over items of ``||sum_k estimates_k - mixture||_2 / sqrt(C T)``, the
    root mean square of each item's residual; ``(B, S, C, T)`` and ``(B, C, T)``."""
    residual = (estimates.sum(dim=1) - mixture).flatten(1)
    return (residual.norm(dim=1) / math.sqrt(residual.shape[1])).mean()


def item_norm(grad: torch.Tensor) -> float:
    """Per-item gradient norm of a loss that averages over the items of ``grad`` ``(B, ...)``:
    ``sqrt(B) ||grad||_2``, the root mean square over items of the norm of each item's own gradient."""
    return float(grad.norm()) * math.sqrt(grad.shape[0])


@dataclass(frozen=True)
class AdversarialSettings:
    """What the adversarial scheme needs (from :class:`~pipeline.separation.config.TrainConfig`)."""

    sources: tuple[str, ...]
    alpha: float
    beta: float
    critic_steps: int = N_DISC
    critic_lr: float = CRITIC_LR
    gp_weight: float = GP_WEIGHT
    width: int = CRITIC_WIDTH
    n_fft: int = 1024
    hop: int = 512
    scale_low: float = UNLABELLED_SCALE[0]
    scale_high: float = UNLABELLED_SCALE[1]

    def __post_init__(self) -> None:
        source_indices(self.sources)
        if self.critic_steps < 1 or self.critic_lr <= 0 or self.gp_weight < 0:
            raise ValueError("critic_steps must be >= 1, critic_lr > 0 and gp_weight >= 0")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if not 0 < self.scale_low <= self.scale_high:
            raise ValueError(f"unlabelled scale range must satisfy 0 < low <= high, got "
                             f"[{self.scale_low}, {self.scale_high}]")
        if self.n_fft < 2 or not 1 <= self.hop <= self.n_fft:
            raise ValueError(f"critic STFT needs n_fft >= 2 and 1 <= hop <= n_fft, got {self.n_fft}, {self.hop}")


class AdversarialTraining:
    """The critics of one run, their optimizer and random streams; used by the separator trainer.

    ``output_samples``: length of the separator's output windows (the critics' input size).
    ``generator``: a CPU ``torch.Generator`` for the interpolation weights (checkpointed by the
    caller through :meth:`state_dict`).  ``wrap``: wraps the bank for DDP (identity otherwise).
    """

    def __init__(self, settings: AdversarialSettings, output_samples: int, device: torch.device,
                 generator: torch.Generator, wrap=lambda module: module, additive_vanishes: bool = False) -> None:
        self.settings = s = settings
        self.additive_vanishes = additive_vanishes
        self.indices = source_indices(s.sources)
        self.device, self.generator = device, generator
        self.bank = CriticBank(list(s.sources), spectrogram_shape(output_samples, s.n_fft, s.hop), s.width).to(device)
        self.net = wrap(self.bank)
        self.optimizer = torch.optim.Adam(self.bank.parameters(), lr=s.critic_lr)

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """``(B, S, C, T)`` -> the critic sources' log-magnitudes ``(K, B, 1, bins, frames)``."""
        return torch.stack([log_magnitude(waves[:, k], self.settings.n_fft, self.settings.hop)
                            for k in self.indices])

    def scale(self, mixtures: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unlabelled mixtures ``(B, C, T)`` times a factor ``U(low, high)`` per item."""
        factors = rng.uniform(self.settings.scale_low, self.settings.scale_high, size=len(mixtures))
        return (mixtures * factors[:, None, None]).astype(np.float32)

    def separator_terms(self, estimates: torch.Tensor, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_u, L_add)`` on estimates ``(B, S, C, T)`` of unlabelled mixtures ``(B, C, T)`` (trimmed to ``T``).

        ``L_u = sum_k -mean D_k(estimate_k)``; gradients reach the separator only (the bare
        critics are used, with their parameters frozen for the call).
        """
        self.bank.requires_grad_(False)
        try:
            scores = self.bank(self.features(estimates))
        finally:
            self.bank.requires_grad_(True)
        return -scores.mean(dim=1).sum(), additive_loss(estimates, mixture)

    def output_gradient(self, estimates: torch.Tensor, mixture: torch.Tensor,
                        main_norm: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The gradient of ``alpha L_u + beta L_add`` at the estimates ``(B, S, C, T)`` of unlabelled
        mixtures ``(B, C, T)``, each term scaled to the paper's ratio to ``L_s`` (module docstring).

        ``estimates`` must be part of the separator's graph; ``main_norm``: :func:`item_norm` of
        ``L_s``'s gradient at the supervised estimates.  Returns the gradient (to be back-propagated
        from ``estimates`` with the main loss's) and the step's values: ``adversarial_loss`` (L_u),
        ``additive_loss`` (L_add per element) and ``alpha_effective`` / ``beta_effective``, the
        weights that give those ratios (the mean over critics for alpha; 0 where a term has no
        gradient or vanishes).
        """
        s = self.settings
        l_u, l_add = self.separator_terms(estimates, mixture)
        grad = torch.zeros_like(estimates)
        (grad_u,) = torch.autograd.grad(l_u, estimates, retain_graph=True)
        alphas = []
        for k in self.indices:  # each critic sees only its source: its gradient is that slice
            norm = item_norm(grad_u[:, k])
            alphas.append(s.alpha * main_norm / norm if norm > 0 else 0.0)
            grad[:, k] += alphas[-1] * grad_u[:, k]
        beta = 0.0
        if s.beta > 0 and not self.additive_vanishes:
            (grad_add,) = torch.autograd.grad(l_add, estimates, retain_graph=True)
            norm = item_norm(grad_add)
            beta = s.beta * math.sqrt(estimates.shape[1]) * main_norm / norm if norm > 0 else 0.0
            grad += beta * grad_add
        return grad, {"adversarial_loss": float(l_u.detach()), "additive_loss": float(l_add.detach()),
                      "alpha_effective": float(np.mean(alphas)), "beta_effective": beta}

    def train_critics(self, real_sources: torch.Tensor, estimates: torch.Tensor) -> dict[str, float]:
        """``critic_steps`` Adam steps on one batch of real sources and one of estimates, both ``(B, S, C, T)``.

        Returns the last step's mean ``gap`` and ``penalty`` over the critics and the per-source gaps.
        """
        real = self.features(real_sources)
        with torch.no_grad():
            fake = self.features(estimates.detach())
        stats: dict[str, torch.Tensor] = {}
        for _ in range(self.settings.critic_steps):
            eps = torch.rand(real.shape[:2], generator=self.generator).to(self.device)
            loss, stats = critic_loss(self.net, real, fake, eps, self.settings.gp_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"critic_gap": float(stats["gap"].mean()), "critic_penalty": float(stats["penalty"].mean())}
        out.update({f"critic_gap_{name}": float(g) for name, g in zip(self.settings.sources, stats["gap"])})
        return out

    def state_dict(self) -> dict:
        return {"critics": self.bank.state_dict(), "critic_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state["critics"])
        self.optimizer.load_state_dict(state["critic_optimizer"])
