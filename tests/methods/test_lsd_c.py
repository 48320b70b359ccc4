"""RotNet → LSD-C on scikit-learn's 8×8 digits (CPU, MLP trunk, seconds): the pipeline trains with finite
losses, frozen blocks stay put while the trainable ones move, RotNet learns the rotations, and the two
mixed views share their mix."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from labelless.config import load_config
from labelless.data.augment import rotnet_batch
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.base import Batch, EpochContext
from labelless.methods.lsd_c import LSDC, mixed_views
from labelless.methods.rotnet import RotNet
from labelless.pipeline import train

N = 320


@pytest.fixture(scope="module")
def digits() -> ImageStore:
    return load_dataset("digits")


def tiny_lsdc(**hyper) -> LSDC:
    torch.manual_seed(0)
    return LSDC(k=10, in_channels=1, image_size=8, backbone="small_cnn", knn_k=5, flip=False, **hyper)


def sgd_steps(method: LSDC, store: ImageStore, steps: int = 3) -> list[float]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    method.on_epoch_start(50, EpochContext(50, 100, store, torch.device("cpu")))
    method.train()
    losses = []
    for step in range(steps):
        index = torch.arange(step * 64, (step + 1) * 64)
        loss, logs = method.training_step(Batch(store.batch(index), index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        assert all(torch.isfinite(torch.as_tensor(value)) for value in logs.values())
    return losses


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")
def test_rotnet_then_lsd_c_pipeline_trains_with_finite_losses(digits, tmp_path):
    config = load_config({
        "dataset": {"name": "digits"}, "device": "cpu",
        "train": {"batch_size": 64, "lr": 0.05, "schedule": "constant", "checkpoint_every": 2, "log_every": 2},
        "stages": [
            {"name": "rotnet", "method": {"name": "rotnet", "backbone": "mlp", "flip": False}, "train": {"epochs": 2}},
            {"name": "lsd_c", "method": {"name": "lsd_c", "knn_k": 5, "flip": False}, "train": {"epochs": 2}},
        ],
    })
    run = train(config, tmp_path, progress=False, store=digits.subset(slice(0, N)))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["stage"], line["epoch"]) for line in lines] == [("rotnet", 0), ("rotnet", 1), ("lsd_c", 0),
                                                                   ("lsd_c", 1)]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines)
    assert lines[-1]["consistency_weight"] == pytest.approx(5 * torch.exp(torch.tensor(-5 * 0.99**2)).item())
    assert 0 < lines[-1]["positive_pairs"] < 1
    probabilities = run.probabilities(digits.images[:16])
    assert probabilities.shape == (16, 10) and torch.allclose(probabilities.sum(1), torch.ones(16))


@pytest.mark.parametrize("frozen_batchnorm", ["train", "eval"])
@pytest.mark.parametrize("trainable_from", [-1, 2, 3])  # small_cnn: 3 blocks; 3 = the head alone
def test_frozen_blocks_stay_unchanged_and_trainable_ones_move(digits, trainable_from, frozen_batchnorm):
    method = tiny_lsdc(trainable_from=trainable_from, frozen_batchnorm=frozen_batchnorm)
    frozen = 3 + trainable_from if trainable_from < 0 else trainable_from
    before = {name: value.clone() for name, value in method.state_dict().items()}
    losses = sgd_steps(method, digits)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = method.state_dict()
    for name, value in after.items():
        if not name.startswith("backbone.blocks."):
            continue
        block = int(name.split(".")[2])
        is_parameter = name.rsplit(".", 1)[1] in ("weight", "bias")
        if block < frozen and (is_parameter or frozen_batchnorm == "eval"):
            assert torch.equal(value, before[name]), name
        if block >= frozen and is_parameter:
            assert not torch.equal(value, before[name]), name
    if frozen_batchnorm == "train" and frozen > 0:  # the authors' code: frozen BatchNorm keeps updating its statistics
        assert not torch.equal(after["backbone.blocks.0.1.running_mean"], before["backbone.blocks.0.1.running_mean"])
    assert not torch.equal(after["head.weight"], before["head.weight"])


@pytest.mark.parametrize("hyper", [{"labelling": "cosine"}, {"labelling": "sne"}, {"head": "mlp"},
                                   {"data_mix": "mixup"}, {"data_mix": "none"}, {"consistency_weight": 0.0},
                                   {"mix_per": "sample"}, {"data_mix": "mixup", "mix_per": "sample"}],
                         ids=lambda hyper: "-".join(map(str, hyper.values())))
def test_every_variant_takes_finite_steps(digits, hyper):
    assert all(torch.isfinite(torch.tensor(sgd_steps(tiny_lsdc(**hyper), digits, steps=2))))


def test_continues_the_rotnet_backbone_and_refuses_bad_settings():
    rotnet = RotNet(k=10, in_channels=1, image_size=8, backbone="mlp")
    method = LSDC(k=10, in_channels=1, image_size=8, pretrained=rotnet)
    first = method.backbone.blocks[0][1].weight
    assert torch.equal(first, rotnet.backbone.blocks[0][1].weight) and first is not rotnet.backbone.blocks[0][1].weight
    assert not first.requires_grad and method.backbone.blocks[1][0].weight.requires_grad
    for bad in ({"labelling": "euclid"}, {"data_mix": "cutmix"}, {"trainable_from": 9}, {"head": "deep"}):
        with pytest.raises(UserError):
            LSDC(k=10, in_channels=1, image_size=8, pretrained=rotnet, **bad)
    with pytest.raises(UserError, match="mix_per must be one of batch, sample, got 'image'"):
        LSDC(k=10, in_channels=1, image_size=8, pretrained=rotnet, mix_per="image")


def test_more_knn_neighbours_than_a_batch_holds_is_a_user_error(digits):
    method = LSDC(k=10, in_channels=1, image_size=8, backbone="mlp", knn_k=20)
    with pytest.raises(UserError, match="knn_k 20 .* train.batch_size is 16"):
        method.on_epoch_start(0, EpochContext(0, 1, digits, torch.device("cpu"), batch_size=16))
    LSDC(k=10, in_channels=1, image_size=8, backbone="mlp", knn_k=20, labelling="cosine").on_epoch_start(
        0, EpochContext(0, 1, digits, torch.device("cpu"), batch_size=16))  # only kNN labelling counts neighbours


def test_mixed_views_share_the_mix_but_not_the_crops():
    n, side = 64, 16
    torch.manual_seed(0)
    # every pixel names its image and position, so a tile's source and crop can be read back
    ident = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, side, side)
    position = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side).expand(n, 1, side, side)
    images = torch.cat([ident, position], 1)
    first, second, sources, weights = mixed_views(images, images, "ricap", 0.3)
    assert sources.shape == (4, n) and weights.shape == (n, 4)
    assert torch.equal(first[:, 0], second[:, 0])  # the same source image at every pixel
    assert not torch.equal(first[:, 1], second[:, 1])  # crops drawn anew
    mixed, other, sources, weights = mixed_views(images, images + 1, "mixup", 0.3)
    assert torch.allclose(other - mixed, torch.ones_like(mixed), atol=1e-4)  # one λ and partner for both views
    assert torch.allclose(weights.sum(1), torch.ones(n)) and torch.equal(sources[0], torch.arange(n))


@pytest.mark.parametrize("data_mix", ["ricap", "mixup"])
@pytest.mark.parametrize("mix_per", [None, "batch", "sample"])
def test_the_mix_is_drawn_per_batch_unless_mix_per_says_sample(digits, monkeypatch, data_mix, mix_per):
    """The paper's RICAP (and mixup) draws one boundary (λ) per batch: every row of a training step's mix
    weights is the same, unless `mix_per: sample` (None: the method's default)."""
    drawn = []

    def recording_mixed_views(*args):
        views = mixed_views(*args)
        drawn.append(views[3])
        return views

    monkeypatch.setattr("labelless.methods.lsd_c.mixed_views", recording_mixed_views)
    sgd_steps(tiny_lsdc(data_mix=data_mix, **({} if mix_per is None else {"mix_per": mix_per})), digits, steps=1)
    distinct = drawn[0].unique(dim=0).shape[0]
    assert distinct > 1 if mix_per == "sample" else distinct == 1


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")
def test_rotnet_predicts_rotations_above_chance(digits):
    torch.manual_seed(0)
    method = RotNet(k=10, in_channels=1, image_size=8, backbone="mlp", flip=False)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    store = digits.subset(slice(0, N))
    method.train()
    for epoch in range(4):
        for index in torch.randperm(N).split(64):
            loss, _ = method.training_step(Batch(store.batch(index), index))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    method.eval()
    rotated, rotations = rotnet_batch(digits.batch(torch.arange(1000, 1400)))  # held-out digits
    accuracy = (method.rotation_logits(rotated).argmax(1) == rotations).float().mean()
    assert accuracy > 0.6  # chance: 0.25


def test_mixup_with_another_weight_decay_than_the_supplements_warns():
    from labelless.config import TrainConfig

    with pytest.warns(UserWarning, match="MixUp runs use 1e-4"):
        tiny_lsdc(data_mix="mixup").check_train(TrainConfig(weight_decay=5e-4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_lsdc(data_mix="mixup").check_train(TrainConfig(weight_decay=1e-4))
        tiny_lsdc(data_mix="ricap").check_train(TrainConfig(weight_decay=5e-4))
