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
        """Return an initialisation drawn from ``seed`` as a flat vector (P,).

        Linear and Conv2d layers get PyTorch's default uniform(+-1/sqrt(fan_in)) for
        weight and bias, embeddings N(0, 0.02^2), LayerNorm ones and zeros. Draws are
        made in float64 on the CPU and then cast, so every dtype starts from the same
        values.
        """
        generator = torch.Generator().manual_seed(seed)

        def uniform(shape, bound):
            return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

        flat = []
        for _, sub in self.module.named_modules():
            own = dict(sub.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(sub, (nn.Linear, nn.Conv2d)):
                bound = 1.0 / math.sqrt(sub.weight[0].numel())
                values = [uniform(sub.weight.shape, bound), uniform(sub.bias.shape, bound)]
            elif isinstance(sub, nn.Embedding):
                values = [0.02 * torch.randn(sub.weight.shape, generator=generator,
                                             dtype=torch.float64)]
            elif isinstance(sub, nn.LayerNorm):
                values = [torch.ones(sub.weight.shape, dtype=torch.float64),
                          torch.zeros(sub.bias.shape, dtype=torch.float64)]
            else:
                raise SpecError(f"no initialisation for layer {type(sub).__name__}")
            if len(values) != len(own):
                raise SpecError(f"layer {type(sub).__name__} needs weight and bias")
            flat += [value.reshape(-1) for value in values]
        return torch.cat(flat).to(dtype)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            slot.name: theta[slot.offset : slot.offset + slot.numel].view(slot.shape)
            for slot in self.slots
        }

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, C), or (B, L, V) for a language model, for a batch ``x``."""
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written with plain matmuls and softmax.

    The fused scaled-dot-product kernels lack second derivatives on some backends;
    the reverse pass needs Hessian-vector products, so attention is spelled out.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(x).split(width, dim=2)
        # (B, heads, L, head_dim)
        q, k, v = (t.view(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), ACTIVATIONS[activation](),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """A pre-norm causal transformer: token ids (B, L) to next-token logits (B, L, V)."""

    def __init__(self, vocab_size: int, sequence_length: int, width: int, layers: int,
                 heads: int, activation: str) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(sequence_length, width)
        self.blocks = nn.Sequential(*(Block(width, heads, activation) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.norm(self.blocks(x)))


def build_model(
    architecture: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int],
    activation: str,
    output_scale: float,
    heads: int = 1,
) -> FlatModel:
    """Build a ``FlatModel`` for the spec's architecture ('mlp', 'cnn' or 'gpt').

    For 'gpt', ``input_shape`` is (sequence_length,), ``num_classes`` the vocabulary
    size, and ``hidden`` lists one width per transformer block (all equal).
    """
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
        elif architecture == "gpt":
            if len(set(hidden)) != 1 or hidden[0] % heads:
                raise SpecError(f"gpt needs equal block widths divisible by n_heads={heads}, "
                                f"got hidden={hidden}")
            module = TinyGPT(num_classes, input_shape[0], hidden[0], len(hidden), heads,
                             activation)
        else:
            raise SpecError(f"unknown architecture {architecture!r}; expected 'mlp', 'cnn' "
                            "or 'gpt'")
    return FlatModel(module, output_scale=output_scale)
