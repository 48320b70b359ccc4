"""Every name the CLI and configs accept, in explicit dicts (no import-time magic): methods,
backbones, datasets and augmentation recipes. A contract test runs every entry."""
from __future__ import annotations

from labelless.data.augment import AUGMENTS, list_augments
from labelless.data.sources import DATASETS
from labelless.methods.base import Method
from labelless.methods.byol import BYOL
from labelless.methods.deepcluster import DeepCluster
from labelless.methods.entropy_margin import EntropyMargin
from labelless.methods.iic import IIC
from labelless.methods.lsd_c import LSDC
from labelless.methods.pseudo_label import PseudoLabel
from labelless.methods.rotnet import RotNet
from labelless.methods.scan import SCAN
from labelless.methods.selflabel import SelfLabel
from labelless.methods.simclr import SimCLR
from labelless.methods.super_and import SuperAND
from labelless.methods.supervised import Supervised
from labelless.methods.two_stage import TwoStageUC
from labelless.nn.backbones import BACKBONES, list_backbones

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, BYOL, SCAN, SelfLabel, IIC, SuperAND, TwoStageUC, RotNet, LSDC,
                                                      EntropyMargin, PseudoLabel, DeepCluster, Supervised)}

# methods that continue a previous stage and cannot start a pipeline
NEEDS_PREVIOUS_STAGE = {"selflabel"}


def list_methods() -> list[str]:
    return sorted(METHODS)


def list_datasets() -> list[str]:
    return sorted(DATASETS) + ["folder:PATH"]


__all__ = ["AUGMENTS", "BACKBONES", "DATASETS", "METHODS", "NEEDS_PREVIOUS_STAGE", "list_augments",
           "list_backbones", "list_datasets", "list_methods"]
