"""Every shipped config loads, and every stage's method builds with its parameters (a typo in a
method parameter or a stage order that cannot work fails here, not minutes into a GPU run)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labelless.config import load_config
from labelless.data.stores import ImageStore
from labelless.pipeline import PROJECT_CONFIGS, build_method

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
