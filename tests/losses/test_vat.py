"""Virtual adversarial training (IMSAT's self-augmentation): the power iteration finds the known
most-sensitive direction, the loss is a KL with known zeros, and BatchNorm statistics stay put."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelless.losses.vat import adversarial_direction, frozen_batchnorm_statistics, posterior_kl, vat_loss


def test_posterior_kl_known_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    assert posterior_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    # KL((1/2, 1/2) ‖ (p, 1 − p)) = −ln 2 − ½ ln(p(1 − p))
    other = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(torch.tensor(1.0)).item()
    expected = -torch.log(torch.tensor(2.0)).item() - 0.5 * torch.log(torch.tensor(p * (1 - p))).item()
    assert posterior_kl(logits[:1], other).item() == pytest.approx(expected, rel=1e-5)


def test_direction_is_the_top_eigenvector_of_the_kl_hessian_for_a_linear_softmax() -> None:
    # logits = W x: the KL's Hessian in the perturbation is Wᵀ (diag p − p pᵀ) W, whose leading
    # eigenvector power iteration (with a small finite difference ξ) must find, up to sign
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64)

    def forward(z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, weight)

    torch.manual_seed(0)
    direction = adversarial_direction(forward, x, forward(x), xi=1e-4, iterations=30)
    assert torch.allclose(direction.norm(dim=1), torch.ones(3, dtype=torch.float64))
    for i in range(3):
        p = forward(x[i:i + 1]).softmax(1)[0]
        hessian = weight.T @ (torch.diag(p) - torch.outer(p, p)) @ weight
        top = torch.linalg.eigh(hessian).eigenvectors[:, -1]
        assert abs(float(direction[i] @ top)) > 0.999


def test_vat_loss_grows_with_the_radius_and_vanishes_at_zero() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(8, 5)
    torch.manual_seed(1)
    assert vat_loss(net, x, 0.0).item() == pytest.approx(0.0, abs=1e-7)
    losses = []
    for radius in (0.1, 0.5, 2.0):
        torch.manual_seed(1)
        losses.append(vat_loss(net, x, radius * torch.ones(8)).item())
    assert 0 < losses[0] < losses[1] < losses[2]
    # the adversarial direction hurts more than a random one of the same length (RPT: iterations=0)
    torch.manual_seed(1)
    adversarial = vat_loss(net, x, 0.5, iterations=1)
    torch.manual_seed(1)
    random = vat_loss(net, x, 0.5, iterations=0)
    assert adversarial > random
    adversarial.backward()  # differentiable in the parameters
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_network_that_ignores_its_input_has_zero_loss() -> None:
    bias = nn.Parameter(torch.tensor([0.3, -0.2]))

    def constant(z: torch.Tensor) -> torch.Tensor:
        return bias.expand(len(z), 2) + 0 * z.sum(1, keepdim=True)

    assert vat_loss(constant, torch.randn(4, 3), 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert vat_loss(lambda z: bias.expand(len(z), 2), torch.randn(4, 3), 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_frozen_batchnorm_statistics_restores_running_stats_in_train_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    bn = net[1]
    x = torch.randn(16, 4) + 3
    clean = net(x)  # the training pass moves the statistics once
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    with frozen_batchnorm_statistics(net):
        vat = vat_loss(net, x, torch.full((16,), 0.5), clean)
    (clean.logsumexp(1).mean() + vat).backward()  # the clean pass's graph is still intact
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    net(torch.randn(16, 4) + 3)  # outside, training moves them as usual
    assert not torch.equal(bn.running_mean, before[0])
