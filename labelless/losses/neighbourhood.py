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
from labelless.losses.precision import float32_under_autocast


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


class _BankLosses(torch.autograd.Function):
    """`and_loss` + w·`unification_entropy_loss` from one exponentiation of the bank logits, with a
    hand-written backward: see `bank_losses`."""

    @staticmethod
    def forward(ctx, logits: Tensor, indices: Tensor, neighbours: Tensor, ue_weight: float, exclude_self: bool):
        with torch.autocast(logits.device.type, enabled=False):
            l = logits.float()
            own = indices[:, None]
            own_logit = l.gather(1, own)  # M×1
            # e_j = exp(l_j − top) over the UE's support: every entry but the own one (exactly 0 there),
            # or every entry; top is the support's largest logit, so the sum is ≥ 1 and its log finite
            e = l.scatter(1, own, float("-inf")) if exclude_self else l.clone()
            top = e.amax(1, keepdim=True)
            e.sub_(top).exp_()
            mass = e.sum(1, keepdim=True)
            log_support = top + mass.log()
            log_all = torch.logaddexp(log_support, own_logit) if exclude_self else log_support  # softmax's log Z
            valid = (neighbours >= 0) & (neighbours != own)
            slots = torch.cat([own, neighbours.clamp_min(0)], 1)  # M×(1+K): own slot, then the neighbours
            class_logits = l.gather(1, slots)
            class_logits[:, 1:].masked_fill_(~valid, float("-inf"))
            log_class = class_logits.logsumexp(1, keepdim=True)
            and_value = (log_all - log_class).mean()
            if ue_weight > 0:
                # H(p̃) = log Z̃ − Σ_j p̃_j l_j, the dot product without an M×N temporary
                mean_logit = torch.bmm(e.unsqueeze(1), l.unsqueeze(2)).view(-1, 1) / mass
                entropy = log_support - mean_logit
                ue_value = entropy.mean()
            else:
                entropy, ue_value = mass.new_zeros(()), mass.new_zeros(())
        ctx.save_for_backward(l, e, top, mass, log_support, log_all, own_logit, slots, class_logits, log_class,
                              entropy)
        ctx.ue_weight, ctx.exclude_self, ctx.input_dtype = ue_weight, exclude_self, logits.dtype
        ctx.mark_non_differentiable(and_value, ue_value)
        return and_value + ue_weight * ue_value, and_value, ue_value

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_and: Tensor, _grad_ue: Tensor):
        l, e, top, mass, log_support, log_all, own_logit, slots, class_logits, log_class, entropy = ctx.saved_tensors
        w = ctx.ue_weight
        with torch.autocast(l.device.type, enabled=False):
            scale = grad_loss.float() / len(l)
            # AND: p_j − q_j (p the softmax over the bank, q its renormalised share on the class slots);
            # UE: −p̃_j (log p̃_j + H). On the support p_j = e_j·exp(top − log Z) and p̃_j = e_j / mass, so
            # both are e_j·a·(l_j − c) with one a and one c per row
            p_scale = (top - log_all).exp()
            if w > 0:
                a = -scale * w / mass
                c = log_support - entropy + mass * p_scale / w
                grad = torch.sub(l, c).mul_(e).mul_(a)
            else:
                grad = e * (scale * p_scale)
            if ctx.exclude_self:  # the own entry is outside the support: its p
                grad.scatter_add_(1, slots[:, :1], scale * (own_logit - log_all).exp())
            grad.scatter_add_(1, slots, -scale * (class_logits - log_class).exp())
        return grad.to(ctx.input_dtype), None, None, None, None


def bank_losses(bank_logits: Tensor, indices: Tensor, neighbours: Tensor, ue_weight: float = 0.0,
                exclude_self: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """`and_loss(bank_logits, indices, neighbours) + ue_weight · unification_entropy_loss(bank_logits,
    indices, exclude_self)` in one pass, returned with its two terms (detached; UE is 0 when not weighted).

    The same value and gradient as the two functions (tests/losses/test_neighbourhood.py), which stay
    the readable definition. Those build the M×N softmax several times over and autograd keeps each
    step's M×N intermediate; here the logits are exponentiated once, and the backward pass is the
    closed form e_j·a·(l_j − c) plus a scatter on the few class slots. A Super-AND step on MNIST
    (M = 256 rows, N = 60,000 bank entries, one CPU thread): 0.22 → 0.06 s for the two losses and their
    backward, on top of the 0.12 s of the logits' matmul. Computed in float32 under autocast.
    """
    return _BankLosses.apply(bank_logits, indices, neighbours, float(ue_weight), bool(exclude_self))


@float32_under_autocast
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
    q = e^{1/τ}/(e^{1/τ} + 2B − 2). Computed in float32 under autocast, as the bank logits are: at τ = 0.1
    bf16 would round a logit by up to 0.04.
    """
    z = torch.cat([z1, z2])  # z: 2B×D
    n = len(z1)
    if metric is None:
        z = F.normalize(z, dim=1)
        keys = z.detach()
    else:
        metric_z = z @ metric
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
