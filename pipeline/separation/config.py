"""What a separator run is: its frozen config (:class:`TrainConfig`), its scheme and its budget.

:class:`RunConfig` holds what every run (training, encoder pretraining) has: the model's name
and config, the seed, and run-time knobs that do not change the result; :class:`TrainConfig`
adds the training recipe, the scheme's settings and the budget.  Defaults are the Demucs
paper's where it gives them; :meth:`TrainConfig.for_model` starts from another model's recipe
(its registry entry, :mod:`pipeline.separation.registry`).

Schemes (:data:`SCHEMES`): ``supervised`` (the model's recipe only), ``remix`` (the default:
the remix step when a D_i is given), ``adversarial``, ``contrastive``, and their combinations
joined by ``+`` in the order of :data:`SCHEME_PARTS` (``remix+adversarial``, ...); what each
part does is in :mod:`pipeline.separation.schemes`.

Budget: ``max_updates`` (optimizer steps) and ``max_examples`` (training examples fed, over
all ranks); ``None``: no limit.  ``budget`` says what they count:

- ``"main"`` (default, the Demucs paper's protocol): the main steps and their supervised
  examples only; a scheme's extra steps (remix steps, critic steps) and their examples come on
  top, so a remix run makes as many main steps as the plain run it is compared with;
- ``"total"``: every separator update (main and remix) and every example fed to the separator
  (main, remix and unlabelled batches): the runs compared spend equal totals, and a remix run
  makes fewer main steps (about a fifth fewer at the remix probability 0.25).

A step runs only while it keeps both counts within their budget, so a run ends at its
budget exactly (or at ``epochs``, whichever comes first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from pipeline.separation import adversarial, registry
from pipeline.separation.contract import require_known_fields
from pipeline.separation.data import DEFAULT_MEMORY_LIMIT
from pipeline.separation.losses import LOSSES

LR_SCHEDULES = ("step", "plateau")
BUDGETS = ("main", "total")
SCHEME_PARTS = ("remix", "adversarial", "contrastive")  # the canonical order of a combined scheme
SCHEMES = (
    "supervised",
    "remix",
    "adversarial",
    "contrastive",
    "remix+adversarial",
    "remix+contrastive",
    "adversarial+contrastive",
    "remix+adversarial+contrastive",
)


def scheme_parts(scheme: str) -> tuple[str, ...]:
    """The parts of ``scheme`` in canonical order (``()`` for ``supervised``); ``ValueError`` otherwise."""
    parts = [] if scheme == "supervised" else scheme.split("+")
    if (
        any(p not in SCHEME_PARTS for p in parts)
        or len(set(parts)) != len(parts)
        or (scheme != "supervised" and not parts)
    ):
        raise ValueError(f"scheme must be one of {SCHEMES} (parts in any order), got {scheme!r}")
    return tuple(p for p in SCHEME_PARTS if p in parts)


def canonical_scheme(scheme: str) -> str:
    """``scheme`` spelt as in :data:`SCHEMES` (``adversarial+remix`` -> ``remix+adversarial``)."""
    return "+".join(scheme_parts(scheme)) or "supervised"


@dataclass(frozen=True)
class RunConfig:
    """Base of a run's frozen config dataclass (training, pretraining): the fields every run has,
    its dict round trip and the fields that determine the result (all but ``runtime_fields``).

    ``model_name``: a registered model (:mod:`pipeline.separation.registry`); ``model``: its
    config (a dict of fields is accepted; ``None``: the model's defaults); ``seed``; and the
    run-time knobs ``num_threads`` (torch threads; None: torch's), ``lazy`` (stems read from
    disk per window; None: when they exceed ``memory_limit_bytes``).
    """

    runtime_fields: ClassVar[tuple[str, ...]] = ()

    model_name: str = "demucs"
    model: Any = None
    seed: int = 0
    num_threads: int | None = None
    lazy: bool | None = None
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", registry.make_config(self.model_name, self.model))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)  # type: ignore[call-overload]
        values["model"] = self.model.to_dict()  # type: ignore[attr-defined]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        require_known_fields(cls, values)
        return cls(**values)

    def significant(self) -> dict[str, Any]:
        """The fields that determine the result (everything but the run-time knobs)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.runtime_fields}

    def changed_fields(self, other: "RunConfig") -> list[str]:
        """Names of the significant fields whose values differ between ``self`` and ``other``."""
        mine, theirs = self.significant(), other.significant()
        return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Training parameters; defaults are the Demucs paper's where it gives them.

    ``model_name`` names a registered model, ``model`` is its config (a dict of fields is
    accepted; ``None``: the model's defaults).  Use :meth:`for_model` to start from another
    model's recipe.  ``batch_size`` is global (split evenly over the ranks).
    ``batches_per_epoch=None`` uses the paper's epoch: every ``window_s`` extract at a stride
    of ``epoch_hop_s`` (``None``: ``window_s``, non-overlapping extracts) once, divided by the
    batch size.  ``max_shift_s`` (time-shift range) is not given by the paper.  The budget
    (``max_updates``, ``max_examples``, ``budget``): see the module docstring.
    """

    # Fields that do not change the numbers a run computes (they may differ when resuming).
    # The budget's limits say where to stop, like epochs: raising one continues a run.
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "epochs", "max_updates", "max_examples", "num_threads", "lazy", "memory_limit_bytes")

    epochs: int = 400
    max_updates: int | None = None
    max_examples: int | None = None
    budget: str = "main"  # BUDGETS: what max_updates and max_examples count
    batches_per_epoch: int | None = None
    batch_size: int = 128
    window_s: float = 5.0
    epoch_hop_s: float | None = 0.5
    max_shift_s: float = 0.2
    flip_sign: bool = True
    flip_channels: bool = True
    shuffle_sources: bool = True
    loss: str = "l1"
    lr: float = 5e-4
    grad_clip: float | None = None
    lr_schedule: str = "step"
    lr_decay: float = 5.0
    lr_decay_every: int = 160  # epochs, "step" schedule
    lr_patience: int = 3  # stale epochs before a decay, "plateau" schedule
    early_stop_patience: int | None = None
    remix_probability: float = 0.25
    remix_lambda: float = 1e-6
    remix_lr_factor: float = 0.1
    remix_batch_size: int | None = None  # None: batch_size
    scheme: str = "remix"  # SCHEMES; "remix" runs the remix step only when a D_i is given
    critic_sources: tuple[str, ...] = ("vocals",)  # sources with a critic (adversarial)
    adversarial_alpha: float | None = None  # None: adversarial.default_weight(critic_sources)
    adversarial_beta: float | None = None  # None: alpha
    critic_steps: int = adversarial.N_DISC
    critic_lr: float = adversarial.CRITIC_LR
    critic_gp_weight: float = adversarial.GP_WEIGHT
    critic_width: int = adversarial.CRITIC_WIDTH
    critic_n_fft: int = 1024  # samples at the model's rate
    critic_hop: int = 512
    unlabelled_scale: tuple[float, float] = adversarial.UNLABELLED_SCALE
    unlabelled_batch_size: int | None = None  # None: batch_size
    valid_max_windows: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scheme", canonical_scheme(self.scheme))
        object.__setattr__(self, "critic_sources", tuple(self.critic_sources))
        object.__setattr__(self, "unlabelled_scale", tuple(float(v) for v in self.unlabelled_scale))
        if "adversarial" in self.parts:
            self.adversarial_settings()  # validates the critics' fields
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")
        for name in ("max_updates", "max_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {getattr(self, name)}")
        if self.lr_patience < 1 or (self.early_stop_patience is not None and self.early_stop_patience < 1):
            raise ValueError("lr_patience and early_stop_patience must be >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The config stored as ``values``; one stored without ``budget`` counted every update
        and example against its budget (``"total"``)."""
        return super().from_dict({"budget": "total", **values})

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts of :attr:`scheme` (:func:`scheme_parts`)."""
        return scheme_parts(self.scheme)

    def adversarial_settings(self) -> adversarial.AdversarialSettings:
        """The critics' settings, with alpha and beta resolved (section 4.3.4 defaults)."""
        alpha = (
            adversarial.default_weight(self.critic_sources)
            if self.adversarial_alpha is None
            else self.adversarial_alpha
        )
        beta = alpha if self.adversarial_beta is None else self.adversarial_beta
        low, high = self.unlabelled_scale
        return adversarial.AdversarialSettings(
            self.critic_sources,
            alpha,
            beta,
            self.critic_steps,
            self.critic_lr,
            self.critic_gp_weight,
            self.critic_width,
            self.critic_n_fft,
            self.critic_hop,
            low,
            high,
        )

    @classmethod
    def for_model(cls, model_name: str, **overrides: Any) -> "TrainConfig":
        """The recipe of ``model_name`` (its registry entry), then ``overrides`` (TrainConfig fields)."""
        values = {**registry.get(model_name).recipe, **overrides, "model_name": model_name}
        require_known_fields(cls, values)
        return cls(**values)
