"""A tiny run of the entropy / pseudo-label family (entropy_margin, iic, pseudo_label, deepcluster) on
256 MNIST images (synthetic 28×28 digits-like images when MNIST is absent): one CPU epoch each through
the real pipeline (config → registry → Trainer), finite losses, a prediction per image. The supervised
reference, which needs labels from the Trainer, is stepped directly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from labelless.config import load_config
from labelless.data.sources import default_data_root
from labelless.data.stores import ImageStore, to_float
from labelless.errors import UserError
from labelless.methods.base import Batch
from labelless.methods.supervised import Supervised
from labelless.pipeline import train

MNIST_ROOT = default_data_root()  # ../shared/data beside the checkout, or $LABELLESS_DATA
N_IMAGES = 256


@pytest.fixture(scope="module")
def store() -> ImageStore:
    if (MNIST_ROOT / "mnist" / "train_00.npz").is_file():
        from labelless.data.sources import load_dataset

        return load_dataset("mnist", split="train", root=MNIST_ROOT).subset(slice(0, N_IMAGES))
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(N_IMAGES) % 10
    images = torch.zeros(N_IMAGES, 28, 28, 1, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):  # a bar whose position and angle depend on the class
        row = 4 + 2 * label + int(torch.randint(0, 2, (1,), generator=generator))
        images[i, row:row + 3, 4 + label:24 - label // 2] = 255
    return ImageStore(images, labels)


METHODS = {
    "entropy_margin": {"name": "entropy_margin", "augment": "affine", "max_iterations": 50},
    "entropy_margin_mi": {"name": "entropy_margin", "augment": "affine", "objective": "mi_margin"},
    "imsat": {"name": "entropy_margin", "backbone": "mlp", "backbone_options": {"width": 64}, "augment": "none",
              "views": 0, "objective": "mi_margin", "fairness_weight": 4.0, "gamma": 0.0, "vat_weight": 10.0,
              "head_init_std": 1e-4},
    "iic": {"name": "iic", "backbone": "vgg4", "heads": 2, "overcluster_k": 20, "augment": "affine"},
    "pseudo_label": {"name": "pseudo_label", "augment": "affine"},
    "deepcluster": {"name": "deepcluster", "augment": "affine", "sobel": True, "pca_dims": 32},
}


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")  # 2 steps cannot separate clusters
@pytest.mark.parametrize("key", list(METHODS))
def test_tiny_run_has_finite_losses_and_predicts(key: str, store: ImageStore, tmp_path: Path):
    config = load_config({"name": key, "dataset": {"name": "mnist"}, "device": "cpu", "k": 10,
                          "method": METHODS[key],
                          "train": {"epochs": 1, "batch_size": 128, "optimizer": "adam", "lr": 1e-3,
                                    "log_every": 1}})
    run = train(config, tmp_path, progress=False, store=store)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and math.isfinite(lines[0]["loss"])
    assert all(math.isfinite(value) for value in lines[0].values() if isinstance(value, float))
    probabilities = run.probabilities(store.images[:16])
    assert probabilities.shape == (16, 10)
    assert torch.allclose(probabilities.sum(1), torch.ones(16), atol=1e-4)
    if key == "deepcluster":
        assert lines[0]["empty_pseudo_clusters"] == 0.0
    if key == "imsat":  # the VAT radius was measured and the adversarial term trained
        assert lines[0]["vat"] > 0 and lines[0]["vat_radius_mean"] > 0


def test_supervised_learns_from_labels_and_refuses_to_run_without_them(store: ImageStore):
    with pytest.raises(UserError, match="uses_labels"):
        Supervised(k=10, in_channels=1, image_size=28)
    torch.manual_seed(0)
    method = Supervised(k=10, in_channels=1, image_size=28, backbone="vgg4", augment="none", uses_labels=True)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    images, labels = to_float(store.images[:64]), store.labels[:64].clone()
    labels[::4] = -1  # unlabelled rows (weakly-supervised mode) are ignored
    losses, accuracies = [], []
    for _ in range(15):
        loss, logs = method.training_step(Batch(images, torch.arange(64), labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append(float(logs["train_accuracy"]))
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0] and accuracies[-1] > 0.9, (losses, accuracies)  # it fits the 48 labels
    with pytest.raises(UserError, match="without labels"):
        method.training_step(Batch(images, torch.arange(64)))


def test_deskew_input_feeds_the_network_deskewed_images_at_evaluation(store: ImageStore):
    from labelless.data.augment import deskew
    from labelless.methods.entropy_margin import EntropyMargin

    torch.manual_seed(0)
    images = store.batch(torch.arange(8))
    method = EntropyMargin(k=10, in_channels=1, image_size=28, backbone="mlp", backbone_options={"width": 32},
                           augment="none", views=0, deskew_input=True).eval()
    with torch.no_grad():
        assert torch.allclose(method.cluster_logits(images), method.head(method.backbone(deskew(images))))
        assert not torch.allclose(method.cluster_logits(images), method.head(method.backbone(images)))


def test_pseudo_label_labelled_logits_see_the_clean_view_through_the_training_dropout(store: ImageStore):
    """Weakly-supervised mode: the labelled images go through the evaluation view (here resized and
    Sobel-filtered, not augmented) and, in training mode, the classifier's dropout."""
    from labelless.methods.pseudo_label import PseudoLabel

    torch.manual_seed(0)
    images = store.batch(torch.arange(8))
    for dropout in (0.5, 0.0):
        method = PseudoLabel(k=10, in_channels=1, image_size=28, backbone="mlp", augment="affine", sobel=True,
                             input_size=16, dropout=dropout)
        method.backbone.eval()  # BatchNorm on running statistics: only the dropout differs between modes
        (trained,) = method.labelled_logits(images)
        assert trained.shape == (8, 10) and trained.requires_grad
        without_dropout = method.head(method.backbone(method.view(images)))
        assert torch.allclose(trained, without_dropout, atol=1e-6) == (dropout == 0.0)
    method.eval()
    (clean,) = method.labelled_logits(images)
    assert torch.allclose(clean, method.cluster_logits(images), atol=1e-6)  # no augmentation in the view


@pytest.mark.parametrize("squarem", [True, False])
def test_entropy_margin_solves_the_targets_as_configured(squarem: bool, store: ImageStore, monkeypatch):
    """`squarem` and the iteration budget reach the y-solver of every self-labelling step."""
    import labelless.methods.entropy_margin as module
    from labelless.losses.entropy_margin import self_label_targets

    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return self_label_targets(*args, **kwargs)

    monkeypatch.setattr(module, "self_label_targets", recording)
    torch.manual_seed(0)
    method = module.EntropyMargin(k=10, in_channels=1, image_size=28, backbone="mlp", backbone_options={"width": 32},
                                  augment="none", views=0, max_iterations=30, tolerance=0.0, squarem=squarem)
    _, logs = method.training_step(Batch(store.batch(torch.arange(64)), torch.arange(64)))
    assert calls == [{"max_iterations": 30, "tolerance": 0.0, "accelerate": squarem}]
    assert logs["fixed_point_iterations"] == 30


def test_iic_step_trains_every_main_and_overclustering_sub_head_and_the_trunk():
    """One IIC step gives non-zero gradients to every sub-head of the K-way head and of the
    over-clustering head (K' = 10), and the over-clustering loss reaches the backbone too."""
    from labelless.methods.iic import IIC

    torch.manual_seed(0)
    method = IIC(k=4, in_channels=1, image_size=8, backbone="mlp", heads=2, overcluster_k=10, augment="none")
    batch = Batch(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(32))
    loss, logs = method.training_step(batch)
    loss.backward()
    assert math.isfinite(float(logs["overcluster_mi"]))
    for heads, k in ((method.heads, 4), (method.overcluster, 10)):
        assert len(heads.heads) == 2
        for head in heads.heads:
            assert head.out_features == k
            for parameter in (head.weight, head.bias):
                assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    with_overcluster = [p.grad.clone() for p in method.backbone.parameters()]
    method.zero_grad()
    method.overcluster = None  # the same step (no augmentation: deterministic) with the K-way heads only
    method.training_step(batch)[0].backward()
    assert any(not torch.allclose(p.grad, g) for p, g in zip(method.backbone.parameters(), with_overcluster))
