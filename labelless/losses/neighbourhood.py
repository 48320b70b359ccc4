"""Losses over a memory bank of instance embeddings and over pairs of augmented views: Super-AND's
AND, UE and augmentation losses (Han et al. 2020, "A comprehensive approach to unsupervised embedding
learning based on AND algorithm", Eq. 10–14) and the ISIF loss (Ye et al. 2019, "Unsupervised
embedding learning via invariant and spreading instance feature") that TwoStageUC reuses as its
consistency-preserving loss L_cp (Han et al., ECCV 2020, Eq. 10–11).

Bank logits are `embeddings @ memory.T / τ` (rows: the samples of the batch, columns: every bank
entry), computed in float32 by `labelless.nn.memory.MemoryBank.logits`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelless.losses.clustering import EPS


def and_loss(bank_logits: Tensor, indices: Tensor, neighbours: Tensor) -> Tensor:
    """AND loss (Huang et al. 2019; Super-AND Eq. 10): −mean_i log Σ_{j ∈ {i} ∪ N(x_i)} p_i^j.

    p_i = softmax(bank_logits_i) over the whole bank. A sample without a neighbourhood is its own
    class (−log p_i^i, instance discrimination); a selected anchor shares its class with its
    neighbours. bank_logits: M×N; indices: M, each row's own bank slot; neighbours: M×K bank slots,
    −1 (or the row's own slot) where the row has fewer neighbours, so a row of −1 is instance
    discrimination. The authors' code sums over both views and divides by their count: the mean here.
    """
    bank_logits = bank_logits.float()
    own = bank_logits.gather(1, indices[:, None])  # own: M×1
    valid = (neighbours >= 0) & (neighbours != indices[:, None])
    shared = bank_logits.gather(1, neighbours.clamp_min(0)).masked_fill(~valid, float("-inf"))  # M×K
    log_class = torch.cat([own, shared], 1).logsumexp(1)
    return -(log_class - bank_logits.logsumexp(1)).mean()


def unification_entropy_loss(bank_logits: Tensor, indices: Tensor, exclude_self: bool = True) -> Tensor:
    """UE loss (Super-AND Eq. 11–12): mean_i H(p̃_i), p̃_i the softmax over the bank without entry i.

    *Minimised*, so that each embedding's distribution over the *other* samples sharpens and nearby
    samples attract. (Eq. 12 prints the opposite sign; both released codes add +H, and the text says
    minimising it makes neighbours attract.) Self is excluded exactly (the code sets its logit to −10,
    which at τ = 0.1 removes it up to e⁻²⁰). `exclude_self=False` keeps it, as super-AND/super-AND's
    main.py ends up doing (it overwrites the masked entropy with the unmasked one).
    bank_logits: M×N; indices: M. Equal logits give log(N − 1) (log N with self kept).
    """
    bank_logits = bank_logits.float()
    if exclude_self:
        own = torch.zeros_like(bank_logits, dtype=torch.bool).scatter_(1, indices[:, None], True)
        bank_logits = bank_logits.masked_fill(own, float("-inf"))
    log_p = bank_logits.log_softmax(1)
    # p·log p at an excluded entry is 0·(−inf): take it as 0
    return -(log_p.exp() * log_p.masked_fill(torch.isinf(log_p), 0.0)).sum(1).mean()


def isif_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, metric: Tensor | None = None) -> Tensor:
    """ISIF (Ye et al. 2019, Eq. 7–8; TwoStageUC Eq. 10–11; Super-AND Eq. 13–14), two terms:
        L = −(1/2B) [ Σ_i ln p_i + Σ_i Σ_{j ∉ {i, i′}} ln(1 − p_ij) ],
    over the 2B L2-normalised rows z = [z1; z2], where i′ is the other view of row i's image and,
    with a softmax over the 2B − 1 rows j ≠ i of z_i·z_j/τ, p_i is the probability of i′ and p_ij that
    of j. The right-hand side of every dot product (the "key") is detached, as in the released code.

    Super-AND applies it to the relationship vectors (each view's bank logits, normalised here);
    TwoStageUC's L_cp to the 128-d embeddings. z1, z2: B×D, normalised here. With `metric` G (D×D,
    symmetric positive semi-definite) every dot product is z_iᵀ·G·z_j: Super-AND passes its embeddings
    and G = MᵀM, the dot products of their relationship vectors z·Mᵀ, without forming those.
    Identical views of orthogonal rows give −ln q − (2B−2)·ln(1 − q·e^{−1/τ}),
    q = e^{1/τ}/(e^{1/τ} + 2B − 2).
    """
    z = torch.cat([z1, z2]).float()  # z: 2B×D
    n = len(z1)
    if metric is None:
        z = F.normalize(z, dim=1)
        keys = z.detach()
    else:
        metric_z = z @ metric.float()
        norm = (metric_z * z).sum(1, keepdim=True).clamp_min(1e-24).sqrt()  # z's length under G
        z, keys = z / norm, (metric_z / norm).detach()
    logits = z @ keys.t() / temperature  # 2B×2B
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    p = logits.masked_fill(self_mask, float("-inf")).softmax(1)
    other_view = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    positive = torch.zeros_like(self_mask).scatter_(1, other_view[:, None], True)
    log_positive = p.gather(1, other_view[:, None]).clamp_min(EPS).log().sum()
    log_not_negative = (1 - p).clamp_min(EPS).log().masked_fill(self_mask | positive, 0.0).sum()
    return -(log_positive + log_not_negative) / (2 * n)
