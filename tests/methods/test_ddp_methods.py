"""Methods under DDP (2 gloo processes on CPU, seconds): DeepCluster's pseudo-labels and re-initialised
head are the same on every rank, and LSD-C, whose loss pairs the images of a batch, refuses more than one
process, a batch smaller than knn_k and (with kNN labels) a short last batch when the pipeline is built."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labelless.config import load_config
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods import deepcluster
from labelless.methods.base import EpochContext
from labelless.methods.deepcluster import DeepCluster
from labelless.pipeline import build_pipeline
from labelless.train import all_gather_tensor
from tests.test_train import _free_port, leave_spawned_worker


def fake_store(n: int = 48, side: int = 16) -> ImageStore:
    images = torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageStore(images)


def _epoch_start_on_every_rank(method: DeepCluster, store: ImageStore, rank: int) -> tuple[bool, bool]:
    """Whether rank 0 and rank 1 agree on the pseudo-labels and on the head after `on_epoch_start`, with
    each rank's RNG seeded apart, as the Trainer does."""
    torch.manual_seed(100 + rank)
    method.on_epoch_start(0, EpochContext(0, 1, store, torch.device("cpu"), batch_size=16))
    labels = all_gather_tensor(method.pseudo_labels[None])
    head = all_gather_tensor(torch.cat([method.head.weight.detach().flatten(), method.head.bias.detach()])[None])
    return torch.equal(labels[0], labels[1]), torch.equal(head[0], head[1])


def _deepcluster_worker(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights on both ranks, as DDP's initial broadcast leaves them
        method = DeepCluster(k=3, in_channels=3, image_size=16, backbone="small_cnn", augment="weak", pca_dims=8,
                             kmeans_iterations=5, num_clusters=6)
        store = fake_store()
        broadcast = deepcluster.broadcast_from_rank_0
        deepcluster.broadcast_from_rank_0 = lambda *tensors: None  # control: the per-rank draws do differ
        assert _epoch_start_on_every_rank(method, store, rank) == (False, False)
        deepcluster.broadcast_from_rank_0 = broadcast
        assert _epoch_start_on_every_rank(method, store, rank) == (True, True)
        weights = all_gather_tensor(method.cluster_weights[None])
        assert torch.equal(weights[0], weights[1])
        dist.barrier()  # no rank tears gloo down while its peer is still in a collective (SIGABRT at exit)
    finally:
        dist.destroy_process_group()
    leave_spawned_worker()


def test_deepcluster_pseudo_labels_and_head_are_the_same_on_every_rank():
    mp.spawn(_deepcluster_worker, args=(_free_port(),), nprocs=2, join=True)


def lsd_c_config(knn_k: int, batch_size: int, drop_last: bool = True):
    return load_config({
        "dataset": {"name": "digits"}, "device": "cpu", "train": {"batch_size": batch_size, "drop_last": drop_last},
        "stages": [{"name": "lsd_c", "method": {"name": "lsd_c", "backbone": "mlp", "knn_k": knn_k, "flip": False}}],
    })


def test_lsd_c_refuses_more_than_one_process_when_the_pipeline_is_built(monkeypatch):
    """16 ranks × 16 images would pass a knn_k 20 guard on the global 256 and crash mid-step; any W > 1
    silently shrinks the batch the pairs are drawn from."""
    store = fake_store(side=8)
    build_pipeline(lsd_c_config(knn_k=20, batch_size=256), 10, store, check_train=True)
    for world_size in (2, 16):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        with pytest.raises(UserError, match=f"stage 'lsd_c': .*{world_size} processes .* one process"):
            build_pipeline(lsd_c_config(knn_k=20, batch_size=256), 10, store, check_train=True)


def test_lsd_c_refuses_a_batch_smaller_than_knn_k_when_the_pipeline_is_built():
    with pytest.raises(UserError, match="stage 'lsd_c': lsd_c: knn_k 20 .* train.batch_size is 16"):
        build_pipeline(lsd_c_config(knn_k=20, batch_size=16), 10, fake_store(side=8), check_train=True)


def test_lsd_c_refuses_a_short_last_batch_with_knn_labels():
    """Without drop_last the last batch (here 48 mod 32 = 16 images) would hold fewer than knn_k 20 and
    fail mid-epoch: refused when the pipeline is built. Cosine labels have no k and may keep it."""
    with pytest.raises(UserError, match="stage 'lsd_c': lsd_c links each image to its 20 nearest .* drop_last true"):
        build_pipeline(lsd_c_config(knn_k=20, batch_size=32, drop_last=False), 10, fake_store(side=8), check_train=True)
    config = lsd_c_config(knn_k=20, batch_size=32, drop_last=False)
    config.stages[0].method["labelling"] = "cosine"
    build_pipeline(config, 10, fake_store(side=8), check_train=True)
