"""The serialisable description of a training run and its fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SpecError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
OPTIMIZERS = ("sgd", "momentum", "adamw", "rmsprop")
SCHEDULES = ("constant", "warmup_linear", "cosine")
LOSSES = ("cross_entropy",)


@dataclass(frozen=True)
class TrainingSpec:
    """Everything that determines a training run, so that training is a pure function of it.

    The batch order, the initialisation and any per-step randomness all derive from
    ``seed``; the data weights are the only other input to ``train``.
    """

    dataset: str = "digits"
    n_train: int = 1000
    n_test: int = 500
    architecture: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    n_heads: int = 1
    sequence_length: int = 32
    activation: str = "gelu"
    output_scale: float = 0.1
    loss: str = "cross_entropy"
    optimizer: str = "momentum"
    lr: float = 0.1
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_fraction: float = 0.1
    batch_size: int = 100
    epochs: int = 10
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise SpecError naming the first invalid field and the accepted values."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        _choice("dtype", self.dtype, tuple(DTYPES))
        _choice("architecture", self.architecture, ("mlp", "cnn", "gpt"))

        for name in ("n_train", "n_test", "batch_size", "epochs", "n_heads", "sequence_length"):
            _positive_int(name, getattr(self, name))
        if self.batch_size > self.n_train:
            raise SpecError(
                f"batch_size={self.batch_size} exceeds n_train={self.n_train}; "
                "use a batch size at most the number of training examples"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError(f"seed={self.seed!r} must be a non-negative integer")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise SpecError(
                f"checkpoint_every={self.checkpoint_every!r} must be 0 (only the first and "
                "last state) or a positive number of steps"
            )

        for name in ("lr", "output_scale"):
            _finite(name, getattr(self, name), low=0.0, low_open=True)
        _finite("weight_decay", self.weight_decay, low=0.0)
        _finite("momentum", self.momentum, low=0.0, high=1.0)
        # Adam's bias correction divides by 1 - beta^(t+1), so beta = 1 is invalid.
        _finite("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        _finite("beta2", self.beta2, low=0.0, high=1.0, high_open=True)
        _finite("eps", self.eps, low=0.0)
        _finite("warmup_fraction", self.warmup_fraction, low=0.0, high=1.0)

        if self.optimizer in ("adamw", "rmsprop") and not self.eps_root > 0:
            raise SpecError(
                f"eps_root={self.eps_root!r} with optimizer {self.optimizer!r}: the adjoint "
                "divides by sqrt(v + eps_root), which blows up where v is near 0; "
                "set eps_root between 1e-8 and 1e-4"
            )
        _finite("eps_root", self.eps_root, low=0.0)
        if not self.hidden:
            raise SpecError("hidden must list at least one layer width (or channel count)")
        if any(h <= 0 for h in self.hidden):
            raise SpecError(f"hidden={list(self.hidden)} must contain positive widths")

    # --------------------------------------------------------------- identity
    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def num_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self, dataset_hash: str) -> str:
        """Return the SHA-256 of the canonical spec JSON and the dataset's content hash."""
        digest = hashlib.sha256(self.canonical_json().encode())
        digest.update(dataset_hash.encode())
        return digest.hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingSpec":
        """Build a spec from a dict, rejecting unknown keys instead of ignoring them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"unknown training spec field(s) {unknown}; valid fields are {sorted(known)}"
            )
        return cls(**_coerce(data))

    def replace(self, **overrides: Any) -> "TrainingSpec":
        """Return a copy with ``overrides`` applied; unknown names raise SpecError."""
        return TrainingSpec.from_dict({**self.to_dict(), **overrides})


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    """Check field types so that, e.g., epochs='2' is rejected rather than misused."""
    types = {f.name: f.type for f in dataclasses.fields(TrainingSpec)}
    out = dict(data)
    for name, value in data.items():
        kind = types[name]
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise SpecError(f"{name}={value!r} must be an integer")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(f"{name}={value!r} must be a number")
            out[name] = float(value)
        if kind == "str" and not isinstance(value, str):
            raise SpecError(f"{name}={value!r} must be a string")
        if name == "hidden":
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in value
            ):
                raise SpecError(f"hidden={value!r} must be a list of integers")
        if name == "extra" and not isinstance(value, dict):
            raise SpecError(f"extra={value!r} must be an object")
    return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{name}={value!r} is not supported; expected one of {list(allowed)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{name}={value!r} must be a positive integer")


def _finite(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{name}={value!r} must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        bound = "greater than" if low_open else "at least"
        raise SpecError(f"{name}={value!r} must be {bound} {low}")
    if high is not None and (value > high or (high_open and value == high)):
        bound = "less than" if high_open else "at most"
        raise SpecError(f"{name}={value!r} must be {bound} {high}")
