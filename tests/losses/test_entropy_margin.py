"""Known answers for the entropy-clustering losses (Zhang & Boykov), the self-labelling fixed point,
IIC's mutual information, and the empty-cluster repair of pseudo-label methods."""
import math

import pytest
import torch
import torch.nn.functional as F

from labelless.losses.clustering import entropy, iic_loss, mean_entropy
from labelless.losses.entropy_margin import (entropy_margin_loss, kl_to_uniform, margin_term, reverse_cross_entropy,
                                             self_label_objective, self_label_step, self_label_targets,
                                             squarem_step)
from labelless.losses.pseudo_label import inverse_frequency_weights, repair_empty_clusters


def one_hot_balanced(n: int, k: int) -> torch.Tensor:
    return F.one_hot(torch.arange(n) % k, k).float()


def test_uniform_posteriors_have_marginal_entropy_log_k():
    k = 6
    sigma = torch.full((30, k), 1 / k)
    assert mean_entropy(sigma).item() == pytest.approx(math.log(k))
    assert kl_to_uniform(sigma).item() == pytest.approx(0.0, abs=1e-6)
    # every σ_i uniform: mean H(σ) = log K and KL(σ̄‖u) = 0
    assert entropy_margin_loss(sigma).item() == pytest.approx(math.log(k), abs=1e-6)


def test_one_hot_balanced_posteriors_have_zero_mean_entropy_and_minimal_loss():
    k = 5
    sigma = one_hot_balanced(50, k)
    assert entropy(sigma).mean().item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_margin_loss(sigma, fairness_weight=1.3).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = F.one_hot(torch.zeros(50, dtype=torch.long), k).float()
    # all in one cluster: decisive but unfair, KL(σ̄‖u) = log K, weighted by the fairness weight
    assert entropy_margin_loss(collapsed, fairness_weight=1.3).item() == pytest.approx(1.3 * math.log(k), abs=1e-5)


def test_loss_a_equals_mean_entropy_minus_marginal_entropy_plus_margin():
    torch.manual_seed(0)
    sigma = torch.randn(40, 7).softmax(1)
    v = torch.randn(7, 16)
    expected = entropy(sigma).mean() - mean_entropy(sigma) + math.log(7) + 0.1 * v.pow(2).sum()
    assert entropy_margin_loss(sigma, v, gamma=0.1).item() == pytest.approx(expected.item(), rel=1e-5)
    assert margin_term(v, 0.1).item() == pytest.approx(0.1 * v.pow(2).sum().item(), rel=1e-6)


def test_iic_mutual_information_of_identical_one_hot_balanced_views_is_log_k():
    k = 10
    p = one_hot_balanced(100, k)
    # the empty off-diagonal joint cells are clamped to machine epsilon, as IIC's code does
    assert iic_loss(p, p).item() == pytest.approx(-math.log(k), abs=2e-4)


def test_reverse_cross_entropy_puts_the_network_output_outside_the_log():
    sigma = torch.tensor([[0.5, 0.5]], requires_grad=True)
    y = torch.tensor([[0.9, 0.1]])
    loss = reverse_cross_entropy(sigma, y)
    assert loss.item() == pytest.approx(-(0.5 * math.log(0.9) + 0.5 * math.log(0.1)), rel=1e-6)
    loss.backward()
    assert sigma.grad[0].tolist() == pytest.approx([-math.log(0.9), -math.log(0.1)], rel=1e-6)


@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0])
def test_fixed_point_decreases_the_objective_monotonically(scale: float):
    generator = torch.Generator().manual_seed(int(scale * 10))
    # imbalanced random posteriors: a per-cluster offset makes some clusters rare
    logits = torch.randn(64, 8, generator=generator, dtype=torch.float64) * scale
    sigma = (logits + 2 * torch.randn(8, generator=generator, dtype=torch.float64)).softmax(1)
    y = sigma.clone()
    values = [self_label_objective(y, sigma).item()]
    for _ in range(100):
        y = self_label_step(y, sigma)
        assert torch.allclose(y.sum(1), torch.ones(64, dtype=torch.float64))
        assert bool((y > 0).all())
        values.append(self_label_objective(y, sigma).item())
    steps = torch.tensor(values).diff()
    assert bool((steps <= 1e-9).all()), f"E(y) increased by {steps.max().item()}"
    assert values[-1] < values[0]


def test_fixed_point_balances_the_targets():
    generator = torch.Generator().manual_seed(0)
    sigma = (torch.randn(200, 4, generator=generator) + torch.tensor([3.0, 0.0, 0.0, -1.0])).softmax(1)
    targets, iterations = self_label_targets(sigma, lamb=100.0, max_iterations=2000)
    assert iterations > 1
    # strong fairness (λ = 100): the targets' marginal is far closer to uniform than σ's
    assert kl_to_uniform(targets).item() < 0.1 * kl_to_uniform(sigma).item()
    # a balanced, confident σ is already the fixed point (S = y/(N u) makes the update the identity)
    balanced = one_hot_balanced(40, 4) * 0.96 + 0.01  # rows sum to 1
    for accelerate, evaluations in ((False, 1), (True, 3)):
        fixed, used = self_label_targets(balanced, lamb=100.0, accelerate=accelerate)
        assert torch.allclose(fixed, balanced, atol=1e-5)
        assert used == 10 * evaluations  # converged at the first check


def _imbalanced_posteriors(seed: int, n: int = 250, k: int = 10, scale: float = 5.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    return (logits + 2 * torch.randn(k, generator=generator, dtype=torch.float64)).softmax(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squarem_cycles_never_increase_the_objective(seed: int):
    sigma = _imbalanced_posteriors(seed, n=64, k=8, scale=10.0)
    y = sigma.clone()
    values = [self_label_objective(y, sigma).item()]
    for _ in range(60):
        y = squarem_step(y, sigma)
        assert torch.allclose(y.sum(1), torch.ones(64, dtype=torch.float64)) and bool((y > 0).all())
        values.append(self_label_objective(y, sigma).item())
    steps = torch.tensor(values).diff()
    assert bool((steps <= 1e-9).all()), f"E(y) increased by {steps.max().item()}"


def test_squarem_gets_much_closer_to_the_minimiser_for_the_same_map_evaluations():
    """300 map evaluations either way; the reference is 20,000 plain steps. What the network sees is
    the gradient of H(σ, y) in its logits, so that is what is compared (y itself is ill-determined
    where σ is tiny)."""
    logits = torch.randn(250, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    sigma = logits.softmax(1)
    reference = sigma.clone()
    for _ in range(20000):
        reference = self_label_step(reference, sigma)

    def gradient(targets: torch.Tensor) -> torch.Tensor:
        z = logits.clone().requires_grad_(True)
        reverse_cross_entropy(z.softmax(1), targets).backward()
        return z.grad

    errors = {}
    for accelerate in (False, True):
        targets, used = self_label_targets(sigma, max_iterations=300, tolerance=0.0, accelerate=accelerate)
        assert used == 300
        errors[accelerate] = ((gradient(targets.double()) - gradient(reference)).norm() / gradient(reference).norm()).item()
        assert self_label_objective(targets.double(), sigma) >= self_label_objective(reference, sigma) - 1e-9
    assert errors[True] < 0.25 * errors[False], errors


def test_empty_cluster_repair_keeps_every_cluster_non_empty():
    generator = torch.Generator().manual_seed(0)
    k = 10
    for labels in (torch.zeros(256, dtype=torch.long), torch.randint(0, 3, (37,), generator=generator),
                   torch.tensor([4] * 10 + [7])):
        repaired = repair_empty_clusters(labels, k, generator)
        assert bool((torch.bincount(repaired, minlength=k) > 0).all())
        # only samples of the clusters that were split change label: each moves into a cluster that was
        # empty, every final cluster holds samples of one original cluster only (a split moves part of one
        # cluster), and the first split takes from the largest cluster
        changed = repaired != labels
        assert repaired.shape == labels.shape and int(changed.sum()) > 0
        counts = torch.bincount(labels, minlength=k)
        assert bool((counts[repaired[changed]] == 0).all())
        assert all(len(labels[repaired == cluster].unique()) == 1 for cluster in repaired.unique())
        assert int(counts.argmax()) in labels[changed].tolist()
    singleton = repair_empty_clusters(torch.tensor([4] * 10 + [7]), k, generator)
    assert singleton[10] == 7 and int((singleton[:10] == 4).sum()) > 0  # a 1-sample cluster is never split
    one_split = repair_empty_clusters(torch.tensor([0] * 3 + [1] * 8), 3, generator)
    assert one_split[:3].tolist() == [0, 0, 0]  # cluster 0 is not the largest, so is not split: untouched
    assert torch.bincount(one_split).tolist() == [3, 4, 4]
    all_in_one = repair_empty_clusters(torch.zeros(256, dtype=torch.long), 2, generator)
    assert torch.bincount(all_in_one).tolist() == [128, 128]  # half of the largest, as the study does
    untouched = torch.arange(20) % 4
    assert torch.equal(repair_empty_clusters(untouched, 4, generator), untouched)


def test_inverse_frequency_weights_equalise_clusters():
    labels = torch.tensor([0] * 6 + [1] * 3 + [3] * 1)  # cluster 2 empty
    weights = inverse_frequency_weights(labels, 4)
    totals = torch.bincount(labels, weights=weights[labels], minlength=4)
    assert totals[[0, 1, 3]].tolist() == pytest.approx([totals[0].item()] * 3)
    assert weights[2].item() == 0.0
    assert weights[[0, 1, 3]].mean().item() == pytest.approx(1.0)


def test_squarem_accelerates_posteriors_that_underflowed_to_zero():
    """A confident float32 softmax has exact zeros; they stay 0 (the map keeps them there) and must not
    stop the extrapolation, which would leave SQUAREM no better than plain steps."""
    logits = torch.randn(250, 10, generator=torch.Generator().manual_seed(4)) * 40
    sigma = logits.softmax(1).double()  # a float32 softmax: hundreds of entries are exactly 0
    assert int((sigma == 0).sum()) > 100
    exact = sigma
    reference = exact.clone()
    for _ in range(20000):
        reference = self_label_step(reference, exact)
    floor = self_label_objective(reference, exact).item()
    gaps = {}
    for accelerate in (False, True):
        targets, _ = self_label_targets(sigma, max_iterations=300, tolerance=0.0, accelerate=accelerate)
        assert bool((targets[sigma == 0] == 0).all())
        gaps[accelerate] = self_label_objective(targets.double(), exact).item() - floor
    assert 0 <= gaps[True] < 0.5 * gaps[False], gaps


def test_max_iterations_counts_map_evaluations_exactly():
    sigma = _imbalanced_posteriors(5, n=40, k=4)
    for accelerate in (False, True):
        unchanged, used = self_label_targets(sigma, max_iterations=0, accelerate=accelerate)
        assert used == 0 and torch.equal(unchanged, sigma)
        for budget in (1, 2, 50):
            _, used = self_label_targets(sigma, max_iterations=budget, tolerance=0.0, accelerate=accelerate)
            assert used == budget


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_cluster_absent_from_the_whole_batch_still_gets_its_share(accelerate: bool):
    """σ of cluster 3 underflowed to 0 on every row (a float32 softmax): the minimiser of E still gives
    it mass (strong fairness, λ = 100), instead of leaving E(y) = +∞."""
    logits = torch.randn(250, 10, generator=torch.Generator().manual_seed(6)) * 3
    logits[:, 3] -= 200
    sigma = logits.softmax(1)
    assert bool((sigma[:, 3] == 0).all())
    targets, _ = self_label_targets(sigma, accelerate=accelerate)
    marginal = targets.mean(0)
    assert marginal[3].item() > 0.09 and marginal.max().item() < 0.11
    assert math.isfinite(self_label_objective(targets.double(), sigma.double()).item())
