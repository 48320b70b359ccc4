"""Virtual adversarial training as self-augmentation (Miyato et al. 2018; used for clustering by
IMSAT, Hu et al. 2017, "Learning discrete representations via information maximizing self-augmented
training" — the "MI-D" row that Zhang & Boykov compare against).

Instead of a hand-chosen transformation t, each image is perturbed in the direction r that changes the
network's posterior most, within a ball of radius ε_i, and the posterior is pulled back:
    R_vat = mean_i KL( p(·|x_i) ‖ p(·|x_i + ε_i r_i) ),   r_i = argmax_{‖r‖=1} KL( p(·|x_i) ‖ p(·|x_i + r) ),
with p(·|x_i) held constant. r_i is found by power iteration on the KL's Hessian: start from a random
unit vector d, take the gradient of KL(p(x) ‖ p(x + ξd)) with respect to d, normalise, repeat.
IMSAT sets ε_i adaptively, a fraction (0.25) of x_i's distance to its 10th nearest neighbour, so the
ball stays inside the data's own scale (`kth_neighbour_distance` in `labelless.evaluate.knn`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def posterior_kl(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """mean_i KL(softmax(reference_i) ‖ softmax(logits_i)); the reference is not differentiated. N×K each."""
    reference = reference_logits.detach().float()
    p = reference.softmax(1)
    return (p * (reference.log_softmax(1) - logits.float().log_softmax(1))).sum(1).mean()


def _unit(d: Tensor) -> Tensor:
    """Each sample's perturbation scaled to unit Euclidean norm over all its pixels."""
    norms = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    return d / norms.view(-1, *([1] * (d.ndim - 1)))


@contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BatchNorm's running mean/variance (and counter) as they were:
    the perturbed copies VAT feeds through the network normalise with their own batch statistics, as in
    training, but must not move the statistics used at evaluation (IMSAT's `update_batch_stats=False`).

    Done by a momentum of 0 (running ← 1·running + 0·batch) rather than by copying saved values back:
    the running buffers are inputs of the graph that is still to be differentiated, and an in-place
    copy would invalidate it."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, counter) in zip(norms, saved):
            m.momentum = momentum
            if counter is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(counter)


def adversarial_direction(forward: Callable[[Tensor], Tensor], images: Tensor, reference_logits: Tensor,
                          xi: float = 10.0, iterations: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Unit-norm r_i (same shape as images) that most increases KL(p(x_i) ‖ p(x_i + r)), by `iterations`
    power-iteration steps from a random direction, each a finite difference of size ξ. The parameters'
    gradients are not touched (only the direction is differentiated)."""
    d = _unit(torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator))
    for _ in range(iterations):
        d.requires_grad_(True)
        distance = posterior_kl(reference_logits, forward(images + xi * d))
        (gradient,) = torch.autograd.grad(distance, d, allow_unused=True)
        d = d.detach() if gradient is None else _unit(gradient.detach())  # None: the output ignores x
    return d


def vat_loss(forward: Callable[[Tensor], Tensor], images: Tensor, radius: Tensor | float,
             reference_logits: Tensor | None = None, *, xi: float = 10.0, iterations: int = 1) -> Tensor:
    """R_vat = mean_i KL(p(x_i) ‖ p(x_i + ε_i r_i)), differentiable in the network's parameters.

    forward: images → logits; radius ε: a scalar or one value per image (N); reference_logits: the
    network's logits on the clean images if already computed (detached here), else one extra forward.
    With `iterations` = 0 the direction is random: plain random-perturbation training (IMSAT's RPT)."""
    if reference_logits is None:
        with torch.no_grad():
            reference_logits = forward(images)
    direction = adversarial_direction(forward, images, reference_logits, xi, iterations)
    radius = torch.as_tensor(radius, dtype=images.dtype, device=images.device)
    if radius.ndim:
        radius = radius.view(-1, *([1] * (images.ndim - 1)))
    return posterior_kl(reference_logits, forward(images + radius * direction))


__all__ = ["adversarial_direction", "frozen_batchnorm_statistics", "posterior_kl", "vat_loss"]

