"""Models as pure functions of one flat parameter vector.

The engine treats parameters, optimizer buffers and adjoints as flat 1-D
tensors, so optimizer steps and their adjoints are element-wise and a leading
test-sample dimension can be carried with ``torch.func.vmap``. A ``FlatModel``
wraps an ``nn.Module`` and evaluates it with ``torch.func.functional_call`` on
views of the flat vector.

Only smooth, deterministic layers are allowed: dropout and other stochastic
layers would make training a random function of the data weights, and max
pooling or ReLU make the metagradient a poor linear predictor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .errors import SpecError

ACTIVATIONS = {"gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}
STOCHASTIC_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class ParamSlot:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


class FlatModel:
    """An ``nn.Module`` evaluated as ``f(theta, x)`` with ``theta`` of shape (P,).

    ``output_scale`` multiplies the logits; values below 1 make training smoother
    in the data weights.
    """

    def __init__(self, module: nn.Module, output_scale: float = 1.0) -> None:
        for sub in module.modules():
            if isinstance(sub, STOCHASTIC_LAYERS):
                raise SpecError(
                    f"model contains a stochastic layer ({type(sub).__name__}); dropout makes "
                    "training non-deterministic in the data weights, so remove it"
                )
        if any(True for _ in module.buffers()):
            raise SpecError(
                "model has buffers (for example BatchNorm running statistics); "
                "use a model whose state is only its parameters"
            )
        self.module = module
        self.output_scale = float(output_scale)
        slots, offset = [], 0
        for name, param in module.named_parameters():
            slots.append(ParamSlot(name, tuple(param.shape), offset, param.numel()))
            offset += param.numel()
        self.slots = tuple(slots)
        self.num_params = offset

    def initial_parameters(self, seed: int, dtype: torch.dtype) -> torch.Tensor:
        """Return PyTorch's default initialisation, drawn from ``seed``, as a flat vector."""
        generator = torch.Generator().manual_seed(seed)
        pieces = []
        for _, sub in self.module.named_modules():
            if isinstance(sub, (nn.Linear, nn.Conv2d)):
                fan_in = sub.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                weight = (torch.rand(sub.weight.shape, generator=generator, dtype=torch.float64)
                          * 2 - 1) * bound
                bias = (torch.rand(sub.bias.shape, generator=generator, dtype=torch.float64)
                        * 2 - 1) * bound
                pieces.append((weight, bias))
        flat = []
        for weight, bias in pieces:
            flat += [weight.reshape(-1), bias.reshape(-1)]
        theta = torch.cat(flat).to(dtype)
        if theta.numel() != self.num_params:
            raise SpecError("initialisation covers only Linear and Conv2d layers with biases")
        return theta

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            slot.name: theta[slot.offset : slot.offset + slot.numel].view(slot.shape)
            for slot in self.slots
        }

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, C) for inputs ``x`` of shape (B, *input_shape)."""
        logits = functional_call(self.module, self.unflatten(theta), (x,))
        return logits * self.output_scale


def build_mlp(input_dim: int, hidden: list[int], num_classes: int, activation: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(
    input_shape: tuple[int, ...], channels: list[int], num_classes: int, activation: str
) -> nn.Module:
    """Conv (3x3, same padding) + activation + 2x2 average pooling per entry of ``channels``."""
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for size in channels:
        layers += [
            nn.Conv2d(in_channels, size, kernel_size=3, padding=1),
            ACTIVATIONS[activation](),
            nn.AvgPool2d(2),
        ]
        in_channels, height, width = size, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, num_classes)]
    return nn.Sequential(*layers)


def build_model(
    architecture: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int],
    activation: str,
    output_scale: float,
) -> FlatModel:
    """Build a ``FlatModel`` for the spec's architecture ('mlp' or 'cnn')."""
    if activation not in ACTIVATIONS:
        raise SpecError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    # Building under a fixed seed keeps module construction free of global RNG
    # effects; the real initialisation comes from ``initial_parameters``.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if architecture == "mlp":
            module = build_mlp(math.prod(input_shape), hidden, num_classes, activation)
        elif architecture == "cnn":
            if len(input_shape) != 3:
                raise SpecError(f"cnn needs (C, H, W) inputs, got shape {input_shape}")
            module = build_cnn(input_shape, hidden, num_classes, activation)
        else:
            raise SpecError(f"unknown architecture {architecture!r}; expected 'mlp' or 'cnn'")
    return FlatModel(module, output_scale=output_scale)
