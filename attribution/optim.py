"""Optimizer steps on flat tensors and their hand-written adjoints.

An optimizer state is a tuple ``(theta, *buffers)`` of 1-D tensors of length P.
``step`` is a pure, differentiable function of the state and the gradient ``g``,
so the generic reverse path can differentiate it with autograd. ``vjp`` is the
hand-written vector-Jacobian product used by the fast path: given the adjoint
of the next state it returns the cotangent on ``g`` (written ``g_bar``) and the
direct adjoint of the current state, i.e. everything except the Hessian term
``H @ g_bar`` that the engine adds to the parameter adjoint.

Adjoints may carry a leading test-sample dimension K: every formula below is
element-wise and broadcasts over it.

Conventions (eta the learning rate of the step, lam the weight decay):
- sgd:      theta' = theta - eta * (g + lam * theta)
- momentum: m' = mu * m + g + lam * theta;  theta' = theta - eta * m'   (PyTorch's SGD)
- adamw:    m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g^2;
            r = sqrt(v' / c2 + eps_root);  theta' = (1 - eta lam) theta - eta (m' / c1) / (r + eps)
            with c1 = 1 - b1^(t+1), c2 = 1 - b2^(t+1)
- rmsprop:  v' = b2 v + (1-b2) g^2;  theta' = (1 - eta lam) theta - eta g / (sqrt(v' + eps_root) + eps)
            (no hand-written adjoint: the generic autograd path handles it)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .errors import AdjointError, SpecError
from .spec import TrainingSpec

State = tuple[torch.Tensor, ...]


class Optimizer:
    """Base class: subclasses define ``buffer_names``, ``step`` and optionally ``vjp``."""

    name = "base"
    buffer_names: tuple[str, ...] = ()
    needs_gradient_in_vjp = False
    differentiable = True

    def __init__(self, spec: TrainingSpec) -> None:
        self.spec = spec

    def init_state(self, theta: torch.Tensor) -> State:
        return (theta, *(torch.zeros_like(theta) for _ in self.buffer_names))

    def step(self, state: State, g: torch.Tensor, t: int, lr: float) -> State:
        raise NotImplementedError

    @property
    def has_vjp(self) -> bool:
        return type(self).vjp is not Optimizer.vjp

    def vjp(
        self, state: State, g: Optional[torch.Tensor], t: int, lr: float, adjoint: State
    ) -> tuple[torch.Tensor, State]:
        raise AdjointError(f"optimizer {self.name!r} has no hand-written adjoint")


class SGD(Optimizer):
    name = "sgd"

    def step(self, state, g, t, lr):
        (theta,) = state
        return (theta - lr * (g + self.spec.weight_decay * theta),)

    def vjp(self, state, g, t, lr, adjoint):
        (d_theta_next,) = adjoint
        g_bar = -lr * d_theta_next
        return g_bar, ((1.0 - lr * self.spec.weight_decay) * d_theta_next,)


class Momentum(Optimizer):
    name = "momentum"
    buffer_names = ("momentum_buffer",)

    def step(self, state, g, t, lr):
        theta, m = state
        m_next = self.spec.momentum * m + g + self.spec.weight_decay * theta
        return (theta - lr * m_next, m_next)

    def vjp(self, state, g, t, lr, adjoint):
        d_theta_next, d_m_next = adjoint
        # Total cotangent on m' collects the direct path and the path through theta'.
        m_bar = d_m_next - lr * d_theta_next
        d_theta = d_theta_next + self.spec.weight_decay * m_bar
        return m_bar, (d_theta, self.spec.momentum * m_bar)


class AdamW(Optimizer):
    name = "adamw"
    buffer_names = ("exp_avg", "exp_avg_sq")
    needs_gradient_in_vjp = True

    def _moments(self, state, g, t):
        spec = self.spec
        _, m, v = state
        m_next = spec.beta1 * m + (1 - spec.beta1) * g
        v_next = spec.beta2 * v + (1 - spec.beta2) * g * g
        c1 = 1 - spec.beta1 ** (t + 1)
        c2 = 1 - spec.beta2 ** (t + 1)
        r = torch.sqrt(v_next / c2 + spec.eps_root)
        return m_next, v_next, c1, c2, r

    def step(self, state, g, t, lr):
        theta = state[0]
        m_next, v_next, c1, _, r = self._moments(state, g, t)
        update = (m_next / c1) / (r + self.spec.eps)
        return ((1 - lr * self.spec.weight_decay) * theta - lr * update, m_next, v_next)

    def vjp(self, state, g, t, lr, adjoint):
        spec = self.spec
        d_theta_next, d_m_next, d_v_next = adjoint
        m_next, _, c1, c2, r = self._moments(state, g, t)
        u_bar = -lr * d_theta_next
        denom = r + spec.eps
        m_bar = d_m_next + u_bar / (c1 * denom)
        v_bar = d_v_next - u_bar * (m_next / c1) / (2 * c2 * r * denom * denom)
        g_bar = (1 - spec.beta1) * m_bar + 2 * (1 - spec.beta2) * g * v_bar
        d_theta = (1 - lr * spec.weight_decay) * d_theta_next
        return g_bar, (d_theta, spec.beta1 * m_bar, spec.beta2 * v_bar)


class RMSprop(Optimizer):
    """RMSprop without momentum; reversed only through the generic autograd path."""

    name = "rmsprop"
    buffer_names = ("square_avg",)

    def step(self, state, g, t, lr):
        spec = self.spec
        theta, v = state
        v_next = spec.beta2 * v + (1 - spec.beta2) * g * g
        update = g / (torch.sqrt(v_next + spec.eps_root) + spec.eps)
        return ((1 - lr * spec.weight_decay) * theta - lr * update, v_next)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Momentum, AdamW, RMSprop)
}


def make_optimizer(spec: TrainingSpec) -> Optimizer:
    try:
        return OPTIMIZERS[spec.optimizer](spec)
    except KeyError:
        raise SpecError(
            f"optimizer={spec.optimizer!r} is not registered; expected one of {sorted(OPTIMIZERS)}"
        ) from None


def learning_rate_schedule(spec: TrainingSpec) -> Callable[[int], float]:
    """Return ``lr(t)`` for steps t = 0 .. num_steps - 1 (a pure function of t)."""
    total, base = spec.num_steps, spec.lr
    if spec.schedule == "constant":
        return lambda t: base
    if spec.schedule == "warmup_linear":
        warmup = max(1, round(spec.warmup_fraction * total))

        def warmup_linear(t: int) -> float:
            if t < warmup:
                return base * (t + 1) / warmup
            return base * max(total - t, 1) / max(total - warmup, 1)

        return warmup_linear
    if spec.schedule == "cosine":
        return lambda t: base * 0.5 * (1 + math.cos(math.pi * t / total))
    raise SpecError(f"schedule={spec.schedule!r} is not supported")
