"""Every registered method trains end to end through the Trainer on tiny fake data (solo-learn's
lesson: a parametrised test over the registry, so a new method is covered the day it is added)."""
import json
import math

import pytest
import torch

from labelless.config import StageConfig, TrainConfig
from labelless.data.stores import ImageStore
from labelless.methods.base import Method
from labelless.pipeline import build_method
from labelless.registry import METHODS, NEEDS_PREVIOUS_STAGE
from labelless.train import Trainer

# the smallest sensible settings of each method on 16-px, 3-channel images; a method missing here fails
TINY: dict[str, dict] = {
    "scan": {"backbone": "small_cnn", "heads": 2, "num_neighbours": 3, "augment": "weak"},
    "selflabel": {"threshold": 0.2},
    "iic": {"backbone": "small_cnn", "heads": 2, "overcluster_k": 6, "augment": "weak"},
    "rotnet": {"backbone": "small_cnn"},
    "lsd_c": {"backbone": "small_cnn", "knn_k": 5},  # kNN pair labels within a batch of 16
    "super_and": {"backbone": "small_cnn", "epochs_per_round": 1},  # epoch 1 = round 1: neighbourhoods in use
    "two_stage": {"backbone": "small_cnn", "heads": 2},  # no previous stage: a fresh encoder (the ablation)
    "simclr": {"backbone": "small_cnn", "hidden_dim": 32, "projection_dim": 16, "augment": "weak"},
    "byol": {"backbone": "small_cnn", "hidden_dim": 32, "projection_dim": 16, "augment": "weak"},
    "entropy_margin": {"backbone": "small_cnn", "augment": "weak", "max_iterations": 20},
    "pseudo_label": {"backbone": "small_cnn", "augment": "weak"},
    "deepcluster": {"backbone": "small_cnn", "augment": "weak", "pca_dims": 8, "kmeans_iterations": 5},
    "supervised": {"backbone": "small_cnn", "uses_labels": True},  # the fake store below carries labels
}
PREVIOUS = {"selflabel": "scan"}  # the stage a continuing method is trained after, in this test


def fake_store(n: int = 48, side: int = 16) -> ImageStore:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=g)
    return ImageStore(images, labels=torch.arange(n) % 3)  # labels reach only `uses_labels` stages


def train_stage(name: str, store: ImageStore, tmp_path, previous: Method | None = None) -> Method:
    params = dict(TINY[name])
    method = build_method(name, params, k=3, store=store, previous=previous, where="test")
    stage = StageConfig(name=name, method={"name": name, **params},
                        train=TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-3, checkpoint_every=2))
    return Trainer(stage, store, tmp_path, "cpu", seed=0, progress=False, tensorboard=False).fit(method)


def train_after_its_previous_stage(name: str, store: ImageStore, tmp_path) -> tuple[Method, list[str]]:
    """The method trained (after the stage it continues, if any) and its lines of metrics.jsonl."""
    torch.manual_seed(0)
    previous = train_stage(PREVIOUS[name], store, tmp_path) if name in NEEDS_PREVIOUS_STAGE else None
    method = train_stage(name, store, tmp_path, previous)
    lines = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if f'"stage": "{name}"' in line]
    return method, lines


def test_every_registered_method_has_a_tiny_setting():
    assert sorted(TINY) == sorted(METHODS), "add the new method's tiny settings to TINY"


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")  # random images have no clusters
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_answers_the_interface(name, tmp_path):
    store = fake_store()
    method, lines = train_after_its_previous_stage(name, store, tmp_path)
    assert len(lines) == 2 and all("NaN" not in line for line in lines)
    images = store.batch(torch.arange(8))
    method.eval()
    features = method.embed(images)
    assert features.ndim == 2 and features.shape[0] == 8 and torch.isfinite(features).all()
    logits = method.cluster_logits(images)
    if logits is not None:
        assert logits.shape == (8, 3) and torch.isfinite(logits).all()
        heads = method.head_logits(images)
        assert all(h.shape == (8, 3) for h in heads)
    assert (tmp_path / "checkpoints" / f"{name}.pt").is_file()
    assert math.isfinite(float(json.loads(lines[-1])["loss"]))


def test_build_method_gives_each_parameter_its_constructors_type():
    """YAML 1.1 reads `1e-3` as text and `mean: 0.5` as one number: the constructor gets a float
    and a list; a value of the wrong kind is a one-line error naming the stage and key."""
    from labelless.errors import UserError

    method = build_method("super_and", {"backbone": "small_cnn", "temperature": "1e-1", "mean": [0.5, 0.5, 0.5],
                                        "std": (0.25, 0.25, 0.25), "memory_momentum": 1},
                          k=3, store=fake_store(), previous=None, where="stage 'x'")
    assert method.temperature == 0.1 and isinstance(method.memory.momentum, float)
    with pytest.raises(UserError, match=r"^stage 'x': config key 'method.sobel' must be true or false, got 'maybe'$"):
        build_method("super_and", {"backbone": "small_cnn", "sobel": "maybe"}, k=3, store=fake_store(), previous=None,
                     where="stage 'x'")
    with pytest.raises(UserError, match=r"config key 'method.mean' must be a list, got 0.5"):
        build_method("super_and", {"backbone": "small_cnn", "mean": 0.5, "std": 0.2}, k=3, store=fake_store(),
                     previous=None, where="stage 'x'")


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_under_bf16_autocast(name, tmp_path, monkeypatch):
    """The GPU runs every training step under bf16 autocast, which the CPU suite otherwise never does:
    here the trainer's autocast is CPU bf16, so a float32/bf16 mix that only autocast creates (a
    `.float()` forgotten inside a block that switches autocast off, as the Norm-FC heads' einsum) fails
    on this machine instead of in a lent GPU's minutes."""
    monkeypatch.setattr(Trainer, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    # one batch an epoch: this CPU's bf16 convolutions are ~8× slower than float32, and a mix that breaks
    # autocast breaks on the first step
    _, lines = train_after_its_previous_stage(name, fake_store(16), tmp_path)
    assert len(lines) == 2 and all(math.isfinite(float(json.loads(line)["loss"])) for line in lines)
