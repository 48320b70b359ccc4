"""Super-AND's evaluation hooks and schedule check, on tiny synthetic data (CPU, no dataset needed):
kNN against the memory bank, the per-round neighbourhood consistency (labels reach evaluation only),
and the refusal of a round length that would cut the lr or UE schedule."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.config import DatasetConfig, RunConfig, StageConfig, TrainConfig, load_config
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.base import EpochContext
from labelless.methods.super_and import SuperAND
from labelless.pipeline import PROJECT_CONFIGS, Run, evaluate

SIDE, CLASS_STEP = 8, 50  # an image of class c is filled with the byte c·CLASS_STEP


def tiny(**hyper) -> SuperAND:
    torch.manual_seed(0)
    return SuperAND(k=3, in_channels=3, image_size=SIDE, backbone="mlp", **hyper)


def class_images(classes: Tensor) -> Tensor:
    return (classes * CLASS_STEP).to(torch.uint8)[:, None, None, None].expand(-1, SIDE, SIDE, 3).contiguous()


class PixelClass(nn.Module):
    """An encoder that reads the class an image encodes (its byte / CLASS_STEP) as a one-hot 128-d vector:
    the embedding, and so the kNN answer, are known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # `Run` finds the device through a parameter

    def forward(self, x: Tensor) -> Tensor:  # x: N×C×H×W in [0, 1]
        return F.one_hot((x[:, 0, 0, 0] * 255 / CLASS_STEP).round().long(), 128).float()


# ------------------------------------------------------------------------------------------------ kNN bank
def test_knn_bank_is_the_memory_bank_unless_switched_to_embed():
    method = tiny()
    assert method.knn_bank() is None  # an empty bank (before training) is no bank
    memory = F.normalize(torch.randn(10, 128, generator=torch.Generator().manual_seed(1)), dim=1)
    method.memory.memory = memory.clone()
    assert torch.equal(method.knn_bank(), memory)
    embed = tiny(knn_bank="embed")
    embed.memory.memory = memory.clone()
    assert embed.knn_bank() is None
    with pytest.raises(UserError, match="knn_bank"):
        tiny(knn_bank="bank")


@pytest.mark.parametrize("knn_bank, knn, source", [("memory", 1.0, "the method's memory bank"),
                                                    ("embed", 0.0, "the training images, embedded")])
def test_evaluate_scores_test_queries_against_the_bank_the_config_names(knn_bank, knn, source, tmp_path):
    # The memory bank holds each training image's true class; the images themselves encode the next
    # class, so kNN against the bank is always right and kNN against their embedding always wrong.
    train_labels, test_labels = torch.arange(12) % 3, torch.arange(9) % 3
    train = ImageStore(class_images((train_labels + 1) % 3), labels=train_labels)
    test = ImageStore(class_images(test_labels), labels=test_labels)
    method = tiny(knn_bank=knn_bank)
    method.encoder = PixelClass()
    method.memory.memory = F.one_hot(train_labels, 128).float()
    (tmp_path / "artefacts").mkdir()
    torch.save(torch.tensor([[0, 3], [1, 2]]), tmp_path / "artefacts" / "round_1_pairs.pt")  # agree, disagree
    config = RunConfig(DatasetConfig("synthetic"), [StageConfig("super_and", {"name": "super_and"})])
    result = evaluate(Run(config, tmp_path, method, 3, (SIDE, SIDE), 3), test, "test", "synthetic", train_store=train)
    assert result["KNN"] == knn and result["knn_bank"] == source
    assert result["neighbourhood_consistency"] == {"1": 0.5}
    assert json.loads((tmp_path / "metrics.json").read_text())["neighbourhood_consistency"] == {"1": 0.5}


# ------------------------------------------------------------------------------ neighbourhood consistency
def write_rounds(run_dir, rounds: dict[str, list[list[int]]]) -> None:
    (run_dir / "artefacts").mkdir(parents=True, exist_ok=True)
    for name, pairs in rounds.items():
        torch.save(torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), run_dir / "artefacts" / f"round_{name}_pairs.pt")


def test_neighbourhood_consistency_per_round_known_answer(tmp_path):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    write_rounds(tmp_path, {
        "1": [[0, 1], [2, 0]],                      # 1 of 2 pairs agree
        "2": [[0, 1], [2, 3], [4, 5], [1, 2]],      # 3 of 4
        "3": [[6, 0], [4, 5], [3, 6]],              # pairs with an unlabelled image do not count: 1 of 1
        "4": [],                                    # nothing selected: left out
        "10": [[5, 4], [0, 2], [1, 4], [2, 4]],     # 1 of 4; rounds sort as numbers, not text
        "x": [[0, 1]],                              # not a round file
    })
    method = tiny()
    expected = {"1": 0.5, "2": 0.75, "3": 1.0, "10": 0.25}
    found = method.diagnostics(labels, tmp_path)["neighbourhood_consistency"]
    assert found == expected and list(found) == ["1", "2", "3", "10"]
    method.neighbour_round = 2  # a method that ran 2 rounds ignores later rounds' files (an older, longer run)
    assert method.diagnostics(labels, tmp_path) == {"neighbourhood_consistency": {"1": 0.5, "2": 0.75}}


def test_neighbourhood_consistency_skips_what_it_cannot_score(tmp_path):
    labels = torch.tensor([0, 0, 1, 1])
    method = tiny()
    assert method.diagnostics(labels, None) == {}
    assert method.diagnostics(labels, tmp_path) == {}  # no artefacts
    write_rounds(tmp_path, {"1": [[0, 1]]})
    method.memory.memory = F.normalize(torch.randn(5, 128), dim=1)
    assert method.diagnostics(labels, tmp_path) == {}  # 4 labels do not describe a 5-image training store


def test_diagnostics_read_the_rounds_training_wrote_and_leave_the_model_untouched(tmp_path):
    n = 32
    labels = torch.arange(n) % 4
    store = ImageStore(torch.randint(0, 256, (n, SIDE, SIDE, 3), dtype=torch.uint8,
                                     generator=torch.Generator().manual_seed(0)))  # no labels: training's view
    method = tiny(epochs_per_round=1)
    for epoch in range(3):
        method.on_epoch_start(epoch, EpochContext(epoch, 3, store, torch.device("cpu"), run_dir=tmp_path))
    state = {key: value.clone() for key, value in method.state_dict().items()}
    neighbours = method.neighbours.clone()
    found = method.diagnostics(labels, tmp_path)["neighbourhood_consistency"]
    anchors = (neighbours[:, 0] >= 0).nonzero().flatten()  # round 2's selection, still held by the method
    assert set(found) == {"1", "2"}
    assert found["2"] == float((labels[anchors] == labels[neighbours[anchors, 0]]).float().mean())
    assert method.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in method.state_dict().items())
    assert torch.equal(method.neighbours, neighbours) and method.neighbour_round == 2


# ----------------------------------------------------------------------------------- schedule check
PAPER_TRAIN = {"epochs": 1000, "schedule": "step", "step_start": 80, "step_size": 40, "restart_every": 200}


@pytest.mark.parametrize("path", ["cifar10/super_and.yaml", "cifar100/super_and.yaml", "stl10/super_and.yaml",
                                  "cifar10/two_stage.yaml", "cifar20/two_stage.yaml"])
def test_the_shipped_configs_pass_the_schedule_check(path):
    stage = load_config(PROJECT_CONFIGS / path).stages[0]
    params = {key: value for key, value in stage.method.items() if key not in ("name", "backbone", "mean", "std")}
    tiny(**params).check_train(stage.train)


def test_the_mnist_ablation_config_is_the_two_stage_pipelines_first_stage():
    """The ablations of configs/mnist/super_and.yaml are compared with the Super-AND stage of the
    two_stage runs: the full recipe must be that stage, key for key."""
    alone, pipeline = (load_config(PROJECT_CONFIGS / "mnist" / name) for name in ("super_and.yaml", "two_stage.yaml"))
    assert len(alone.stages) == 1 and alone.dataset == pipeline.dataset
    assert alone.stages[0].method == pipeline.stages[0].method and alone.stages[0].train == pipeline.stages[0].train


@pytest.mark.parametrize("method, train, message", [
    # the silent case: only the round length and the epochs changed
    ({"epochs_per_round": 40}, {"epochs": 200}, "restarts every 200"),
    ({"epochs_per_round": 40}, {"epochs": 200, "restart_every": None}, "restarts every 200"),
    ({"epochs_per_round": 40}, {"epochs": 200, "restart_every": 40}, "UE weight would stay 0"),
    ({"epochs_per_round": 40, "ue_weight_every": 16}, {"epochs": 200, "restart_every": 40}, "lr would never drop"),
    ({"epochs_per_round": 40, "ue_weight_every": 16},
     {"epochs": 200, "restart_every": 40, "schedule": "multistep", "milestones": [120, 160]}, "lr would never drop"),
])
def test_a_round_that_cuts_a_schedule_is_refused(method, train, message):
    with pytest.raises(UserError, match=message) as error:
        tiny(**method).check_train(TrainConfig(**{**PAPER_TRAIN, **train}))
    assert "train.restart_every=40 train.step_start=16 train.step_size=8 method.ue_weight_every=16" in str(error.value)


@pytest.mark.parametrize("method, train", [
    ({}, {}),  # the paper: 5 × 200
    ({"epochs_per_round": 40, "ue_weight_every": 16},  # the recipe the error message and the config give
     {"epochs": 200, "restart_every": 40, "step_start": 16, "step_size": 8}),
    ({"epochs_per_round": 40, "ue": False},  # no UE: its step does not matter
     {"epochs": 200, "restart_every": 40, "step_start": 16, "step_size": 8}),
    ({"epochs_per_round": 1}, {"epochs": 2, "restart_every": 1}),  # a tiny run that stops before every step
    ({}, {"epochs": 150, "restart_every": None}),  # one round, cut short: no restart needed
])
def test_consistent_or_truncated_schedules_pass(method, train):
    tiny(**method).check_train(TrainConfig(**{**PAPER_TRAIN, **train}))


def test_training_refuses_a_cut_schedule_before_any_stage_trains(tmp_path):
    """pipeline.train runs the check when it builds the pipeline: one line naming the stage, no checkpoint."""
    from labelless.pipeline import train

    store = ImageStore(class_images(torch.arange(12) % 3), labels=torch.arange(12) % 3)
    stage = StageConfig("embed", {"name": "super_and", "backbone": "mlp", "epochs_per_round": 1},
                        TrainConfig(epochs=4, batch_size=4))
    config = RunConfig(DatasetConfig("synthetic"), [stage], k=3, device="cpu")
    with pytest.raises(UserError, match="^stage 'embed': super_and runs rounds of 1 epochs") as error:
        train(config, tmp_path / "run", store=store, progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "run" / "checkpoints").exists()
