"""labelless: unsupervised image classification in PyTorch.

    import labelless
    store = labelless.load_dataset("digits")
    run = labelless.train(labelless.load_config("configs/digits/default.yaml"))
    clusters = run.predict(store.images)
    labelless.evaluate.cluster_metrics(store.labels, clusters)   # {'ACC': …, 'NMI': …, 'ARI': …}

The names below are imported on first use (PEP 562): `import labelless` and the command line's start
(`labelless --help`, `labelless list`) do not pay for torch, torchvision and scikit-learn until a
command needs them.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["ImageStore", "Run", "evaluate", "load_config", "load_dataset", "train"]
__version__ = "0.1.0"

# public name → (module, attribute in it; None: the module itself)
_LAZY = {"evaluate": ("labelless.evaluate", None), "load_config": ("labelless.config", "load_config"),
         "load_dataset": ("labelless.data.sources", "load_dataset"),
         "ImageStore": ("labelless.data.stores", "ImageStore"),
         "Run": ("labelless.pipeline", "Run")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'labelless' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"train"})


class _Package(types.ModuleType):
    """`labelless.train` is the pipeline's train function although `labelless/train.py` (the Trainer) is
    a submodule of the same name: the import system's binding of that submodule to the package attribute
    is ignored (`from labelless.train import Trainer` is unaffected)."""

    @property
    def train(self) -> Any:
        from labelless.pipeline import train

        return train

    @train.setter
    def train(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("labelless.train is the pipeline's train function and cannot be replaced")


sys.modules[__name__].__class__ = _Package
