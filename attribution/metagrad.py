"""MAGIC scores: the exact metagradient of test measurements w.r.t. data weights.

For test samples q = 1..K the reverse pass starts from the adjoint
``Delta_T = (grad phi_q(theta_T), 0 for each optimizer buffer)`` and walks back
through training, t = T-1 .. 0:

1. ``g_bar``: the cotangent on the step gradient g_t, from the optimizer's
   vector-Jacobian product with ``Delta_{t+1}``;
2. ``scores[q, i] += (1/b) <grad loss_i(theta_t), g_bar_q>`` for i in batch B_t;
3. ``Delta_t`` = the optimizer's direct adjoint + ``H_t g_bar`` (one
   Hessian-vector product of the step loss).

Steps 2 and 3 come from one double-backward pass: the gradient of
``<g_t, g_bar>`` w.r.t. theta is ``H_t g_bar`` and w.r.t. the batch's data weights
is ``<grad loss_i, g_bar> / b``. The K adjoints are carried as a leading
dimension (``is_grads_batched``, which vmaps the backward pass), so the
replayed states and the forward graph of each step are shared by all test
samples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch.func import grad, vmap

from .checkpointing import ReplayStats, reverse_states
from .errors import AdjointError, SpecError
from .optim import State
from .training import Trainer, TrainingRun, check_measurement, check_test_indices

logger = logging.getLogger(__name__)

ADJOINT_MODES = ("auto", "manual", "generic")


@dataclass
class AttributionResult:
    """Scores of shape (k, n_train) and the counters of the reverse sweep."""

    scores: torch.Tensor
    stats: ReplayStats
    seconds: float


def attribute(run: TrainingRun, test_indices: Iterable[int], measurement: str = "loss",
              policy: str = "replay", k: Optional[int] = None, batch_size: int = 64,
              adjoint: str = "auto", progress: bool = False) -> torch.Tensor:
    """Return MAGIC scores, a tensor of shape (len(test_indices), n_train).

    ``scores[q, i] = d measurement_q / d w_i`` at the run's data weights (all ones
    by default). Removing training example i changes measurement q by about
    ``-scores[q, i]``.

    Args:
        run: a TrainingRun from ``train`` or ``TrainingRun.load``.
        test_indices: indices into the recipe's test split; no duplicates.
        measurement: 'loss' (default), 'margin' or 'logit' (of the correct class).
        policy: 'replay' (lazy k-ary tree, default), 'interval' or 'keep_all'.
        k: branching factor of 'replay' (default ceil(T^(1/3))) or segment length of 'interval'
            (default sqrt(T)).
        batch_size: test samples carried together in one reverse pass; bounds memory
            at about ``3 * batch_size`` vectors of the parameter count.
        adjoint: 'manual' (hand-written optimizer adjoints), 'generic' (autograd
            through the step) or 'auto' (manual where the optimizer has one).
        progress: show a progress bar over reverse steps.

    Raises:
        TestIndexError: an index is out of range or duplicated.
        SpecError: an unknown measurement, policy or adjoint mode.
        AdjointError: no adjoint is available, or the adjoint became NaN or infinite.
    """
    return attribute_with_stats(run, test_indices, measurement=measurement, policy=policy,
                                k=k, batch_size=batch_size, adjoint=adjoint,
                                progress=progress).scores


def attribute_with_stats(run: TrainingRun, test_indices: Iterable[int],
                         measurement: str = "loss", policy: str = "replay",
                         k: Optional[int] = None, batch_size: int = 64, adjoint: str = "auto",
                         progress: bool = False, seed_weights: Optional[torch.Tensor] = None
                         ) -> AttributionResult:
    """Like ``attribute`` but also return the replay counters and the wall time.

    ``seed_weights`` (shape (k,)) instead seeds one reverse pass with
    ``sum_q c_q grad phi_q`` and returns the group scores ``sum_q c_q scores[q]``
    as a (1, n_train) tensor.
    """
    check_measurement(measurement)
    indices = check_test_indices(test_indices, run.n_test)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size={batch_size!r} must be a positive integer")
    mode = _resolve_adjoint(run.trainer, adjoint)
    started = time.perf_counter()
    stats = ReplayStats()
    if seed_weights is not None:
        coefficients = torch.as_tensor(seed_weights, dtype=run.trainer.dtype,
                                       device=run.trainer.device)
        if coefficients.shape != (len(indices),):
            raise SpecError(f"seed_weights has shape {tuple(coefficients.shape)}, "
                            f"expected ({len(indices)},)")
        scores = _reverse_pass(run, indices, measurement, policy, k, mode, progress, stats,
                               coefficients)
    else:
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        scores = torch.cat([
            _reverse_pass(run, chunk, measurement, policy, k, mode, progress, stats)
            for chunk in chunks
        ])
    seconds = time.perf_counter() - started
    logger.info("attributed %d test samples over %d steps in %.2f s (%s, %s adjoint)",
                len(indices), run.num_steps, seconds, policy, mode)
    return AttributionResult(scores=scores, stats=stats, seconds=seconds)


def predict_removal(scores: torch.Tensor, removed: Iterable[int]) -> torch.Tensor:
    """Predicted change of each measurement when the ``removed`` examples get weight 0.

    ``scores`` has shape (k, n_train); the result has shape (k,) and equals
    ``-scores[:, removed].sum(1)`` (first-order prediction at w = 1).
    """
    idx = torch.as_tensor(list(removed), dtype=torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= scores.shape[1]):
        raise SpecError(f"removed indices must lie in [0, {scores.shape[1]})")
    if idx.unique().numel() != idx.numel():
        raise SpecError("removed indices contain duplicates")
    return -scores[:, idx].sum(dim=1)


# --------------------------------------------------------------------- internals
def _resolve_adjoint(trainer: Trainer, adjoint: str) -> str:
    if adjoint not in ADJOINT_MODES:
        raise SpecError(f"adjoint={adjoint!r} is not supported; expected one of "
                        f"{list(ADJOINT_MODES)}")
    optimizer = trainer.optimizer
    if adjoint in ("auto", "manual") and optimizer.has_vjp:
        return "manual"
    if adjoint == "manual":
        raise AdjointError(f"optimizer {optimizer.name!r} has no hand-written adjoint; "
                           "use adjoint='generic' or 'auto'")
    if not optimizer.differentiable:
        raise AdjointError(f"optimizer {optimizer.name!r} has no hand-written adjoint and its "
                           "step is not differentiable, so no generic path exists; choose "
                           "sgd, momentum, adamw or rmsprop")
    return "generic"


def _initial_adjoint(trainer: Trainer, theta_final: torch.Tensor, indices: list[int],
                     measurement: str, coefficients: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample gradients of the measurement at theta_T, shape (K, P)."""
    phi = trainer.measurement_fn(measurement)
    idx = torch.tensor(indices, device=trainer.device)
    grads = vmap(grad(phi), in_dims=(None, 0, 0))(theta_final, trainer.x_test[idx],
                                                  trainer.y_test[idx])
    if coefficients is not None:
        grads = (coefficients[:, None] * grads).sum(dim=0, keepdim=True)
    return grads


def _reverse_pass(run: TrainingRun, indices: list[int], measurement: str, policy: str,
                  k: Optional[int], mode: str, progress: bool, stats: ReplayStats,
                  coefficients: Optional[torch.Tensor] = None) -> torch.Tensor:
    trainer = run.trainer
    adjoint_theta = _initial_adjoint(trainer, run.parameters, indices, measurement, coefficients)
    num_samples = adjoint_theta.shape[0]
    adjoint: State = (adjoint_theta,) + tuple(
        torch.zeros_like(adjoint_theta) for _ in trainer.optimizer.buffer_names
    )
    scores = torch.zeros(num_samples, run.n_train, dtype=trainer.dtype, device=trainer.device)
    states = reverse_states(trainer, run.checkpoints[0], run.num_steps, policy, k, stats,
                            stored=run.checkpoints)
    if progress:
        from tqdm import tqdm

        states = tqdm(states, total=run.num_steps, desc="replay", unit="step", leave=False)
    step_fn = _manual_step if mode == "manual" else _generic_step
    for t, state in states:
        adjoint, contribution, idx = step_fn(trainer, state, t, adjoint)
        scores[:, idx] += contribution
        _check_finite(adjoint, t, ("parameters", *trainer.optimizer.buffer_names))
    return scores


def _manual_step(trainer: Trainer, state: State, t: int, adjoint: State
                 ) -> tuple[State, torch.Tensor, torch.Tensor]:
    """Run one reverse step with the optimizer's hand-written adjoint."""
    idx, x, y, w = trainer.batch(t)
    lr = trainer.lr(t)
    with torch.enable_grad():
        theta = state[0].detach().requires_grad_(True)
        w_batch = w.detach().clone().requires_grad_(True)
        loss = trainer.batch_loss(theta, x, y, w_batch)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        g_bar, direct = trainer.optimizer.vjp(state, g.detach(), t, lr, adjoint)
        hvp, contribution = _second_order(g, theta, w_batch, g_bar)
    return (direct[0] + hvp, *direct[1:]), contribution, idx


def _second_order(g: torch.Tensor, theta: torch.Tensor, w_batch: torch.Tensor,
                  g_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (H @ v, d<g, v>/dw_batch) for each row v of ``g_bar`` (K, P).

    Because ``g = sum_i w_i grad loss_i / b``, the derivative of ``<g, v>`` w.r.t.
    ``w_i`` is ``<grad loss_i, v> / b``: the score contribution of example i. One
    double-backward pass thus gives both the Hessian-vector product (K, P) and
    the contributions (K, B).
    """
    if g_bar.shape[0] == 1:
        hvp, contribution = torch.autograd.grad(g, (theta, w_batch), g_bar[0],
                                                materialize_grads=True)
        return hvp.unsqueeze(0), contribution.unsqueeze(0)
    return torch.autograd.grad(g, (theta, w_batch), g_bar, is_grads_batched=True,
                               materialize_grads=True)


def _generic_step(trainer: Trainer, state: State, t: int, adjoint: State
                  ) -> tuple[State, torch.Tensor, torch.Tensor]:
    """Run one reverse step by autograd through the rebuilt step (the reference path)."""
    idx, x, y, w = trainer.batch(t)
    lr = trainer.lr(t)
    with torch.enable_grad():
        inputs = tuple(s.detach().requires_grad_(True) for s in state)
        w_batch = w.detach().clone().requires_grad_(True)
        loss = trainer.batch_loss(inputs[0], x, y, w_batch)
        (g,) = torch.autograd.grad(loss, inputs[0], create_graph=True)
        new_state = trainer.optimizer.step(inputs, g, t, lr)
        rows_state, rows_weight = [], []
        num_samples = adjoint[0].shape[0]
        for q in range(num_samples):
            outputs = [s for s in new_state]
            cotangents = [a[q] for a in adjoint]
            grads = torch.autograd.grad(outputs, (*inputs, w_batch), grad_outputs=cotangents,
                                        retain_graph=q < num_samples - 1, allow_unused=True)
            grads = [torch.zeros_like(ref) if gr is None else gr
                     for gr, ref in zip(grads, (*inputs, w_batch))]
            rows_state.append(grads[:-1])
            rows_weight.append(grads[-1])
    new_adjoint = tuple(torch.stack([row[j] for row in rows_state]).detach()
                        for j in range(len(state)))
    return new_adjoint, torch.stack(rows_weight).detach(), idx


def _check_finite(adjoint: State, t: int, names: tuple[str, ...] = ("parameters",)) -> None:
    # NOTE: one host sync per step; cheap on CPU, noticeable on a GPU.
    for name, tensor in zip(names, adjoint):
        if not torch.isfinite(tensor).all():
            raise AdjointError(
                f"the {name} adjoint became NaN or infinite at step {t}: training is not "
                "smooth enough to differentiate; scale the output layer down, lower the "
                "learning rate, or raise eps_root"
            )
