"""Heads over backbone features: multi-head cluster heads and the lowest-loss head choice."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ClusterHeads(nn.Module):
    """H independent linear cluster heads (SCAN, IIC): features N×D → H tensors of N×K logits.

    Several heads are trained side by side from different initialisations; the one with the lowest
    training loss is used (never the one with the best accuracy: that would need labels)."""

    def __init__(self, in_features: int, k: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(in_features, k) for _ in range(heads)])

    def forward(self, features: Tensor) -> list[Tensor]:
        return [head(features) for head in self.heads]


class HeadSelector(nn.Module):
    """Running mean of each head's training loss; `chosen` is the head with the lowest mean over the
    current (or, right after `start_epoch`, the last finished) epoch. Buffers, so it is checkpointed."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.register_buffer("loss_sum", torch.zeros(heads, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_mean", torch.zeros(heads, dtype=torch.float64))

    def record(self, head_losses: Tensor) -> None:
        self.loss_sum += head_losses.detach().to(self.loss_sum)
        self.steps += 1

    def start_epoch(self) -> None:
        if int(self.steps) > 0:
            self.last_mean.copy_(self.loss_sum / self.steps)
            self.loss_sum.zero_()
            self.steps.zero_()

    @property
    def mean_losses(self) -> Tensor:
        return self.loss_sum / self.steps if int(self.steps) > 0 else self.last_mean

    @property
    def chosen(self) -> int:
        return int(self.mean_losses.argmin())
