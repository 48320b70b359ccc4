"""Known answers for the clustering losses shared by IIC, SCAN, TwoStageUC and self-labelling."""
import math

import pytest
import torch
import torch.nn.functional as F

from labelless.losses import byol_loss, confident_self_label_loss, entropy, iic_loss, mean_entropy, nt_xent_loss, scan_loss


def one_hot_balanced(n: int, k: int) -> torch.Tensor:
    return F.one_hot(torch.arange(n) % k, k).float()


def test_entropy_of_uniform_and_one_hot():
    k = 7
    assert entropy(torch.full((k,), 1 / k)).item() == pytest.approx(math.log(k))
    assert entropy(torch.eye(k)).sum().item() == pytest.approx(0.0, abs=1e-6)
    assert mean_entropy(one_hot_balanced(70, k)).item() == pytest.approx(math.log(k))


def test_iic_of_identical_one_hot_balanced_views_is_minus_log_k():
    p = one_hot_balanced(40, 4)
    # the 12 empty joint cells are clamped to machine epsilon (as IIC's code does): a 2e-5 offset
    assert iic_loss(p, p).item() == pytest.approx(-math.log(4), abs=5e-5)


def test_iic_of_independent_views_is_zero():
    # every sample uniform: the joint is the product of its marginals, so I = 0
    p = torch.full((32, 5), 0.2)
    assert iic_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)


def test_iic_is_float32_under_autocast():
    # a bf16 joint moves this young head's −MI by 6 % (23 % in other draws); loss-chosen heads are compared by it
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(256, 10, generator=g)
    p, p_other = logits.softmax(1), (logits + torch.randn(256, 10, generator=g)).softmax(1)
    expected = iic_loss(p, p_other)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = iic_loss(p, p_other)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_scan_loss_parts():
    k, n = 5, 50
    logits = one_hot_balanced(n, k) * 50  # confident, balanced, neighbours agree
    total, consistency, marginal = scan_loss(logits, logits, entropy_weight=5.0)
    assert consistency.item() == pytest.approx(0.0, abs=1e-5)
    assert marginal.item() == pytest.approx(math.log(k), abs=1e-5)
    assert total.item() == pytest.approx(-5 * math.log(k), abs=1e-4)
    disagree = scan_loss(logits, logits.roll(1, dims=1))[1]
    assert disagree.item() > 10  # −log of a near-zero inner product


def test_confident_self_label_loss_uses_only_confident_samples_and_balances():
    weak = torch.tensor([[10.0, 0, 0], [10.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0], [0.1, 0, 0]])
    strong = torch.zeros(5, 3, requires_grad=True)
    loss, mask = confident_self_label_loss(weak, strong, threshold=0.99)
    assert mask.tolist() == [True, True, True, True, False]
    assert loss.item() == pytest.approx(math.log(3), abs=1e-5)  # uniform strong logits: CE = log K
    loss.backward()
    # balanced weights: the single class-1 sample pulls as hard as the three class-0 samples together
    assert strong.grad[3, 1].item() == pytest.approx(3 * strong.grad[0, 0].item(), rel=1e-5)
    assert strong.grad[4].abs().sum().item() == 0.0
    none, mask = confident_self_label_loss(torch.zeros(4, 3), torch.zeros(4, 3))
    assert none.item() == 0.0 and not mask.any()


@pytest.mark.parametrize("balance", [True, False])
def test_confident_self_label_loss_equals_masked_weighted_cross_entropy(balance):
    """The mask-free form (static shapes, for torch.compile) is the masked, class-weighted mean."""
    g = torch.Generator().manual_seed(0)
    weak, strong = torch.randn(64, 5, generator=g) * 4, torch.randn(64, 5, generator=g)
    loss, mask = confident_self_label_loss(weak, strong, threshold=0.9, balance=balance)
    targets = weak.argmax(1)[mask]
    weight = 1.0 / torch.bincount(targets, minlength=5).float().clamp_min(1) if balance else None
    assert 0 < int(mask.sum()) < 64
    assert loss.item() == pytest.approx(F.cross_entropy(strong[mask], targets, weight=weight).item(), rel=1e-5)


def test_nt_xent_is_lower_for_matching_views():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(16, 8), dim=1)
    matched = nt_xent_loss(z, z, temperature=0.2)
    shuffled = nt_xent_loss(z, z[torch.randperm(16)], temperature=0.2)
    assert matched.item() < shuffled.item()
    orthogonal = torch.eye(8)
    expected = -math.log(math.exp(5) / (math.exp(5) + 2 * 8 - 2))
    assert nt_xent_loss(orthogonal, orthogonal, 0.2).item() == pytest.approx(expected, abs=1e-5)


def test_byol_loss_is_two_minus_twice_the_cosine_and_sends_no_gradient_to_the_target():
    e = torch.eye(3)
    assert byol_loss(e, e).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert byol_loss(e, e.roll(1, 0)).item() == pytest.approx(2.0)  # orthogonal
    assert byol_loss(3 * e, -e).item() == pytest.approx(4.0)  # opposite; scale does not matter
    prediction = torch.tensor([[1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = byol_loss(prediction, target)
    assert loss.item() == pytest.approx(2 - 2 / math.sqrt(2), rel=1e-6)
    loss.backward()
    assert prediction.grad is not None and target.grad is None
