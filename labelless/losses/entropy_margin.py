"""Discriminative entropy clustering with margin maximisation (Zhang & Boykov, "Revisiting
discriminative entropy clustering and its relation to K-means"; supplementary material, §A–C).

Two ways to optimise the same idea, both over N×K posteriors σ_i = softmax(vᵀ f_w(X_i)):

- loss (a), by gradient: mean_i H(σ_i) − H(σ̄) + γ‖v‖² = mean_i H(σ_i) + KL(σ̄‖u) + γ‖v‖² + const,
  with a "fairness" weight on the KL term (`entropy_margin_loss`);
- Algorithm 1, self-labelling: auxiliary targets y_i on the simplex, solved per batch to convergence
  by a closed-form fixed point (`self_label_targets`, minimising `self_label_objective`), then the
  network takes a step on the reverse cross-entropy H(σ, y) = −Σ_k σ^k ln y^k plus γ‖v‖²
  (`reverse_cross_entropy`, `margin_term`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from labelless.losses.clustering import EPS, entropy


def margin_term(classifier_weight: Tensor, gamma: float) -> Tensor:
    """γ‖v‖²: the squared Frobenius norm of the linear classifier's weight (K×D, bias excluded).

    "Decisiveness may not automatically imply large margins if the norm of classifier v is
    unrestricted" (supplementary §A): bounding ‖v‖ keeps a soft, low-confidence band around the
    decision boundary, which the data then pushes away from itself."""
    return gamma * classifier_weight.float().pow(2).sum()


def kl_to_uniform(probabilities: Tensor) -> Tensor:
    """KL(σ̄‖u) = Σ_k σ̄_k ln(K σ̄_k) = ln K − H(σ̄), the fairness term; 0 for balanced clusters.
    probabilities: N×K."""
    marginal = probabilities.mean(0)
    return (marginal * (marginal.clamp_min(EPS).log() + math.log(marginal.shape[0]))).sum()


def entropy_margin_loss(probabilities: Tensor, classifier_weight: Tensor | None = None, *, gamma: float = 0.0,
                        fairness_weight: float = 1.0) -> Tensor:
    """Loss (a) of the supplementary: L = mean_i H(σ_i) + w·KL(σ̄‖u) + γ‖v‖².

    With w = 1 this is mean_i H(σ_i) − H(σ̄) + γ‖v‖² + ln K (the MI loss plus the margin term); the
    paper's deep experiments weight the fairness term by w = 1.3 (§E.3). probabilities: N×K;
    classifier_weight: K×D (omit it, or set γ = 0, for the plain MI loss)."""
    loss = entropy(probabilities.float()).mean() + fairness_weight * kl_to_uniform(probabilities.float())
    if classifier_weight is not None and gamma:
        loss = loss + margin_term(classifier_weight, gamma)
    return loss


def reverse_cross_entropy(probabilities: Tensor, targets: Tensor) -> Tensor:
    """mean_i H(σ_i, y_i) = −mean_i Σ_k σ_i^k ln y_i^k: the network's output outside the log, the
    pseudo-label inside (VERIFIED-DETAILS.md). Minimising it over σ moves σ_i towards argmax_k y_i^k.
    probabilities (σ, differentiated): N×K; targets (y, constant): N×K."""
    return -(probabilities.float() * targets.detach().float().clamp_min(EPS).log()).sum(1).mean()


def _prior(prior: Tensor | None, like: Tensor) -> Tensor:
    k = like.shape[1]
    return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device) if prior is None else prior.to(like)


def self_label_objective(targets: Tensor, probabilities: Tensor, lamb: float = 100.0,
                         prior: Tensor | None = None) -> Tensor:
    """E(y) of Lemma B.1 (β = 1, M = N): −(1/N) Σ_i Σ_k σ_i^k ln y_i^k − λ Σ_k u_k ln(Σ_i y_i^k / N),
    the y-subproblem's objective: reverse cross-entropy plus the "strong fairness" λ·KL(u‖ȳ) (up to
    a constant). Convex in y (Lemma B.1). targets (y), probabilities (σ): N×K; prior u: K (uniform)."""
    u = _prior(prior, probabilities)
    # exact, not clamped: 0·ln 0 = 0, and y → 0 where σ > 0 (or an empty cluster) is +∞
    cross = -torch.special.xlogy(probabilities, targets).sum(1).mean()
    return cross - lamb * torch.special.xlogy(u, targets.mean(0)).sum()


@torch.no_grad()
def self_label_step(targets: Tensor, probabilities: Tensor, lamb: float = 100.0,
                    prior: Tensor | None = None) -> Tensor:
    """One fixed-point update of Algorithm 1:
        S_i^k = y_i^k / Σ_j y_j^k ;  y_i^k ← (σ_i^k + λN u^k S_i^k) / (1 + λN Σ_c u^c S_i^c).

    It is a majorise-minimise step for E(y): Jensen's inequality bounds −ln Σ_i y_i^k from above by
    −Σ_i S_i^k ln(y_i^k / S_i^k), tight at the current y, and the update is the exact minimiser of
    that bound over the simplex. So E(y) never increases. targets, probabilities: N×K."""
    n = probabilities.shape[0]
    u = _prior(prior, probabilities)
    share = targets / targets.sum(0, keepdim=True).clamp_min(EPS)  # S: N×K
    pull = lamb * n * u * share  # λN u^k S_i^k: N×K
    return (probabilities + pull) / (1 + pull.sum(1, keepdim=True))


# σ of a cluster that underflowed to 0 on a whole batch, in float64 (`self_label_targets`)
EMPTY_CLUSTER_FLOOR = 1e-300

# SQUAREM's step length backtracks halfway towards −1 up to this many times (as one batched choice);
# more made no difference in the cases measured
BACKTRACKS = 4


@torch.no_grad()
def squarem_step(targets: Tensor, probabilities: Tensor, lamb: float = 100.0,
                 prior: Tensor | None = None) -> Tensor:
    """One SQUAREM cycle (Varadhan & Roland 2008, scheme S3) over Algorithm 1's map M = `self_label_step`:
        r = M(y) − y ;  v = M(M(y)) − 2M(y) + y ;  α = −max(1, ‖r‖/‖v‖)
        y′ = M(y − 2αr + α²v)   (α = −1 gives M(M(y)) back).
    Extrapolating along the path of two fixed-point steps removes most of their slow linear
    convergence. The extrapolated point keeps every row on the simplex (r and v rows sum to 0). While
    an entry would leave the positive orthant (confident σ puts entries near 0), α backtracks halfway
    towards −1, `BACKTRACKS` times at most, then α = −1; entries where σ is exactly 0 (a float32
    softmax underflows) are 0 in y, r and v and stay 0. If y′ is not below M(M(y)) in E the cycle
    returns M(M(y)), so E(y) never increases, as with the plain iteration. Three map evaluations,
    two objective evaluations and no host sync: the backtracking ladder is one batched choice.
    targets, probabilities: N×K."""
    first = self_label_step(targets, probabilities, lamb, prior)
    second = self_label_step(first, probabilities, lamb, prior)
    r = first - targets
    v = second - first - r
    alpha = (r.norm() / v.norm().clamp_min(torch.finfo(v.dtype).tiny)).clamp_min(1.0).neg()
    halvings = 0.5 ** torch.arange(BACKTRACKS + 1, dtype=r.dtype, device=r.device)
    ladder = -1 + (alpha + 1) * halvings  # α, then halfway towards −1 each rung
    candidates = targets - 2 * ladder.view(-1, 1, 1) * r + ladder.square().view(-1, 1, 1) * v  # L×N×K
    candidates = torch.cat([candidates, second.unsqueeze(0)])  # the last rung, α = −1, is M(M(y)) itself
    feasible = ((candidates > 0) | (targets == 0)).flatten(1).all(1)
    feasible[-1] = True
    extrapolated = candidates[feasible.int().argmax()]
    stabilised = self_label_step(extrapolated, probabilities, lamb, prior)
    lower = (self_label_objective(stabilised, probabilities, lamb, prior)
             <= self_label_objective(second, probabilities, lamb, prior))
    return torch.where(lower, stabilised, second)


@torch.no_grad()
def self_label_targets(probabilities: Tensor, lamb: float = 100.0, prior: Tensor | None = None,
                       max_iterations: int = 300, tolerance: float = 1e-4, check_every: int = 10,
                       accelerate: bool = True) -> tuple[Tensor, int]:
    """The auxiliary targets y of Algorithm 1: initialised by the network output ("a warm start")
    and iterated with its fixed-point map (`self_label_step`), three map evaluations at a time in
    SQUAREM cycles (`squarem_step`; `accelerate=False`: one plain step at a time, as the paper
    writes it; evaluations left over from whole cycles run as plain steps), until no entry moves by
    more than `tolerance` in one step or cycle, or for `max_iterations` map evaluations (0: y = σ).
    Returns (y: N×K, map evaluations used). probabilities are not differentiated.

    The plain iteration converges only linearly, at a rate near λ/(1 + λ) per step once the clusters
    are balanced (0.99 for λ = 100), and E(y) is very flat near its minimum, so the cap matters.
    Measured on random imbalanced σ (a float32 softmax; N 64–1000, K 8–100) against 30,000 plain
    steps: after 300 plain steps the network's gradient of H(σ, y) in its logits is 2–78 % off
    (relative norm; more for more confident σ), after 300 evaluations in SQUAREM cycles 0–28 %, at
    about 2.5× the time on the CPU. y itself differs more, in flat directions (entries with tiny
    σ_i^k) that move neither E nor that gradient. Entries where σ_i^k is exactly 0 (underflow) stay 0
    under the map, though the minimiser would give them some mass; a cluster whose σ is 0 on the
    whole batch is floored at `EMPTY_CLUSTER_FLOOR` first, so y gives it its share instead of E = +∞.
    A Newton solver on the K cluster prices of the
    optimality conditions (y_i^k = σ_i^k/(ν_i − q_k), q_k = λu_k/ȳ_k) stalled for confident σ and was
    not adopted. Computed in float64 (in float32 the plain loop's gradient was 3× further off in a case
    measured).
    Convergence is tested every `check_every` steps or cycles: on a GPU each test is a host sync."""
    dtype = probabilities.dtype if probabilities.dtype.is_floating_point else torch.float32
    probabilities = probabilities.detach().double()
    # a cluster whose σ underflowed to 0 on the whole batch would stay empty under the map, leaving
    # E(y) = +∞; a floor far below any real probability (rows still sum to 1 in float64) lets the
    # fairness term give it its share
    probabilities = torch.where(probabilities.sum(0) == 0, EMPTY_CLUSTER_FLOOR, probabilities)
    targets = probabilities.clone()
    cycle_length = 3 if accelerate else 1
    cycles, leftover = divmod(max_iterations, cycle_length)
    # SQUAREM cycles, then the evaluations left over as plain steps: `max_iterations` evaluations in all
    steps = [squarem_step if accelerate else self_label_step] * cycles + [self_label_step] * leftover
    used = 0
    for index, step in enumerate(steps, start=1):
        updated = step(targets, probabilities, lamb, prior)
        used += cycle_length if step is squarem_step else 1
        converged = index % check_every == 0 and bool((updated - targets).abs().max() <= tolerance)
        targets = updated
        if converged:
            break
    return targets.to(dtype), used
