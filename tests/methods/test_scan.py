"""SCAN's neighbour space: principal components and deskewed pixels (known answers); the self-labelling step."""
from __future__ import annotations

import pytest
import torch

from labelless.data.stores import ImageStore
from labelless.methods.scan import SCAN, pixel_features, principal_components


def test_principal_components_keep_every_distance_of_data_in_a_subspace():
    """Points in a 3-dimensional affine subspace of R^20: 3 components lose no distance at all."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(20, 3, generator=g)).Q.T  # 3×20, orthonormal rows
    points = torch.randn(200, 3, generator=g, dtype=torch.float64) @ basis.double() + 5.0
    scores = principal_components(points, 3)
    assert scores.shape == (200, 3)
    assert torch.allclose(torch.cdist(scores, scores), torch.cdist(points, points), atol=1e-5)
    assert principal_components(points, 0) is points and principal_components(points, 20) is points


def test_principal_components_of_fewer_samples_than_components_keep_every_distance():
    """A folder of 12 images and SCAN's 50 components (torch's pca_lowrank refuses q > samples)."""
    points = torch.randn(12, 784, generator=torch.Generator().manual_seed(0))
    scores = principal_components(points, 50)
    assert torch.allclose(scores.mean(0), torch.zeros(784), atol=1e-5)
    assert torch.allclose(torch.cdist(scores, scores), torch.cdist(points, points), atol=1e-4)


def test_deskewed_pixel_features_bring_two_slants_of_one_stroke_together():
    """Two slants of the same bar are far apart in raw pixels and close after deskewing, while a
    different shape (a horizontal bar) stays far."""
    images = torch.zeros(3, 28, 28, 1, dtype=torch.uint8)
    for row in range(6, 22):
        images[0, row, 12:15] = 255  # upright bar
        col = round(13.5 + 0.5 * (row - 13.5))
        images[1, row, col - 1:col + 2] = 255  # the same bar, slanted
    images[2, 12:15, 6:22] = 255  # a horizontal bar
    store = ImageStore(images)

    def cos(f: torch.Tensor, i: int, j: int) -> float:
        return float(torch.nn.functional.cosine_similarity(f[i], f[j], dim=0))

    raw = store.batch(torch.arange(3)).flatten(1)
    deskewed = pixel_features(store, deskewed=True) + raw.mean(0)  # undo the centring
    assert cos(raw, 0, 1) < 0.5 < 0.8 < cos(deskewed, 0, 1)
    assert cos(deskewed, 0, 2) < 0.5


def test_scan_rejects_an_unknown_pixel_space():
    with pytest.raises(ValueError, match="pixel_space"):
        SCAN(k=3, in_channels=1, image_size=8, backbone="mlp", pixel_space="sideways")


@pytest.mark.parametrize("weak_pass, rows", [("joint", 16), ("separate", 8)])
def test_self_labelling_backpropagates_through_the_views_its_weak_pass_names(weak_pass, rows):
    """`joint`: one forward and backward of both views (2N rows); `separate` (SCAN's loop): the weak view
    only labels, under no_grad, so the backward sees N rows. The loss is the strong view's confident
    cross-entropy against the weak view's argmax either way."""
    from labelless.errors import UserError
    from labelless.losses import confident_self_label_loss
    from labelless.methods.base import Batch
    from labelless.methods.selflabel import SelfLabel

    torch.manual_seed(0)
    scan = SCAN(k=4, in_channels=3, image_size=16, backbone="small_cnn", heads=2, num_neighbours=3)
    selflabel = SelfLabel(k=4, in_channels=3, image_size=16, pretrained=scan, threshold=0.0,
                          weak_augment="none", strong_augment="none", weak_pass=weak_pass)
    rows_in_backward = []

    def count_rows(module, inputs, out) -> None:  # the first conv's output: its gradient's rows in backward
        if out.requires_grad:
            out.register_hook(lambda grad: rows_in_backward.append(len(grad)))

    next(m for m in selflabel.backbone.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(count_rows)
    images = torch.rand(8, 3, 16, 16)
    loss, _ = selflabel.training_step(Batch(images, torch.arange(8)))
    loss.backward()
    assert rows_in_backward == [rows]
    selflabel.eval()  # same BatchNorm statistics for both views: the two logits are then equal
    with torch.no_grad():
        logits = selflabel.cluster_logits(images)
        loss, _ = selflabel.training_step(Batch(images, torch.arange(8)))
    assert loss.item() == pytest.approx(confident_self_label_loss(logits, logits, 0.0)[0].item(), rel=1e-5)
    with pytest.raises(UserError, match="weak_pass"):
        SelfLabel(k=4, in_channels=3, image_size=16, pretrained=scan, weak_pass="both")
