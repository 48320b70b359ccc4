"""The training steps that the GPU recipe compiles (`train.compile: true` in configs/cifar10/fast.yaml)
trace as one graph: a graph break there is a device sync and a split graph every step. On the H100
the SCAN step broke at the head choice (`int(...)`) before this was fixed; the self-labelling loss
would have broken at `if mask.any()` and its boolean indexing. Traced with dynamo's `explain` (no
compilation, so this runs on the CPU in seconds)."""
from __future__ import annotations

import pytest
import torch

from labelless.data.stores import ImageStore
from labelless.methods.base import Batch
from labelless.methods.iic import IIC
from labelless.methods.scan import SCAN
from labelless.methods.selflabel import SelfLabel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batch(n: int = 16) -> tuple[ImageStore, Batch]:
    g = torch.Generator().manual_seed(0)
    store = ImageStore(torch.randint(0, 256, (64, 16, 16, 3), generator=g, dtype=torch.uint8))
    rows = torch.arange(n)
    return store, Batch(store.batch(rows), rows)


def _graph_breaks(step, batch: Batch) -> list[str]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(batch)
    return [str(reason) for reason in explained.break_reasons]


def _scan(store: ImageStore) -> SCAN:
    scan = SCAN(k=4, in_channels=3, image_size=16, backbone="mlp", heads=3, num_neighbours=5)
    scan.neighbour_indices = torch.randint(0, len(store), (len(store), 5), generator=torch.Generator().manual_seed(1))
    scan._store = store
    scan.selector.record(torch.tensor([3.0, 1.0, 2.0]))  # head 1 has the lowest mean loss
    return scan


def test_scan_training_step_is_one_graph_and_logs_the_chosen_head():
    store, batch = _batch()
    scan = _scan(store)
    assert _graph_breaks(scan.training_step, batch) == []
    torch.manual_seed(0)
    loss, logs = scan.training_step(batch)
    assert scan.selector.chosen == 1 and torch.isfinite(loss)
    assert 0 <= float(logs["entropy"]) <= torch.log(torch.tensor(4.0)).item() + 1e-5


def test_selflabel_and_iic_training_steps_are_one_graph():
    store, batch = _batch()
    selflabel = SelfLabel(k=4, in_channels=3, image_size=16, pretrained=_scan(store), threshold=0.3)
    assert _graph_breaks(selflabel.training_step, batch) == []
    iic = IIC(k=4, in_channels=3, image_size=16, backbone="mlp", heads=2, overcluster_k=8)
    assert _graph_breaks(iic.training_step, batch) == []
