"""Instance-level contrastive and self-distillation losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020): each embedding's positive is the other view of its image
    among the 2N−1 others. z1, z2: N×D (normalised here). Identical views with orthogonal images give
    the minimum −log(e^{1/τ} / (e^{1/τ} + 2N−2))."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # 2N×D
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL (Grill et al. 2020, Eq. 2): 2 − 2·cos(q, z') per image, averaged over the batch — the mean
    squared distance of the normalised online prediction q to the normalised target projection z'.
    0 when they point the same way, 2 when orthogonal, 4 when opposite. No gradient reaches `target`."""
    q = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (q * z).sum(1)).mean()
