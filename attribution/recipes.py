"""Named, smooth training recipes on real data that loads offline.

``get(name, **overrides)`` returns a TrainingSpec; overrides are any spec field
(for example ``dtype="float64"`` or ``epochs=2``) and unknown names raise
SpecError. The recipes are smooth in the data weights by default: GELU
activations, average pooling, logits scaled down by 10 and a moderate learning
rate with SGD momentum. ``shakespeare-gpt`` is a two-block character-level
transformer trained with AdamW (``eps = eps_root = 1e-6``, larger than the usual
1e-8, so that rarely updated parameters do not get huge steps) and no dropout.
"""

from __future__ import annotations

from typing import Any

from .errors import SpecError
from .spec import TrainingSpec

RECIPES: dict[str, dict[str, Any]] = {
    "digits-mlp": dict(
        dataset="digits", n_train=1000, n_test=500, architecture="mlp", hidden=[64],
        activation="gelu", output_scale=0.1, optimizer="momentum", lr=0.1, momentum=0.9,
        batch_size=100, epochs=30, seed=0,
    ),
    "mnist-mlp": dict(
        dataset="mnist5k", n_train=4000, n_test=1000, architecture="mlp", hidden=[128],
        activation="gelu", output_scale=0.1, optimizer="momentum", lr=0.1, momentum=0.9,
        batch_size=100, epochs=10, seed=0,
    ),
    "mnist-cnn": dict(
        dataset="mnist5k", n_train=4000, n_test=1000, architecture="cnn", hidden=[8, 16],
        activation="gelu", output_scale=0.1, optimizer="momentum", lr=0.1, momentum=0.9,
        batch_size=100, epochs=6, seed=0,
    ),
    "shakespeare-gpt": dict(
        dataset="shakespeare", n_train=2000, n_test=200, sequence_length=32,
        architecture="gpt", hidden=[64, 64], n_heads=4, activation="gelu", output_scale=1.0,
        optimizer="adamw", lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-6, eps_root=1e-6,
        weight_decay=0.0, schedule="warmup_linear", warmup_fraction=0.1,
        batch_size=50, epochs=4, seed=0,
    ),
}


def names() -> list[str]:
    return sorted(RECIPES)


def get(name: str, **overrides: Any) -> TrainingSpec:
    """Return the spec of recipe ``name`` with keyword ``overrides`` applied."""
    if name not in RECIPES:
        raise SpecError(f"unknown recipe {name!r}; available recipes: {names()}")
    return TrainingSpec.from_dict({**RECIPES[name], **overrides})
