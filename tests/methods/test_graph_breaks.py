"""The training steps that the GPU recipe compiles (`train.compile: true` in configs/cifar10/fast.yaml)
trace as one graph: a graph break there is a device sync and a split graph every step. On the H100
the SCAN step broke at the head choice (`int(...)`) before this was fixed; the self-labelling loss
would have broken at `if mask.any()` and its boolean indexing. Traced with dynamo's `explain` (no
compilation, so this runs on the CPU in seconds).

The methods that keep state between steps (Super-AND's memory bank and curriculum neighbours,
TwoStageUC's fixed prototypes, LSD-C's frozen trunk, BYOL's moving-average target) must also *compute* the
same when compiled: three steps through `torch.compile(backend="aot_eager")` — dynamo, functionalised
buffer writes and AOTAutograd, everything the GPU's compile does except Inductor's kernels — give the
eager losses, gradients and buffers, across an epoch boundary that changes the step's Python state."""
from __future__ import annotations

import pytest
import torch

import copy

from labelless.data.stores import ImageStore
from labelless.methods.base import Batch, EpochContext
from labelless.methods.iic import IIC
from labelless.methods.scan import SCAN
from labelless.methods.selflabel import SelfLabel
from labelless.registry import METHODS

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


def _three_steps(method, store: ImageStore, compiled: bool) -> tuple[torch.Tensor, list, list]:
    step = torch.compile(method.training_step, backend="aot_eager") if compiled else method.training_step
    torch.manual_seed(1)  # the augmentations draw inside the step: same stream in both runs
    losses = []
    for epoch in range(3):
        context = EpochContext(epoch=epoch, epochs=3, store=store.without_labels(), device=torch.device("cpu"),
                               batch_size=16)
        method.on_epoch_start(epoch, context)
        rows = torch.arange(16) + 16 * epoch
        loss, _ = step(Batch(store.batch(rows), rows))
        loss.backward()
        losses.append(loss.detach())
    return (torch.stack(losses), [p.grad for p in method.parameters() if p.grad is not None],
            [b.float() for b in method.buffers()])


@pytest.mark.parametrize("name, options", [
    # round 1 starts at epoch 2 (curriculum neighbours rewritten) and the UE weight leaves 0 at epoch 1
    ("super_and", {"epochs_per_round": 2, "ue_weight_every": 1}),
    ("two_stage", {}),
    ("byol", {"hidden_dim": 32, "projection_dim": 16}),  # the target's in-step EMA write
    ("lsd_c", {"knn_k": 5, "rampup_epochs": 2}),
])
def test_a_compiled_stateful_step_computes_what_the_eager_step_does(name, options):
    torch.manual_seed(0)
    store = ImageStore(torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8))
    if name == "lsd_c":  # LSD-C continues a pretrained trunk (RotNet's in the paper)
        options = {**options, "pretrained": METHODS["rotnet"](k=4, in_channels=3, image_size=16, backbone="small_cnn")}
    else:
        options = {**options, "backbone": "small_cnn"}
    method = METHODS[name](k=4, in_channels=3, image_size=16, **options)
    twin = copy.deepcopy(method)
    eager = _three_steps(method, store, compiled=False)
    torch._dynamo.reset()
    compiled = _three_steps(twin, store, compiled=True)
    assert torch.equal(eager[0], compiled[0]) and len(eager[0]) == 3
    for a, b in zip(eager[1] + eager[2], compiled[1] + compiled[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if name == "super_and":
        assert twin.neighbour_round == 1 and bool((twin.neighbours[:, 0] >= 0).any())  # round 1 did start
        # its bank losses are a custom autograd.Function (`bank_losses`): dynamo traces it, no break
        twin.ue_weight = 0.2  # round 1 restarts it at 0: the weighted branch here
        assert _graph_breaks(twin.training_step, _batch()[1]) == []
