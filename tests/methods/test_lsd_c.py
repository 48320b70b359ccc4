"""RotNet → LSD-C on scikit-learn's 8×8 digits (CPU, MLP trunk, seconds): the pipeline trains with finite
losses, frozen blocks stay put while the trainable ones move, RotNet learns the rotations, and the two
mixed views share their mix."""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch import nn

from labelless.config import load_config
from labelless.data.augment import rotnet_batch
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.losses.pairwise import BCE_EPS
from labelless.methods import lsd_c as lsd_c_module
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
    for bad, message in [({"labelling": "euclid"}, "labelling must be one of knn, cosine, sne, got 'euclid'"),
                         ({"data_mix": "cutmix"}, "data_mix must be one of ricap, mixup, none, got 'cutmix'"),
                         ({"trainable_from": 9}, "trainable_from 9 is outside the backbone's 2 blocks"),
                         ({"head": "deep"}, "head must be one of linear, mlp, got 'deep'")]:
        with pytest.raises(UserError, match=re.escape(message)):
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


def test_training_step_mixes_the_clean_views_labels_over_each_mixed_images_own_sources(monkeypatch):
    """Known answer for the wiring of `training_step`, with the views, mix, trunk and head stubbed so every
    input is fixed (features = logits, K = D = 3): kNN labels (k = 3: self plus the nearest other) come from
    the CLEAN view's features, the targets mix them over the MIXED image's own tile sources,
    t_ij = Σ_q w_q·ℓ[src_q(i), j], and the pair BCE takes σ(mixed) as rows and σ(clean) as columns.
    Every piece is asymmetric: t is not symmetric, σ(mixed) ≠ σ(clean), and the mixed and other views have
    other nearest neighbours than the clean one, so a swapped BCE, unmixed targets, or labels from another
    view each give other arguments and another loss."""
    # clean kNN pairs {0, 1} and {2, 3} (d01 = 0.08, d23 = 0.34; every other distance ≥ 1.53)
    clean = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.0, 1.0, 0.5], [0.0, 0.7, 1.0]])
    first, second = clean + 10, clean + 20  # only handed to the mix, which must receive them
    mixed = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.2], [0.9, 0.1, 0.0], [0.0, 0.3, 1.0]])  # pairs {0,3}, {1,2}
    other = torch.tensor([[0.2, 0.5, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 0.0, 1.0]])
    sources = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]])  # Q×N: src_q(i) = i + q mod 4
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1]).expand(4, 4)  # N×Q, one RICAP boundary per batch
    # by hand, with A = ℓ[0] = ℓ[1] = (1, 1, 0, 0) and B = ℓ[2] = ℓ[3] = (0, 0, 1, 1):
    # row 0 mixes A A B B → .7A + .3B; row 1 A B B A → .5A + .5B; row 2 B B A A; row 3 B A A B
    expected_targets = torch.tensor([[0.7, 0.7, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5],
                                     [0.3, 0.3, 0.7, 0.7], [0.5, 0.5, 0.5, 0.5]])

    class Views:  # stands in for the three augmentations, in the order training_step draws them
        def __init__(self):
            self.views = iter([clean, first, second])

        def __call__(self, images):
            return next(self.views)

    def fixed_mixed_views(view_1, view_2, data_mix, beta, per):
        assert view_1 is first and view_2 is second and (data_mix, per) == ("ricap", "batch")
        return mixed, other, sources, weights

    recorded = []
    real_bce = lsd_c_module.pair_bce_loss

    def recording_bce(rows, columns, targets):
        recorded.append((rows.detach(), columns.detach(), targets.detach()))
        return real_bce(rows, columns, targets)

    monkeypatch.setattr(lsd_c_module, "mixed_views", fixed_mixed_views)
    monkeypatch.setattr(lsd_c_module, "pair_bce_loss", recording_bce)
    method = LSDC(k=3, in_channels=1, image_size=8, backbone="mlp", knn_k=3)
    method.backbone, method.head, method.augment = nn.Identity(), nn.Identity(), Views()
    method.epoch = 100  # past the ramp-up: w = λ = 5
    loss, logs = method.training_step(Batch(torch.zeros(4, 3), torch.arange(4)))

    (rows, columns, targets), = recorded
    assert torch.allclose(targets, expected_targets), "targets: not ℓ(clean) mixed over the mixed image's sources"
    assert torch.allclose(rows, mixed.softmax(1)), "the pair BCE's rows must be σ(mixed view)"
    assert torch.allclose(columns, clean.softmax(1)), "the pair BCE's columns must be σ(clean view)"
    assert logs["positive_pairs"] == pytest.approx(0.5)  # the two clean blocks: 8 of 16 pairs
    similarity = mixed.softmax(1) @ clean.softmax(1).t()  # s_ij = σ(mixed_i)ᵀσ(clean_j)
    bce = -(expected_targets * (similarity + BCE_EPS).log()
            + (1 - expected_targets) * (1 - similarity + BCE_EPS).log()).mean()
    mse = (mixed.softmax(1) - other.softmax(1)).square().mean()
    assert logs["pair_bce"] == pytest.approx(bce.item(), rel=1e-5)
    assert logs["consistency_mse"] == pytest.approx(mse.item(), rel=1e-5)
    assert loss.item() == pytest.approx(bce.item() + 5.0 * mse.item(), rel=1e-5)


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
