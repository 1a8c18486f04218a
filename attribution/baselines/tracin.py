"""TracIn: learning-rate-weighted gradient dot products over checkpoints.

With checkpoints at the starts ``t_c`` of C equal intervals of training, the
score of training example i for test sample q is

    scores[q, i] = -sum_c lr(t_c) * (steps in interval c / steps per epoch) / b
                   * <grad phi_q(theta_c), grad loss_i(theta_c)>

which is the first-order (no Hessian) part of MAGIC's sum over steps, with each
interval's steps represented by its first state. Example i is seen once per
epoch, hence the division by the steps per epoch. ``b`` is the batch size.
"""

from __future__ import annotations

import torch

from ..training import TrainingRun
from .common import evenly_spaced_steps, measurement_gradients, states_at, train_gradient_products


def tracin_scores(run: TrainingRun, test_indices: list[int], measurement: str = "loss",
                  num_checkpoints: int = 5) -> torch.Tensor:
    """Return TracIn scores in MAGIC's convention, shape (len(test_indices), n_train)."""
    steps = evenly_spaced_steps(run.num_steps, num_checkpoints, include_final=False)
    bounds = steps + [run.num_steps]
    spec = run.spec
    scores = torch.zeros(len(test_indices), run.n_train, dtype=run.trainer.dtype,
                         device=run.trainer.device)
    for c, (t, state) in enumerate(states_at(run, steps)):
        theta = state[0]
        interval = bounds[c + 1] - t
        weight = run.trainer.lr(t) * interval / spec.steps_per_epoch / spec.batch_size
        test_grads = measurement_gradients(run, theta, test_indices, measurement)  # (k, P)
        scores -= weight * train_gradient_products(run, theta, test_grads)
    return scores
