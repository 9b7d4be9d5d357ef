"""Small transformer parts shared by plugins: the feed-forward (MLP) and stochastic depth;
`modules_as`, a container's modules typed as their class."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def modules_as(modules: Iterable[nn.Module], kind: type[M]) -> list[M]:
    """The modules of an `nn.ModuleList` (or `nn.Sequential`) as the class they all are, so
    their own methods and attributes type-check (torch types a container's items as plain
    `nn.Module`). Raises TypeError if one is not a `kind`."""
    typed = []
    for module in modules:
        if not isinstance(module, kind):
            raise TypeError(f"expected {kind.__name__} modules, found a {type(module).__name__}")
        typed.append(module)
    return typed


class FeedForward(nn.Module):
    """The transformer MLP, (..., C) -> (..., C): fc1 (C -> hidden), activation, dropout,
    fc2 (hidden -> C). timm's `Mlp` and FoundationVision/VAR's `FFN` names; the activation
    is exact GELU unless given (VAR: `nn.GELU(approximate="tanh")`)."""

    def __init__(self, width: int, hidden: int, activation: nn.Module | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU() if activation is None else activation
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zeroes a whole sample's residual branch with
    probability p and scales the kept ones by 1 / (1 - p); the identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability {p} is not in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, ...)
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)  # (B, 1, ...)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
