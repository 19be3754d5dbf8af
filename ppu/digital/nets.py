"""Small reference networks to serve with ``TorchBackend`` (tests, demos, the batching benchmark).

``MeanStdMLP`` maps features to ``[B, 2]`` (mean, std); the std head goes through softplus. One
member of a deep ensemble would look like this; the campaign surrogate is a GP (see
:mod:`ppu.digital.surrogate`).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


class MeanStdMLP(nn.Module):
    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, seed: int | None = 0):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        dims = [n_features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            body += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(dims[-1], 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(self.body(x))
        return torch.stack([h[:, 0], nn.functional.softplus(h[:, 1]) + 1e-6], dim=-1)


def mlp(n_features: int, hidden: int = 64, layers: int = 2, seed: int | None = 0) -> MeanStdMLP:
    """Factory for a ModelSpec: ``factory: "ppu.digital.nets:mlp"``, ``kwargs: {n_features: ...}``
    (the width of the rows the capability's encoder makes)."""
    return MeanStdMLP(n_features, hidden, layers, seed)
