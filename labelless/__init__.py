"""labelless: unsupervised image classification in PyTorch.

    import labelless
    store = labelless.load_dataset("digits")
    run = labelless.train(labelless.load_config("configs/digits/default.yaml"))
    clusters = run.predict(store.images)
    labelless.evaluate.cluster_metrics(store.labels, clusters)   # {'ACC': …, 'NMI': …, 'ARI': …}
"""
from labelless import evaluate
from labelless.config import load_config
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore
from labelless.pipeline import Run, train

__all__ = ["ImageStore", "Run", "evaluate", "load_config", "load_dataset", "train"]
__version__ = "0.1.0"
