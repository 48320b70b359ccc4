"""Every shipped config loads, every stage's method builds with its parameters, and the whole pipeline
trains (two steps per stage on 64 random images of the dataset's shape, on the CPU) and evaluates: a typo
in a method parameter, a stage order that cannot work or a hand-over between stages that breaks fails
here, not minutes into a lent GPU's time."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from labelless.config import RunConfig, StageConfig, load_config
from labelless.data.stores import ImageStore
from labelless.pipeline import PROJECT_CONFIGS, build_method, evaluate, train, with_min_steps

# dataset → (side, channels, classes) of its images
SHAPES = {"cifar10": (32, 3, 10), "cifar100": (32, 3, 100), "cifar20": (32, 3, 20), "svhn": (32, 3, 10),
          "stl10": (96, 3, 10), "mnist": (28, 1, 10), "digits": (8, 1, 10)}
CONFIGS = sorted(PROJECT_CONFIGS.rglob("*.yaml"))


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 20 and PROJECT_CONFIGS / "mnist" / "fast.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(PROJECT_CONFIGS)))
def test_config_loads_and_its_stages_build(path: Path):
    config = load_config(path)
    side, channels, classes = SHAPES[config.dataset.name]
    store = ImageStore(torch.zeros(4, side, side, channels, dtype=torch.uint8))
    previous = None
    for stage in config.stages:
        params = dict(stage.method)
        if params.get("encoder_from"):  # continues a run trained by another config: that run must exist first
            assert str(params["encoder_from"]).startswith("runs/"), params["encoder_from"]
            return
        previous = build_method(params.pop("name"), params, k=config.k or classes, store=store, previous=previous,
                                where=f"{path.name}: stage '{stage.name}'")
    assert previous is not None


SMOKE_IMAGES, SMOKE_BATCH = 32, 16  # two steps per stage: ResNet-18 at one CPU thread is the cost


def _smoke(config: RunConfig) -> RunConfig:
    """The config's pipeline, one epoch of two steps per stage (one where in-batch kNN pair labels need
    more than SMOKE_BATCH images), on the CPU; K below the image count."""
    def batch(stage: StageConfig) -> int:
        wanted = SMOKE_IMAGES if stage.method.get("knn_k", 0) >= SMOKE_BATCH else SMOKE_BATCH
        return min(stage.train.batch_size, wanted)

    stages = [dataclasses.replace(s, train=dataclasses.replace(s.train, epochs=1, min_steps=None, milestones=[],
                                                              batch_size=batch(s)))
              for s in config.stages]
    k = config.k or SHAPES[config.dataset.name][2]
    return dataclasses.replace(config, stages=stages, device="cpu", k=k if k < SMOKE_IMAGES // 2 else 10)


def _random_store(dataset: str, n: int = SMOKE_IMAGES) -> ImageStore:
    side, channels, classes = SHAPES[dataset]
    generator = torch.Generator().manual_seed(0)
    return ImageStore(torch.randint(0, 256, (n, side, side, channels), dtype=torch.uint8, generator=generator),
                      torch.arange(n) % classes)


def _by_run_name(name: str) -> Path:
    matches = [path for path in CONFIGS if load_config(path).name == name]
    assert len(matches) == 1, f"no single config is named {name!r}"
    return matches[0]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(PROJECT_CONFIGS)))
def test_config_trains_every_stage_and_evaluates(path: Path, tmp_path):
    # ResNet-18 steps dominate the suite's time here: two threads when the suite runs in one process, one
    # in each of pytest-xdist's workers (which already keep both cores busy); conftest restores one thread
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    config = _smoke(load_config(path))
    store = _random_store(config.dataset.name)
    with warnings.catch_warnings():
        # collapse warnings (64 random images have no clusters to find) and "compile is ignored on CPU"
        warnings.simplefilter("ignore")
        for stage in config.stages:  # a stage that continues another config's run: train that run first
            source = stage.method.get("encoder_from")
            if source:
                earlier = _smoke(load_config(_by_run_name(Path(source).name)))
                train(earlier, tmp_path / "earlier", progress=False, store=store)
                stage.method["encoder_from"] = str(tmp_path / "earlier")
        run = train(config, tmp_path / "run", progress=False, store=store)
        metrics = evaluate(run, store, "train", config.dataset.name)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for stage in config.stages:  # every stage trained, with finite losses, and left its checkpoint
        losses = [line["loss"] for line in logged if line.get("stage") == stage.name and "loss" in line]
        assert losses and all(math.isfinite(loss) for loss in losses), stage.name
        assert (tmp_path / "run" / "checkpoints" / f"{stage.name}.pt").is_file(), stage.name
    assert metrics["n"] == len(store) and 0.0 < metrics["ACC"] <= 1.0 and math.isfinite(metrics["NMI"])


def test_the_cpu_recipe_raises_epochs_on_small_data_only():
    """configs/cpu.yaml's min_steps leaves the datasets its README rows were measured on at 30 epochs
    (CIFAR-10's 50k and MNIST's 60k train images, batch 512) and gives a 3,000-image folder 580;
    a 300-image folder trains in batches of 300, one step an epoch."""
    config = load_config(PROJECT_CONFIGS / "cpu.yaml")
    for images, epochs in ((50_000, 30), (60_000, 30), (45_000, 34), (3_000, 580)):
        assert with_min_steps(config, images, say=False).stages[0].train.epochs == epochs, images
    small = with_min_steps(config, 300, say=False).stages[0].train  # fewer images than one batch of 512
    assert (small.batch_size, small.epochs) == (300, config.stages[0].train.min_steps)
    assert config.stages[0].train.epochs == 30  # the loaded config itself is left as it was
