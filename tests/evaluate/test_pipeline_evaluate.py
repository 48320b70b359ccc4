"""pipeline.evaluate on hand-made cluster probabilities: a label-trained run is scored without matching."""
import json

import pytest
import torch
from torch import Tensor, nn

from labelless.config import load_config
from labelless.data.stores import ImageStore
from labelless.methods.base import Method
from labelless.pipeline import Run, evaluate

# image i (a 1×1 grey pixel of value i) → cluster, top probability; labels 0, 0, 0, 1, 1, 1
CLUSTERS = [1, 1, 0, 0, 0, 1]
TOP = [0.95, 0.95, 0.6, 0.95, 0.95, 0.6]
LABELS = [0, 0, 0, 1, 1, 1]


class LookUp(Method):
    """Cluster logits read from a table by pixel value: the probabilities are exactly TOP."""

    name = "look_up"

    def __init__(self):
        super().__init__()
        rows = torch.full((len(CLUSTERS), 2), 0.0)
        for i, (cluster, top) in enumerate(zip(CLUSTERS, TOP)):
            rows[i, cluster], rows[i, 1 - cluster] = top, 1 - top
        self.register_buffer("table", rows.log())
        self.unused = nn.Linear(1, 1)  # a parameter, so that the run has a device

    def training_step(self, batch):
        raise AssertionError("not trained here")

    def embed(self, images: Tensor) -> Tensor:
        return images.flatten(1)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return self.table[(images.flatten(1)[:, 0] * 255).round().long().clamp(0, len(CLUSTERS) - 1)]


@pytest.mark.parametrize("labelled_fraction, acc, confident", [(None, 4 / 6, 1.0), (0.5, 2 / 6, 0.0)])
def test_a_label_trained_run_is_scored_as_trained_on_the_confident_images_too(tmp_path, labelled_fraction, acc,
                                                                              confident):
    """Unsupervised: the Hungarian match (cluster 1 → class 0) gives ACC 4/6 and the four confident images
    (> 0.9) all right. Trained with labels, cluster c is class c: ACC 2/6, and the confident images are
    all wrong, 0.0 (the confident subset was still matched until 2026-12-07, giving 1.0)."""
    images = torch.arange(len(CLUSTERS), dtype=torch.uint8).view(-1, 1, 1, 1)
    store = ImageStore(images, labels=torch.tensor(LABELS))
    config = load_config({"dataset": "digits", "method": "look_up", "labelled_fraction": labelled_fraction})
    run = Run(config, tmp_path, LookUp(), k=2, image_size=(1, 1), channels=1)
    result = evaluate(run, store, "all", "digits")
    assert result["ACC"] == pytest.approx(acc) and result["CONFIDENT_FRACTION"] == pytest.approx(4 / 6)
    assert result["ACC_CONFIDENT"] == pytest.approx(confident)
    assert ("ACC_HUNGARIAN" in result) is (labelled_fraction is not None)
    assert json.loads((tmp_path / "metrics.json").read_text())["ACC_CONFIDENT"] == pytest.approx(confident)
