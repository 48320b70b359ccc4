"""Weakly-supervised mode (`labelled_fraction`, issue 6 §5): which labels reach training, that the
cross-entropy on them trains cluster c as class c, and the refusals."""
import json
import math
from pathlib import Path

import pytest
import torch

from labelless.config import load_config
from labelless.data.stores import ImageStore, partial_labels
from labelless.errors import UserError
from labelless.pipeline import train


def test_partial_labels_keep_a_fraction_of_every_class_and_are_deterministic():
    labels = torch.arange(5).repeat_interleave(torch.tensor([100, 40, 7, 1, 52]))
    kept = partial_labels(labels, 0.1, seed=3)
    counts = [int((kept == c).sum()) for c in range(5)]
    assert counts == [10, 4, 1, 1, 5]  # round(0.1·n), at least one image per class
    assert torch.equal(kept[kept >= 0], labels[kept >= 0])  # a kept label is the true one
    assert int((kept == -1).sum()) == len(labels) - sum(counts)
    assert torch.equal(partial_labels(labels, 0.1, seed=3), kept)
    assert not torch.equal(partial_labels(labels, 0.1, seed=4), kept)
    with pytest.raises(UserError, match="labelled fraction"):
        partial_labels(labels, 0.0)


@pytest.fixture(scope="module")
def bars() -> ImageStore:
    """Four classes of 8×8 images: a bright bar in one of four rows, with pixel noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(64)
    images = (torch.rand(256, 8, 8, 1, generator=generator) * 60).to(torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label:2 * label + 2] = 255
    return ImageStore(images, labels)


def _config(method: dict, fraction: float | None, k: int = 4, epochs: int = 3):
    return load_config({"name": "weak", "dataset": {"name": "digits"}, "device": "cpu", "k": k, "seed": 0,
                        "labelled_fraction": fraction, "method": method,
                        "train": {"epochs": epochs, "batch_size": 64, "optimizer": "adam", "lr": 1e-2,
                                  "log_every": 1}})


MLP = {"name": "entropy_margin", "backbone": "mlp", "backbone_options": {"width": 32}, "augment": "none",
       "views": 0, "objective": "mi_margin"}
PSEUDO_LABEL = {"name": "pseudo_label", "backbone": "mlp", "augment": "weak"}


@pytest.mark.parametrize("method", [MLP, PSEUDO_LABEL], ids=lambda method: method["name"])
def test_labels_train_cluster_c_as_class_c(method: dict, bars: ImageStore, tmp_path: Path):
    run = train(_config(method, 0.25, epochs=5), tmp_path, progress=False, store=bars)
    predicted = run.probabilities(bars.images).argmax(1)
    # without the labels cluster ids are an arbitrary permutation; with them, the identity
    assert float((predicted == bars.labels).float().mean()) > 0.9
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["labelled_ce"]) for line in lines)
    assert lines[-1]["labelled_ce"] < lines[0]["labelled_ce"]
    assert json.loads((tmp_path / "run.json").read_text())["labelled_images"] == 64  # 25 % of 4 × 64


def test_without_labelled_fraction_no_label_reaches_training(bars: ImageStore, tmp_path: Path):
    train(_config(MLP, None, epochs=1), tmp_path, progress=False, store=bars)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "labelled_ce" not in line
    assert json.loads((tmp_path / "run.json").read_text())["labelled_images"] == 0


def test_refusals_are_clear(bars: ImageStore, tmp_path: Path):
    for k in (3, 5):  # the 4 classes: fewer clusters cannot hold them, more would be scored as wrong
        with pytest.raises(UserError, match=f"set k to the class count \\(4\\), not {k}"):
            train(_config(MLP, 0.25, k=k), tmp_path / "a", progress=False, store=bars)
    with pytest.raises(UserError, match="no cluster head to train on labels") as refused:
        train(_config({"name": "simclr", "backbone": "mlp", "augment": "none"}, 0.25), tmp_path / "b",
              progress=False, store=bars)
    assert str(refused.value).endswith("(these can: scan, selflabel, iic, entropy_margin, pseudo_label)")
    # a pipeline is checked before its first stage trains
    two_stages = load_config({"name": "weak", "dataset": {"name": "digits"}, "device": "cpu", "k": 4,
                              "labelled_fraction": 0.25, "train": {"epochs": 1, "batch_size": 64},
                              "stages": [{"name": "cluster", "method": MLP},
                                         {"name": "embed", "method": {"name": "simclr", "backbone": "mlp"}}]})
    with pytest.raises(UserError, match="stage 'embed'.*no cluster head"):
        train(two_stages, tmp_path / "d", progress=False, store=bars)
    assert not (tmp_path / "d" / "metrics.jsonl").exists()
    for k in (4, None):  # without --k the message is still the missing labels, not the missing K
        with pytest.raises(UserError, match="needs a dataset with labels"):
            train(_config(MLP, 0.25, k=k), tmp_path / "c", progress=False, store=bars.without_labels())


def test_supervised_reference_trains_on_the_kept_labels_only(bars: ImageStore, tmp_path: Path):
    from labelless.methods.base import Batch
    from labelless.methods.supervised import Supervised

    torch.manual_seed(0)
    method = Supervised(k=4, in_channels=1, image_size=8, backbone="mlp", augment="none", uses_labels=True,
                        backbone_options={"width": 16})
    images = bars.batch(torch.arange(8))
    none_kept = torch.full((8,), -1)
    loss, logs = method.training_step(Batch(images, torch.arange(8), none_kept))
    assert loss.item() == 0.0 and logs["train_accuracy"].item() == 0.0  # no labelled row: no signal, no NaN
    loss.backward()
    config = _config({"name": "supervised", "backbone": "mlp", "backbone_options": {"width": 32},
                      "augment": "none", "uses_labels": True}, 0.25, epochs=5)
    run = train(config, tmp_path, progress=False, store=bars)
    assert float((run.probabilities(bars.images).argmax(1) == bars.labels).float().mean()) > 0.9
