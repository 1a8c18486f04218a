"""Named, smooth training recipes on real data that loads offline.

``get(name, **overrides)`` returns a TrainingSpec; overrides are any spec field
(for example ``dtype="float64"`` or ``epochs=2``) and unknown names raise
SpecError. The recipes are smooth in the data weights by default: GELU
activations, average pooling, logits scaled down by 10 and a moderate learning
rate with SGD momentum.
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
}


def names() -> list[str]:
    return sorted(RECIPES)


def get(name: str, **overrides: Any) -> TrainingSpec:
    """Return the spec of recipe ``name`` with keyword ``overrides`` applied."""
    if name not in RECIPES:
        raise SpecError(f"unknown recipe {name!r}; available recipes: {names()}")
    return TrainingSpec.from_dict({**RECIPES[name], **overrides})
