"""Heads over backbone features: multi-head cluster heads, fixed-prototype Norm-FC heads and the
lowest-loss head choice."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.errors import UserError


def check_head_count(heads: int) -> None:
    if heads < 1:
        raise UserError(f"config key 'method.heads' must be at least 1, got {heads}")


class ClusterHeads(nn.Module):
    """H independent linear cluster heads (SCAN, IIC): features N×D → H tensors of N×K logits.

    Several heads are trained side by side from different initialisations; the one with the lowest
    training loss is used (never the one with the best accuracy: that would need labels)."""

    def __init__(self, in_features: int, k: int, heads: int = 1) -> None:
        super().__init__()
        check_head_count(heads)
        self.heads = nn.ModuleList([nn.Linear(in_features, k) for _ in range(heads)])

    def forward(self, features: Tensor) -> list[Tensor]:
        return [head(features) for head in self.heads]


class HeadSelector(nn.Module):
    """Running mean of each head's training loss; `chosen` is the head with the lowest mean over the
    current (or, right after `start_epoch`, the last finished) epoch. Buffers, so it is checkpointed."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        check_head_count(heads)
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
        # torch.where rather than `if int(self.steps)`: no device sync, no graph break under torch.compile
        return torch.where(self.steps > 0, self.loss_sum / self.steps.clamp_min(1), self.last_mean)

    def best(self) -> Tensor:
        """The chosen head's index as a 0-d tensor: what a compiled training step may index with
        (`chosen`'s int() would synchronise and break the graph every step)."""
        return self.mean_losses.argmin()

    def pick(self, per_head: Tensor) -> Tensor:
        """`per_head[chosen]` for a tensor with one entry per head, without leaving the graph."""
        return per_head.index_select(0, self.best().reshape(1)).squeeze(0)

    @property
    def chosen(self) -> int:
        return int(self.best())


HEAD_NORMS = ("feature_rows", "prototypes")


class NormFCHeads(nn.Module):
    """TwoStageUC's Norm-FC heads (Han et al., ECCV 2020, supplement Eq. 2): H heads of K fixed random
    prototypes over L2-normalised D-d embeddings, y_i = softmax(v_i·Ŵ/τ_c), τ_c = 0.1.

    Each W (D×K) is drawn from N(0, 1) once and never trained ("random initialization may be
    sufficient to characterize each class ... fixed weights avoid training loss fluctuations"): it
    lives in buffers, so no optimiser sees it and checkpoints keep it. `head_norm` says how Ŵ is
    normalised: `feature_rows` (default) normalises each of the D rows across the K classes, as the
    released code does and as produced the reported 81.0% (prototype norms then come out near
    √(D/K), a sharper effective temperature); `prototypes` normalises each class's D-d column, the
    paper's ŵ_j = w_j/‖w_j‖ (VERIFIED-DETAILS.md)."""

    def __init__(self, in_features: int, k: int, heads: int = 5, temperature: float = 0.1,
                 head_norm: str = "feature_rows") -> None:
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {', '.join(HEAD_NORMS)}, not {head_norm!r}")
        self.temperature, self.head_norm = temperature, head_norm
        self.register_buffer("weight", torch.randn(heads, in_features, k))  # weight: H×D×K

    def __len__(self) -> int:
        return len(self.weight)

    def only(self, head: int) -> NormFCHead:
        """Head `head` alone, a copy (same prototypes, temperature and normalisation)."""
        single = NormFCHead(self.weight.shape[1], self.weight.shape[2], self.temperature, self.head_norm)
        single.weight.copy_(self.weight[head:head + 1])
        return single.to(self.weight.device)

    def prototypes(self) -> Tensor:
        """The normalised weights Ŵ, H×D×K."""
        return F.normalize(self.weight, dim=2 if self.head_norm == "feature_rows" else 1)

    def forward(self, features: Tensor) -> list[Tensor]:
        """features N×D (normalised embeddings) → H tensors of N×K logits v·Ŵ/τ_c, in float32."""
        with torch.autocast(features.device.type, enabled=False):
            logits = torch.einsum("nd,hdk->hnk", features.float(), self.prototypes()) / self.temperature
        return list(logits.unbind(0))


class NormFCHead(NormFCHeads):
    """One Norm-FC head, features N×D → N×K logits: self-labelling continues TwoStageUC's chosen head
    with it (`NormFCHeads.only`), its prototypes still fixed."""

    def __init__(self, in_features: int, k: int, temperature: float = 0.1, head_norm: str = "feature_rows") -> None:
        super().__init__(in_features, k, 1, temperature, head_norm)

    def forward(self, features: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(features)[0]
