"""Instance-level contrastive losses."""
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
