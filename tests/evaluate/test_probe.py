"""Linear probe on frozen features."""
import numpy as np
import torch

from labelless.evaluate import linear_probe


def test_separable_blobs_are_probed_almost_perfectly() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 10))
    train_labels, test_labels = np.repeat(np.arange(3), 60), np.repeat(np.arange(3), 20)
    train = centres[train_labels] + rng.normal(size=(180, 10))
    test = centres[test_labels] + rng.normal(size=(60, 10))
    assert linear_probe(torch.from_numpy(train), torch.from_numpy(train_labels), test, test_labels) >= 0.99
