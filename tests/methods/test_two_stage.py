"""TwoStageUC on 256 real CIFAR-10 images (CPU, MLP trunks): fixed Norm-FC heads, the lowest-loss
head, the stage-1 → stage-2 hand-over through `labelless.pipeline.train`, exact resume across the
stage boundary, and `encoder_from` an earlier run."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from labelless.config import StageConfig, TrainConfig, load_config
from labelless.data.sources import default_data_root, load_dataset
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.two_stage import TwoStageUC
from labelless.nn.heads import NormFCHeads
from labelless.pipeline import evaluate, train
from labelless.train import Trainer

N, K = 256, 10
SHARED_TRAIN = {"batch_size": 64, "nesterov": True, "schedule": "step", "step_start": 80, "step_size": 40,
                "checkpoint_every": 1, "log_every": 2}


@pytest.fixture(scope="module")
def store() -> ImageStore:
    if not any((default_data_root() / "cifar10").glob("test_*.npz")):
        pytest.skip("CIFAR-10 (.npz shards) is not in the data root (../shared/data or $LABELLESS_DATA)")
    return load_dataset("cifar10", split="test").subset(slice(0, N))  # labels: only for k, never trained on


def pipeline_config(stage2_epochs: int = 2) -> dict:
    return {"name": "tiny-two-stage", "dataset": {"name": "cifar10"}, "device": "cpu", "train": SHARED_TRAIN,
            "stages": [
                {"name": "super_and", "method": {"name": "super_and", "backbone": "mlp", "epochs_per_round": 1},
                 "train": {"epochs": 2, "lr": 0.03, "restart_every": 1}},
                {"name": "two_stage", "method": {"name": "two_stage", "backbone": "mlp"},
                 "train": {"epochs": stage2_epochs, "lr": 0.01}}]}


def test_norm_fc_heads_are_fixed_normalised_prototypes():
    torch.manual_seed(0)
    heads = NormFCHeads(8, 3, heads=5, temperature=0.1)
    assert list(heads.parameters()) == [] and heads.weight.shape == (5, 8, 3)
    assert torch.allclose(heads.prototypes().norm(dim=2), torch.ones(5, 8))  # code: each feature row
    paper = NormFCHeads(8, 3, heads=5, head_norm="prototypes")
    assert torch.allclose(paper.prototypes().norm(dim=1), torch.ones(5, 3))  # paper Eq. 2: each class
    v = F.normalize(torch.randn(4, 8), dim=1)
    logits = heads(v)
    assert len(logits) == 5 and torch.allclose(logits[2], v @ heads.prototypes()[2] / 0.1, atol=1e-5)
    with pytest.raises(ValueError):
        NormFCHeads(8, 3, head_norm="columns")


def test_stage2_alone_trains_the_encoder_only_and_picks_the_lowest_loss_head(store, tmp_path):
    torch.manual_seed(0)
    method = TwoStageUC(k=K, in_channels=3, image_size=32, backbone="mlp")  # no stage 1: the ablation
    prototypes = method.heads.weight.clone()
    stage = StageConfig("two_stage", {"name": "two_stage"}, TrainConfig(epochs=2, lr=0.01, **SHARED_TRAIN))
    Trainer(stage, store, tmp_path, "cpu", seed=0, progress=False, tensorboard=False).fit(method)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(line[key]) for line in lines for key in ("loss", "assign", "cp"))
    assert all(f"assign_head_{h}" in lines[-1] for h in range(5))
    assert torch.equal(method.heads.weight, prototypes)  # never trained
    method.eval()
    images = store.batch(torch.arange(32))
    heads = method.head_logits(images)
    assert len(heads) == 5 and all(h.shape == (32, K) and torch.isfinite(h).all() for h in heads)
    chosen = method.selector.chosen
    assert chosen == int(method.selector.mean_losses.argmin())
    # the choice rests on each head's own L_assign + λ·L_cp over the last epoch, as logged
    logged = torch.tensor([lines[-1][f"assign_head_{h}"] + lines[-1]["cp"] for h in range(5)])
    torch.testing.assert_close(method.selector.mean_losses.float(), logged, atol=1e-4, rtol=0)
    assert logged.max() - logged.min() > 1e-3  # distinct heads: a mis-ordered record would show
    assert torch.allclose(method.cluster_logits(images), heads[chosen], atol=1e-5)


def test_pipeline_hands_over_and_resumes_exactly_across_the_stage_boundary(store, tmp_path):
    straight = train(load_config(pipeline_config()), tmp_path / "straight", progress=False, store=store)
    assert (tmp_path / "straight" / "artefacts" / "round_1_pairs.pt").is_file()
    # the report's head fields: all five heads' ACC, and the label-free choice with the losses behind it
    scored = evaluate(straight, store, "test", "cifar10", train_store=store)
    # stage 1's per-round neighbourhood consistency reaches the pipeline's metrics (evaluation only)
    pairs = torch.load(tmp_path / "straight" / "artefacts" / "round_1_pairs.pt")
    agree = float((store.labels[pairs[:, 0]] == store.labels[pairs[:, 1]]).float().mean())
    assert scored["neighbourhood_consistency"] == {"1": pytest.approx(agree)}
    assert straight.head_selection == "lowest_loss" and len(scored["ACC_PER_HEAD"]) == 5
    assert scored["chosen_head"] == straight.method.selector.chosen
    assert scored["chosen_head"] == min(range(5), key=scored["head_losses"].__getitem__)
    assert len(torch.load(tmp_path / "straight" / "artefacts" / "round_1_pairs.pt")) == N // 4
    stage1 = load_file(str(tmp_path / "straight" / "checkpoints" / "super_and.safetensors"))
    assert not torch.equal(stage1["encoder.projection.weight"], straight.method.encoder.projection.weight)

    # interrupted after stage 2's first epoch, then resumed with the full schedule
    train(load_config(pipeline_config(stage2_epochs=1)), tmp_path / "resumed", progress=False, store=store)
    with pytest.warns(UserWarning, match="changed epochs"):
        resumed = train(load_config(pipeline_config()), tmp_path / "resumed", resume=True, progress=False,
                        store=store)
    final, again = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "resumed"))
    assert final.keys() == again.keys() and all(torch.equal(final[key], again[key]) for key in final)
    assert resumed.method.selector.chosen == straight.method.selector.chosen


def test_encoder_from_an_earlier_run(store, tmp_path):
    run = train(load_config({**pipeline_config(), "stages": pipeline_config()["stages"][:1]}), tmp_path,
                progress=False, store=store)
    weights = tmp_path / "checkpoints" / "super_and.safetensors"
    for source in (tmp_path, weights):  # a run directory or the file itself
        method = TwoStageUC(k=K, in_channels=3, image_size=32, backbone="mlp", encoder_from=str(source))
        assert all(torch.equal(a, b) for a, b in zip(method.encoder.state_dict().values(),
                                                     run.method.encoder.state_dict().values()))
    with pytest.raises(UserError, match="does not fit"):
        TwoStageUC(k=K, in_channels=3, image_size=32, backbone="mlp", sobel=False, encoder_from=str(weights))
    with pytest.raises(UserError, match="no previous stage"):
        TwoStageUC(k=K, in_channels=3, image_size=32, pretrained=run.method, encoder_from=str(weights))


# ---------------------------------------------------------------- after SimCLR (issue 8's alternative to SCAN)


def test_two_stage_continues_simclr_and_selflabel_continues_its_chosen_norm_fc_head():
    from labelless.methods.selflabel import SelfLabel
    from labelless.methods.simclr import SimCLR

    torch.manual_seed(0)
    simclr = SimCLR(k=4, in_channels=1, image_size=8, backbone="mlp").eval()
    stage2 = TwoStageUC(k=4, in_channels=1, image_size=8, pretrained=simclr, heads=3).eval()
    images = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        expected = F.normalize(simclr.projector(simclr.backbone(images)), dim=1)  # the projector's 128-d output
    torch.testing.assert_close(stage2.embed(images), expected)
    stage2.selector.record(torch.tensor([3.0, 2.0, 1.0]))  # head 2 has the lowest loss
    assert stage2.selector.chosen == 2
    selflabel = SelfLabel(k=4, in_channels=1, image_size=8, pretrained=stage2).eval()
    torch.testing.assert_close(selflabel.cluster_logits(images), stage2.cluster_logits(images))
    torch.testing.assert_close(selflabel.cluster_logits(images), stage2.head_logits(images)[2])
    assert list(selflabel.head.parameters()) == []  # the prototypes stay fixed: only the encoder trains
    assert not torch.equal(selflabel.cluster_logits(images), stage2.head_logits(images)[0])


def test_simclr_two_stage_selflabel_pipeline_trains_and_reloads(tmp_path):
    from labelless.predict import load_run

    config = load_config({
        "name": "tiny-normfc", "dataset": {"name": "digits"}, "device": "cpu",
        "train": {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "checkpoint_every": 9},
        "stages": [{"name": "pretext", "method": {"name": "simclr", "backbone": "mlp", "augment": "affine"},
                    "train": {"epochs": 1}},
                   {"name": "cluster", "method": {"name": "two_stage", "heads": 2, "augment": "affine",
                                                  "augment_options": {}}, "train": {"epochs": 1}},
                   {"name": "selflabel", "method": {"name": "selflabel", "threshold": 0.5, "weak_augment": "none",
                                                    "strong_augment": "affine"}, "train": {"epochs": 1}}]})
    store = load_dataset("digits").subset(slice(0, 192))
    run = train(config, tmp_path, progress=False, store=store)
    images = store.images[:32]
    probabilities = run.probabilities(images)
    assert probabilities.shape == (32, 10) and torch.isfinite(probabilities).all()
    torch.testing.assert_close(load_run(tmp_path).probabilities(images), probabilities)


@pytest.mark.parametrize("first, second, message", [
    ("rotnet", "two_stage", "two_stage continues a super_and or simclr stage, not 'rotnet'"),
    ("simclr", "selflabel", "selflabel continues a clustering stage with cluster heads"),
])
def test_a_stage_that_cannot_continue_the_previous_one_is_a_one_line_error(first, second, message, tmp_path):
    config = load_config({"name": "bad", "dataset": {"name": "digits"}, "device": "cpu",
                          "train": {"epochs": 1, "batch_size": 32},
                          "stages": [{"name": "a", "method": {"name": first, "backbone": "mlp"}},
                                     {"name": "b", "method": {"name": second}}]})
    with pytest.raises(UserError, match=message):
        train(config, tmp_path, progress=False, store=load_dataset("digits").subset(slice(0, 64)))
    assert not (tmp_path / "checkpoints").exists()  # checked before the first stage trained
