"""Pieces the baselines share: intermediate states, real nn.Modules and per-example gradients.

Every baseline returns scores in MAGIC's convention: ``scores[q, i]`` approximates
``d measurement_q / d w_i`` at w = 1, so removing training example i changes the
measurement by about ``-scores[q, i]``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.func import grad, vmap

from ..errors import SpecError
from ..optim import State
from ..training import TrainingRun, measurement_from_logits


class ScaledLogits(nn.Module):
    """The run's network with its output scale, as an ordinary module for libraries.

    Parameter names carry the prefix ``net.``.
    """

    def __init__(self, net: nn.Module, output_scale: float) -> None:
        super().__init__()
        self.net = net
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.output_scale


def module_at(run: TrainingRun, theta: torch.Tensor, dtype: torch.dtype | None = None
              ) -> ScaledLogits:
    """Return a fresh module whose parameters equal the flat vector ``theta`` (shape (P,))."""
    flat = run.trainer.model
    net = copy.deepcopy(flat.module)
    with torch.no_grad():
        for name, value in flat.unflatten(theta.detach()).items():
            net.get_parameter(name).copy_(value)
    module = ScaledLogits(net, flat.output_scale).to(device=theta.device)
    return module.to(dtype) if dtype is not None else module


def states_at(run: TrainingRun, steps: Iterable[int]) -> Iterator[tuple[int, State]]:
    """Yield ``(t, state before step t)`` for the sorted ``steps``.

    Stored checkpoints are used where present; other states are recomputed by
    replaying training forward from the latest stored checkpoint before them.
    """
    requested = sorted(set(int(t) for t in steps))
    if requested and not 0 <= requested[0] <= requested[-1] <= run.num_steps:
        raise SpecError(f"steps {requested} must lie in 0..{run.num_steps}")
    trainer = run.trainer
    stored = sorted(run.checkpoints)
    current_t, state = None, None
    for t in requested:
        start = max(s for s in stored if s <= t)
        if current_t is None or current_t > t or start > current_t:
            current_t, state = start, run.checkpoints[start]
        while current_t < t:
            state = tuple(x.detach() for x in trainer.advance(state, current_t))
            current_t += 1
        yield t, state


def evenly_spaced_steps(num_steps: int, count: int, include_final: bool) -> list[int]:
    """Return ``count`` distinct steps spread over training.

    With ``include_final`` the last one is the final state (t = T), otherwise the
    first one is t = 0 and each marks the start of an interval of T / count steps.
    """
    count = max(1, min(count, num_steps))
    if include_final:
        return sorted({round(num_steps * (j + 1) / count) for j in range(count)})
    return sorted({round(num_steps * j / count) for j in range(count)})


def measurement_gradients(run: TrainingRun, theta: torch.Tensor, test_indices: list[int],
                          measurement: str) -> torch.Tensor:
    """Gradients of each test sample's measurement at ``theta``, shape (k, P)."""
    trainer = run.trainer
    phi = trainer.measurement_fn(measurement)
    idx = torch.tensor(test_indices, device=trainer.device)
    return vmap(grad(phi), in_dims=(None, 0, 0))(theta, trainer.x_test[idx], trainer.y_test[idx])


def train_gradient_products(run: TrainingRun, theta: torch.Tensor, vectors: torch.Tensor,
                            chunk_size: int = 256) -> torch.Tensor:
    """Return ``<grad loss_i(theta), vectors[q]>`` for every training example, shape (k, n_train).

    Per-example gradients are formed ``chunk_size`` examples at a time, so memory
    stays at about ``chunk_size`` parameter vectors.
    """
    trainer = run.trainer

    def example_loss(parameters: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trainer.per_example_losses(parameters, x.unsqueeze(0), y.unsqueeze(0))[0]

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    pieces = []
    for start in range(0, run.n_train, chunk_size):
        x = trainer.x_train[start : start + chunk_size]
        y = trainer.y_train[start : start + chunk_size]
        pieces.append(vectors @ per_example(theta, x, y).T)  # (k, chunk)
    return torch.cat(pieces, dim=1)


def correct_class_probability(run: TrainingRun, theta: torch.Tensor,
                              test_indices: list[int]) -> torch.Tensor:
    """Softmax probability of the correct class of each test sample at ``theta``.

    Shape (k,) for a classifier and (k, L) for a language model, where entry
    ``[q, j]`` is the probability of the next token at position j.
    """
    trainer = run.trainer
    idx = torch.tensor(test_indices, device=trainer.device)
    with torch.no_grad():
        logits = trainer.model(theta, trainer.x_test[idx])
        if logits.dim() == 3:  # (k, L, V) next-token logits
            targets = trainer.y_test[idx].unsqueeze(-1)
            return torch.softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)
        losses = torch.stack([measurement_from_logits(logits[q], trainer.y_test[i], "loss")
                              for q, i in enumerate(idx)])
    return torch.exp(-losses)


@contextlib.contextmanager
def preserved_root_logging() -> Iterator[None]:
    """Restore the root logger's level and handlers afterwards.

    traker 0.3.2 calls ``logging.basicConfig()`` and kronfluence 1.0.1 sets the root
    logger's level to its own ``log_level``, which would silence the caller's logs.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
