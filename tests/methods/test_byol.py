"""BYOL: the target is a moving average of the online backbone and projector, at the momentum the
cosine schedule gives, updated from the weights the optimiser left; only the online side trains."""
from __future__ import annotations

import math

import pytest
import torch

from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.base import Batch, EpochContext
from labelless.methods.byol import BYOL, target_momentum


def tiny() -> BYOL:
    return BYOL(k=3, in_channels=3, image_size=16, backbone="small_cnn", hidden_dim=32, projection_dim=16,
                augment="weak")


def test_target_momentum_follows_a_cosine_from_its_base_to_one():
    assert target_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert target_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert target_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert target_momentum(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_the_target_starts_as_a_copy_and_then_moves_by_one_minus_tau_toward_the_online_weights():
    torch.manual_seed(0)
    method = tiny()
    online = [p for p in method.backbone.parameters()] + [p for p in method.projector.parameters()]
    target = [p for p in method.target_backbone.parameters()] + [p for p in method.target_projector.parameters()]
    assert all(torch.equal(o, t) for o, t in zip(online, target, strict=True))
    assert not any(t.requires_grad for t in target)
    store = ImageStore(torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8))
    method.on_epoch_start(10, EpochContext(epoch=10, epochs=20, store=store, device=torch.device("cpu")))
    tau = float(method.momentum)
    assert tau == pytest.approx(0.995)
    optimizer = torch.optim.SGD([p for group in method.parameter_groups() for p in group["params"]], lr=0.5)
    rows = torch.arange(16)
    loss, _ = method.training_step(Batch(store.batch(rows), rows))
    loss.backward()
    optimizer.step()  # the online side moved; the target did not (it has no gradient)
    assert not torch.equal(online[0], target[0])
    before = [t.detach().clone() for t in target]
    method.training_step(Batch(store.batch(rows), rows))  # the step begins with ξ ← τξ + (1 − τ)θ
    for b, o, t in zip(before, online, target, strict=True):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o.detach())
    trained = {id(p) for group in method.parameter_groups() for p in group["params"]}
    assert trained == {id(p) for m in (method.backbone, method.projector, method.predictor) for p in m.parameters()}


def test_byol_learns_from_scratch_only():
    with pytest.raises(UserError, match="from scratch"):
        BYOL(k=3, in_channels=3, image_size=16, backbone="small_cnn", pretrained=tiny())
    with pytest.raises(UserError, match="momentum"):
        BYOL(k=3, in_channels=3, image_size=16, backbone="small_cnn", momentum=1.0)
