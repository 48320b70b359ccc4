"""Known answers for the memory-bank losses (AND, UE), the ISIF loss and the memory bank itself."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labelless.losses.clustering import entropy
from labelless.losses.neighbourhood import and_loss, bank_losses, isif_loss, unification_entropy_loss
from labelless.nn.memory import MemoryBank, bank_entropy


def random_logits(m: int = 6, n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * 3


def test_and_loss_without_neighbourhood_is_instance_discrimination() -> None:
    logits, rows = random_logits(), torch.tensor([0, 3, 5, 7, 8, 9])
    expected = F.cross_entropy(logits, rows)
    none = torch.full((6, 1), -1)
    assert torch.allclose(and_loss(logits, rows, none), expected)
    assert torch.allclose(and_loss(logits, rows, rows[:, None]), expected)  # N(x_i) = {i}: still itself


def test_and_loss_with_neighbour_sums_the_probabilities() -> None:
    logits, rows = random_logits(), torch.tensor([0, 3, 5, 7, 8, 9])
    neighbours = torch.tensor([[1], [-1], [2], [7], [0], [4]])  # rows 1 and 3 have none
    p = logits.softmax(1)
    per_row = []
    for i in range(6):
        mass = p[i, rows[i]]
        if neighbours[i, 0] >= 0 and neighbours[i, 0] != rows[i]:
            mass = mass + p[i, neighbours[i, 0]]
        per_row.append(-mass.log())
    assert torch.allclose(and_loss(logits, rows, neighbours), torch.stack(per_row).mean(), atol=1e-6)


def test_ue_of_uniform_logits_is_log_n_minus_one() -> None:
    logits, rows = torch.zeros(4, 10), torch.tensor([0, 1, 2, 9])
    assert unification_entropy_loss(logits, rows).item() == pytest.approx(math.log(9), abs=1e-6)
    assert unification_entropy_loss(logits, rows, exclude_self=False).item() == pytest.approx(math.log(10), abs=1e-6)


def test_ue_ignores_the_own_logit_and_is_zero_when_one_other_dominates() -> None:
    logits = torch.full((2, 5), -50.0)
    logits[0, 0], logits[0, 3] = 50.0, 40.0  # own entry 0 dominates, but is excluded; entry 3 takes the rest
    logits[1, 1], logits[1, 4] = 50.0, 40.0
    assert unification_entropy_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)


def test_ue_gradient_is_finite_with_the_excluded_entry() -> None:
    logits = random_logits().requires_grad_()
    unification_entropy_loss(logits, torch.arange(6)).backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[torch.arange(6), torch.arange(6)] == 0)


@pytest.mark.parametrize("ue_weight, exclude_self", [(0.4, True), (0.0, True), (1.0, False), (0.2, False)])
def test_bank_losses_are_and_plus_weighted_ue_value_and_gradient(ue_weight, exclude_self) -> None:
    g = torch.Generator().manual_seed(3)
    rows = torch.tensor([0, 3, 5, 7, 8, 9, 3, 1])  # a repeated row, as both views of one image are
    logits = torch.randn(8, 40, generator=g) * 4
    logits[1, 3] = 60.0  # the own entry outweighs the rest by > 88: its exp underflows everything else
    logits[2, 5], logits[2, 6] = 30.0, -60.0
    neighbours = torch.tensor([[1, 2], [-1, -1], [6, 6], [7, 2], [0, -1], [4, 11], [-1, 12], [1, 30]])
    reference = logits.clone().requires_grad_()
    fused = logits.clone().requires_grad_()
    and_value = and_loss(reference, rows, neighbours)
    ue_value = unification_entropy_loss(reference, rows, exclude_self)
    (and_value + ue_weight * ue_value).backward()
    loss, and_fused, ue_fused = bank_losses(fused, rows, neighbours, ue_weight, exclude_self)
    loss.backward()
    assert and_fused.item() == pytest.approx(and_value.item(), abs=1e-5)
    assert ue_fused.item() == pytest.approx(ue_value.item() if ue_weight > 0 else 0.0, abs=1e-5)
    assert loss.item() == pytest.approx((and_value + ue_weight * ue_value).item(), abs=1e-5)
    assert torch.allclose(fused.grad, reference.grad, atol=1e-6)
    assert not and_fused.requires_grad and not ue_fused.requires_grad


def test_bank_losses_stay_float32_under_autocast() -> None:
    logits = (random_logits() * 2).requires_grad_()
    rows, neighbours = torch.arange(6), torch.tensor([[1], [0], [-1], [4], [3], [5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, ue = bank_losses(logits, rows, neighbours, 0.5)
    loss.backward()
    reference = and_loss(logits.detach(), rows, neighbours) + 0.5 * unification_entropy_loss(logits.detach(), rows)
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)


def test_isif_identical_orthogonal_views_give_the_closed_form() -> None:
    b, tau = 4, 0.5  # at 0.1 the answer is 5e-4, below float32's resolution of 1 − p
    z = torch.eye(8)[:b]
    q = math.exp(1 / tau) / (math.exp(1 / tau) + 2 * b - 2)
    expected = -math.log(q) - (2 * b - 2) * math.log(1 - q * math.exp(-1 / tau))
    assert isif_loss(z, z, tau).item() == pytest.approx(expected, rel=1e-5)


def test_isif_decreases_when_views_coincide() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=g)
    far, near = torch.randn(16, 8, generator=g), z1 + 0.3 * torch.randn(16, 8, generator=g)
    assert isif_loss(z1, z1, 0.5) < isif_loss(z1, near, 0.5) < isif_loss(z1, far, 0.5)


def test_isif_is_invariant_to_scale_and_has_finite_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert torch.allclose(isif_loss(z1, z2), isif_loss(10 * z1, 0.1 * z2))  # relationship vectors: any scale
    query = z1.clone().requires_grad_()
    isif_loss(query, z2).backward()
    assert torch.isfinite(query.grad).all() and query.grad.abs().sum() > 0


def test_isif_stays_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    metric = (lambda m: m.t() @ m)(torch.randn(200, 32, generator=g))
    for gram in (None, metric):
        expected = isif_loss(z1, z2, metric=gram)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = isif_loss(z1, z2, metric=gram)
        assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_memory_update_is_ema_and_keeps_unit_norm() -> None:
    bank = MemoryBank(dim=4, momentum=0.5)
    bank.reset(6)
    assert torch.allclose(bank.memory.norm(dim=1), torch.ones(6))
    bank.memory = torch.eye(6, 4)[[0, 1, 2, 3, 0, 1]]
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]]))
    assert torch.allclose(bank.memory[0], torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2))
    assert torch.allclose(bank.memory[2], torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6)  # normalised after mixing
    assert torch.allclose(bank.memory.norm(dim=1), torch.ones(6))


def test_memory_update_after_logits_keeps_the_backward_pass_valid() -> None:
    bank = MemoryBank(dim=4)
    bank.reset(5)
    v = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    before = bank.memory.clone()
    logits = bank.logits(v, 0.1)
    bank.update(torch.tensor([0, 1, 2]), v.detach())
    logits.sum().backward()
    assert torch.allclose(v.grad, before.sum(0).expand(3, 4) / 0.1)  # the bank the logits saw


def test_memory_bank_resizes_to_a_checkpoint() -> None:
    saved = MemoryBank(dim=4)
    saved.reset(7)
    fresh = MemoryBank(dim=4)
    fresh.load_state_dict(saved.state_dict())
    assert torch.equal(fresh.memory, saved.memory)


def test_bank_entropy_matches_the_direct_softmax_and_chunking() -> None:
    memory = F.normalize(torch.randn(9, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    direct = entropy((memory @ memory.t() / 0.1).softmax(1))
    assert torch.allclose(bank_entropy(memory, 0.1, chunk_size=2), direct, atol=1e-5)


@pytest.mark.parametrize("rows", [300, 5])  # a bank wider than D, and one of fewer rows than D (rank-deficient)
def test_isif_under_the_banks_gram_metric_is_isif_on_the_relationship_vectors_value_and_gradient(rows) -> None:
    g = torch.Generator().manual_seed(3)
    bank = MemoryBank(dim=16)
    bank.memory = F.normalize(torch.randn(rows, 16, generator=g), dim=1)
    embeddings = F.normalize(torch.randn(12, 16, generator=g), dim=1)
    full, metric = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
    expected = isif_loss(*bank.logits(full, 0.1).chunk(2), 0.1)  # on the 12×rows relationship vectors
    found = isif_loss(*metric.chunk(2), 0.1, metric=bank.gram())
    expected.backward(), found.backward()
    assert found.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(metric.grad, full.grad, rtol=1e-4, atol=1e-6)
    assert full.grad.abs().sum() > 0 and bank.gram().shape == (16, 16)
