"""Tiny seeded float64 runs shared by the engine tests."""

import pytest
import torch

import attribution
from attribution.spec import TrainingSpec

# Shared tolerances: float64 identities that hold up to rounding, and the
# finite-difference check, whose truncation error is O(h^2).
EXACT_RTOL = 1e-10
FD_RTOL = 1e-6


def tiny_spec(**overrides) -> TrainingSpec:
    """Digits MLP with 40 training examples, 4 steps per epoch, 8 hidden units, float64."""
    base = dict(
        dataset="digits", n_train=40, n_test=20, architecture="mlp", hidden=[8],
        activation="gelu", output_scale=0.5, optimizer="momentum", lr=0.3, momentum=0.9,
        batch_size=10, epochs=2, seed=3, dtype="float64",
    )
    base.update(overrides)
    return TrainingSpec.from_dict(base)


OPTIMIZER_CASES = {
    "sgd": dict(optimizer="sgd", weight_decay=1e-3),
    "momentum": dict(optimizer="momentum", weight_decay=1e-3),
    "adamw": dict(optimizer="adamw", lr=0.01, weight_decay=1e-2, eps_root=1e-6,
                  schedule="warmup_linear"),
}


@pytest.fixture(scope="session")
def tiny_runs() -> dict[str, attribution.TrainingRun]:
    return {name: attribution.train(tiny_spec(**case)) for name, case in OPTIMIZER_CASES.items()}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute difference divided by the largest magnitude of ``expected``."""
    return float((actual - expected).abs().max() / expected.abs().max())
