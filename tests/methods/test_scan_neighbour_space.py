"""SCAN's `neighbour_space` (issue 8): `projector` mines the k nearest neighbours in the previous stage's
L2-normalised projector output (SCAN's reference code), `backbone` (default) in its normalised pooled
features. Known answers against a brute-force top-k; the one-line refusal of a previous stage without a
projector before any training; a tiny SimCLR → SCAN(projector) run through the pipeline, and its reload."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from labelless.config import load_config
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.evaluate.knn import knn_indices
from labelless.methods import scan as scan_module
from labelless.methods.base import EpochContext
from labelless.methods.byol import BYOL
from labelless.methods.rotnet import RotNet
from labelless.methods.scan import SCAN
from labelless.methods.simclr import SimCLR
from labelless.pipeline import train

K_NEIGHBOURS = 5
SMALL = {"k": 3, "in_channels": 3, "image_size": 8, "backbone": "mlp"}


def _store(n: int = 48) -> ImageStore:
    g = torch.Generator().manual_seed(0)
    return ImageStore(torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8))


def _pretext(kind: str, store: ImageStore):
    torch.manual_seed(0)
    method = (SimCLR(**SMALL, projection_dim=16, hidden_dim=32) if kind == "simclr"
              else BYOL(**SMALL, projection_dim=16, hidden_dim=32))
    with torch.no_grad():  # non-trivial BatchNorm running statistics: mining must use them (eval mode)
        method.train()
        method.projector(method.backbone(store.batch(torch.arange(len(store)))))
    return method


def _brute_force(features: torch.Tensor, k: int) -> torch.Tensor:
    z = F.normalize(features.double(), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-torch.inf)
    return similarity.topk(k, dim=1).indices


def _mine(pretext, store: ImageStore, space: str, monkeypatch) -> torch.Tensor:
    # a chunk of 7 queries: the chunked search (O(N·k) memory) is the one under test
    monkeypatch.setattr(scan_module, "knn_indices", functools.partial(knn_indices, chunk_size=7))
    scan = SCAN(**SMALL, pretrained=pretext, heads=2, num_neighbours=K_NEIGHBOURS, neighbour_space=space)
    ctx = EpochContext(0, 1, store, torch.device("cpu"), batch_size=16)  # 3 feature batches
    return scan.mine_neighbours(ctx)


@pytest.mark.parametrize("kind, space", [("simclr", "projector"), ("byol", "projector"), ("simclr", "backbone")])
def test_mined_neighbours_are_the_brute_force_top_k_of_the_chosen_space(kind, space, monkeypatch):
    store = _store()
    pretext = _pretext(kind, store)
    mined = _mine(pretext, store, space, monkeypatch)
    pretext.eval()
    with torch.no_grad():
        features = pretext.backbone(store.batch(torch.arange(len(store))))
        if space == "projector":  # BYOL: its online projector
            features = pretext.projector(features)
    assert mined.shape == (len(store), K_NEIGHBOURS) and mined.dtype == torch.int64
    assert torch.equal(mined, _brute_force(features, K_NEIGHBOURS))


def test_projector_and_backbone_spaces_mine_different_neighbours(monkeypatch):
    """Otherwise the known-answer test above could not tell the two spaces apart."""
    store = _store()
    pretext = _pretext("simclr", store)
    assert not torch.equal(_mine(pretext, store, "projector", monkeypatch),
                           _mine(pretext, store, "backbone", monkeypatch))
    assert SCAN(**SMALL, pretrained=pretext).neighbour_space == "backbone"  # the default is unchanged


@pytest.mark.parametrize("pretrained, options, message", [
    (None, {}, "needs a previous simclr or byol stage, but neighbours are mined in pixel space"),
    ("rotnet", {}, "the previous stage 'rotnet' has no projector"),
    ("simclr", {"neighbours_from": "pixels"}, "neighbours are mined in pixel space"),
])
def test_projector_space_without_a_projector_is_a_one_line_user_error(pretrained, options, message):
    previous = {None: None, "rotnet": RotNet(**SMALL), "simclr": SimCLR(**SMALL, hidden_dim=32)}[pretrained]
    with pytest.raises(UserError, match=message) as error:
        SCAN(**SMALL, pretrained=previous, neighbour_space="projector", **options)
    assert "\n" not in str(error.value)


def test_an_unknown_neighbour_space_is_a_user_error():
    with pytest.raises(UserError, match="neighbour_space must be 'backbone' or 'projector', not 'head'"):
        SCAN(**SMALL, pretrained=SimCLR(**SMALL, hidden_dim=32), neighbour_space="head")


def _config(first: str) -> dict:
    return {"name": "tiny-scan-projector", "dataset": {"name": "digits"}, "device": "cpu",
            "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "constant",
                      "checkpoint_every": 9},
            "stages": [{"name": "pretext", "method": {"name": first, "backbone": "mlp", "hidden_dim": 64}
                        if first == "simclr" else {"name": first, "backbone": "mlp", "flip": False}},
                       {"name": "cluster", "method": {"name": "scan", "heads": 2, "num_neighbours": K_NEIGHBOURS,
                                                      "augment": "weak", "neighbour_space": "projector"}}]}


def test_a_rotnet_pretext_is_refused_before_any_stage_trains(tmp_path):
    with pytest.raises(UserError, match="'rotnet' has no projector") as error:
        train(load_config(_config("rotnet")), tmp_path, progress=False,
              store=load_dataset("digits").subset(slice(0, 64)))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_simclr_then_scan_on_the_projector_trains_saves_its_neighbours_and_reloads(tmp_path):
    from labelless.predict import load_run

    store = load_dataset("digits").subset(slice(0, 128))
    run = train(load_config(_config("simclr")), tmp_path, progress=False, store=store)
    # the artefact is the projector-space top-k of the trained pretext stage (the one SCAN was handed)
    pretext = run.method._pretrained[0].eval()
    with torch.no_grad():
        z = pretext.projector(pretext.backbone(store.batch(torch.arange(len(store)))))
    saved = torch.load(tmp_path / "artefacts" / "neighbour_indices.pt")
    assert saved.shape == (len(store), K_NEIGHBOURS)
    similarity = F.normalize(z.double(), dim=1) @ F.normalize(z.double(), dim=1).T  # tie-proof: compare scores
    similarity.fill_diagonal_(-torch.inf)
    torch.testing.assert_close(similarity.gather(1, saved), similarity.topk(K_NEIGHBOURS, dim=1).values,
                               rtol=0, atol=1e-5)
    images = store.images[:32]
    probabilities = run.probabilities(images)
    assert probabilities.shape == (32, 10) and torch.isfinite(probabilities).all()
    torch.testing.assert_close(load_run(tmp_path).probabilities(images), probabilities)
