"""What every separator model provides, and how any of them is applied to any length.

The contract (every model of :mod:`pipeline.separation.registry` follows it):

- ``model.config``: a frozen dataclass (:class:`ModelConfig`) with at least ``sources``,
  ``audio_channels`` and ``sample_rate`` (Hz, metadata: the rate the model is trained and
  applied at), and a dict round trip (``to_dict`` / ``from_dict``);
- ``model(mix)``: a mixture ``(batch, audio_channels, n)`` -> one waveform per source
  ``(batch, sources, audio_channels, model.output_length(n))``; the output is centred on the
  input and never longer (equal for Demucs and TasNet; shorter for ``demucs2019``, whose
  unpadded convolutions eat into the borders);
- ``model.valid_length(n)``: the input length (samples) the model needs so that its output
  covers ``n`` samples: pad the input to it (:func:`pad_to_valid`) and centre-trim the
  output back to ``n`` (:func:`center_trim`); :func:`separate` does both;
- ``model.mixture_consistent``: True when the model projects its estimates to sum to its input
  (the adversarial scheme's additive loss is then 0 by construction).

Targets of a training step are centre-trimmed to the output's length (:func:`center_trim`),
so the trainer, the remix step and the evaluation need nothing model-specific.

Encoder hook (contrastive pretraining, :mod:`pipeline.separation.contrastive`): each model
names the attributes holding its encoder (``encoder_modules``), maps a waveform to the
encoder's latent sequence (``encode``: ``(B, audio_channels, n)`` -> ``(B, D, frames)``) and
pools it into one embedding per item (``embed``: ``(B, D)``, the mean over the frames unless
the model says otherwise); ``encoder_state_dict`` / ``load_encoder_state_dict`` move only the
encoder's weights (and buffers) from one model to another of the same config.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F


def require_known_fields(cls: type, values: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``values`` (a stored config) names a field ``cls`` lacks."""
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")


class ModelConfig:
    """Mixin of a model's frozen config dataclass: the dict round trip of its checkpoints."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        require_known_fields(cls, values)
        return cls(**values)


class Separator(nn.Module, abc.ABC):
    """Base class of the registered models: ``name``, ``config`` and the length rules.

    Subclasses set ``name`` and ``config_class``, implement ``valid_length`` and, when their
    output is shorter than their input, ``output_length``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = ModelConfig
    encoder_modules: ClassVar[tuple[str, ...]] = ()  # attributes that form the encoder
    config: Any

    @abc.abstractmethod
    def valid_length(self, length: int) -> int:
        """Input length (samples) whose output covers ``length`` samples."""

    def output_length(self, length: int) -> int:
        """Output length (samples) for an input of ``length`` samples."""
        return length

    @property
    def mixture_consistent(self) -> bool:
        """Whether the estimates sum to the input by construction (a mixture-consistency projection)."""
        return False

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """The encoder's latent sequence of waveforms ``(B, audio_channels, n)``: ``(B, D, frames)``.

        A model without an encoder (it cannot be pretrained contrastively) says so."""
        raise TypeError(f"{type(self).__name__} has no encoder: the contrastive scheme needs one")

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """One embedding per item, ``(B, D)``: :meth:`encode` averaged over its frames."""
        return self.encode(wav).mean(dim=-1)

    def encoder_parts(self) -> nn.ModuleDict:
        """The encoder's modules (``encoder_modules``) gathered, sharing this model's parameters."""
        if not self.encoder_modules:
            raise ValueError(f"{type(self).__name__} names no encoder modules")
        return nn.ModuleDict({name: getattr(self, name) for name in self.encoder_modules})

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights and buffers, keyed like this model's ``state_dict``."""
        return {f"{name}.{key}": value for name, module in self.encoder_parts().items()
                for key, value in module.state_dict().items()}

    def load_encoder_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`encoder_state_dict` of a model of the same config (every key, nothing else)."""
        expected = set(self.encoder_state_dict())
        if set(state) != expected:
            raise ValueError(f"encoder state does not fit this model: missing {sorted(expected - set(state))[:5]}, "
                             f"unexpected {sorted(set(state) - expected)[:5]}")
        for name, module in self.encoder_parts().items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def check_input(self, mix: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``mix`` is ``(batch, audio_channels, samples)``."""
        channels = self.config.audio_channels
        if mix.dim() != 3 or mix.shape[1] != channels:
            raise ValueError(f"expected (batch, {channels}, samples), got {tuple(mix.shape)}")

    def check_valid_input(self, mix: torch.Tensor) -> None:
        """:meth:`check_input`, and raise ``ValueError`` unless ``mix``'s length is a valid length."""
        self.check_input(mix)
        length = mix.shape[-1]
        if self.valid_length(length) != length:
            raise ValueError(f"length {length} is not a valid length (next valid: {self.valid_length(length)}); "
                             "pad with contract.pad_to_valid or call contract.separate()")


def center_trim(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """The centred ``length`` samples of ``(..., n)``; ``(n - length) // 2`` are cut on the left."""
    extra = tensor.shape[-1] - length
    if extra < 0:
        raise ValueError(f"cannot trim {tensor.shape[-1]} samples to {length}")
    return tensor[..., extra // 2:tensor.shape[-1] - (extra - extra // 2)]


def pad_to_valid(model: Separator, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(..., n)`` to ``model.valid_length(n)``, centred: returns the padded tensor and
    ``(left, right)`` in samples (``left = (valid - n) // 2``, the extra sample goes right)."""
    n = x.shape[-1]
    extra = model.valid_length(n) - n
    left = extra // 2
    return F.pad(x, (left, extra - left)), (left, extra - left)


def separate(model: Separator, mix: torch.Tensor) -> torch.Tensor:
    """Apply ``model`` to a mixture of any length: ``(B, C, n)`` -> ``(B, sources, C, n)``."""
    padded, _ = pad_to_valid(model, mix)
    return center_trim(model(padded), mix.shape[-1])
