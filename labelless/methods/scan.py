"""SCAN clustering (Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", 2020).

Each image is pulled towards the cluster posterior of one of its k nearest neighbours, mined once
in a feature space, while an entropy term keeps all clusters in use (Eq. 2):
    Λ = −(1/|D|) Σ_X Σ_{k∈N_X} log ⟨Φ(X), Φ(k)⟩ + λ Σ_c Φ'^c log Φ'^c,   λ = 5.
Neighbours come from the previous stage (SCAN's pretext), or from pixel space when the run has no
pretext stage (scikit-learn digits: 96% of the 10 pixel-space neighbours share the label).
Several heads train together; the head with the lowest loss is the answer.

Without a previous stage, `pixel_space` picks the space neighbours are mined in: `centred` pixels,
`deskewed` pixels (handwriting), or `patches` (Coates et al.'s single-layer k-means features,
`labelless.methods.patch_features`: photographs; minutes on a CPU for 50k images). `neighbour_pca`
keeps that many principal components of it first.

`neighbour_space` picks where in the previous stage they are mined, both L2-normalised:
- `backbone` (default): its pooled backbone features (`embed`, 512-d for a ResNet-18);
- `projector`: its projector's output (`projector_embed`, 128-d for SimCLR), the space of SCAN's
  reference code, whose `fill_memory_bank` calls the contrastive model, i.e.
  normalize(contrastive_head(backbone(x))) (wvangansbeke/Unsupervised-Classification). SimCLR and
  BYOL (its online projector) have one; any other previous stage, or none, is refused when the
  pipeline is built.
Only the mining changes: the cluster heads sit on the backbone either way.
"""
from __future__ import annotations

import copy
import sys

import torch
from torch import Tensor

from labelless.data.augment import Augment, deskew
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.evaluate.knn import knn_indices, principal_components
from labelless.losses import scan_loss
from labelless.methods.base import Batch, EpochContext, Method, MultiHeadClustering
from labelless.methods.patch_features import PatchKMeans
from labelless.nn.backbones import build_backbone
from labelless.nn.heads import ClusterHeads, HeadSelector


def pixel_features(store: ImageStore, batch_size: int = 4096, *, deskewed: bool = False) -> Tensor:
    """Flattened pixels centred on the dataset mean: with cosine similarity, the classic baseline space.
    With `deskewed`, each image is first deskewed by its ink moments (handwriting: on MNIST the share
    of the 20 neighbours with the same label rises from 0.939 to 0.965, and from 0.914 to 0.953 for
    the 4s and 9s that SCAN confuses most)."""
    def rows(start: int) -> Tensor:
        images = store.batch(torch.arange(start, min(start + batch_size, len(store)), device=store.device))
        return (deskew(images) if deskewed else images).flatten(1)

    flat = torch.cat([rows(i) for i in range(0, len(store), batch_size)])
    return flat - flat.mean(0)


PIXEL_SPACES = {"centred": "pixels centred on the dataset mean",  # each `pixel_space`, as reports name it
                "deskewed": "deskewed pixels centred on the dataset mean",
                "patches": "patch k-means features"}


def pixel_space_features(store: ImageStore, space: str) -> Tensor:
    """The features neighbours are mined on when there is no previous stage (`pixel_space`):
    `centred` or `deskewed` pixels (`pixel_features`), or `patches`, Coates et al.'s single-layer
    k-means features (`PatchKMeans`: on CIFAR-10 train, 43 % of the 20 neighbours share the label on
    50 of their principal components, against 31 % on centred pixels; neighbours-cifar10.json)."""
    if space == "patches":
        return PatchKMeans().features(store)
    return pixel_features(store, deskewed=space == "deskewed")


def check_neighbour_space(space: str, pretrained: Method | None) -> None:
    """Refuse, in one line and before any training, a `neighbour_space` that `pretrained` (the stage
    neighbours are mined from; None: pixel space) cannot give."""
    if space not in ("backbone", "projector"):
        raise UserError(f"scan: neighbour_space must be 'backbone' or 'projector', not {space!r}")
    if space == "projector" and not callable(getattr(pretrained, "projector_embed", None)):
        found = ("neighbours are mined in pixel space (no previous stage, or neighbours_from: pixels)"
                 if pretrained is None else f"the previous stage '{pretrained.name}' has no projector")
        raise UserError(f"scan: neighbour_space 'projector' needs a previous simclr or byol stage, but {found}")


class SCAN(MultiHeadClustering):
    name = "scan"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", heads: int = 5, num_neighbours: int = 20, entropy_weight: float = 5.0,
                 augment: str = "simclr", neighbours_from: str = "auto", backbone_lr_scale: float = 1.0,
                 pixel_space: str = "centred", neighbour_pca: int = 0, neighbour_space: str = "backbone") -> None:
        super().__init__()
        if neighbours_from == "auto":
            neighbours_from = "pretrained" if pretrained is not None else "pixels"
        if neighbours_from not in ("pretrained", "pixels"):
            raise ValueError(f"neighbours_from must be 'pretrained', 'pixels' or 'auto', not {neighbours_from!r}")
        if neighbours_from == "pretrained" and pretrained is None:
            raise ValueError("neighbours_from='pretrained' needs a previous stage")
        if num_neighbours < 1:
            raise UserError(f"config key 'method.num_neighbours' must be at least 1, got {num_neighbours}")
        if pixel_space not in PIXEL_SPACES:
            raise ValueError(f"pixel_space must be one of {', '.join(PIXEL_SPACES)}, not {pixel_space!r}")
        check_neighbour_space(neighbour_space, pretrained if neighbours_from == "pretrained" else None)
        self.neighbour_space = neighbour_space
        self.neighbours_from, self.num_neighbours, self.entropy_weight = neighbours_from, num_neighbours, entropy_weight
        self.pixel_space, self.neighbour_pca = pixel_space, neighbour_pca
        self.backbone_lr_scale = backbone_lr_scale
        # the pretext stage's trunk is fine-tuned (SCAN updates the backbone too); its embedding is kept
        # only for mining and is not part of this model
        self._pretrained = [pretrained] if pretrained is not None else []
        self.backbone = (copy.deepcopy(pretrained.backbone) if pretrained is not None
                         else build_backbone(backbone, in_channels=in_channels, image_size=image_size))
        self.heads = ClusterHeads(self.backbone.num_features, k, heads)
        self.selector = HeadSelector(heads)
        self.augment = Augment(augment, size=image_size, channels=in_channels)
        self.neighbour_indices: Tensor | None = None  # N×num_neighbours, mined at the first epoch
        self._store: ImageStore | None = None

    # ---------------------------------------------------------------- training
    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        self._store = ctx.store
        self.selector.start_epoch()
        if self.neighbour_indices is None:
            self.neighbour_indices = self.mine_neighbours(ctx)
            if ctx.run_dir is not None:
                (ctx.run_dir / "artefacts").mkdir(parents=True, exist_ok=True)
                torch.save(self.neighbour_indices.cpu(), ctx.run_dir / "artefacts" / "neighbour_indices.pt")

    @torch.no_grad()
    def mine_neighbours(self, ctx: EpochContext) -> Tensor:
        if self.neighbours_from == "pixels":
            features = pixel_space_features(ctx.store, self.pixel_space)
        else:
            pretrained = self._pretrained[0].to(ctx.device).eval()
            embed = pretrained.projector_embed if self.neighbour_space == "projector" else pretrained.embed
            features = torch.cat([embed(images).float() for _, images in ctx.batches()])
        k = min(self.num_neighbours, len(features) - 1)
        if k < 1:
            raise UserError(f"scan: {len(features)} image(s) have no neighbours to mine: it needs at least 2")
        if k < self.num_neighbours:
            print(f"labelless: scan mines {k} neighbours per image, not {self.num_neighbours}: "
                  f"the data has {len(features)} images", file=sys.stderr)
        return knn_indices(principal_components(features, self.neighbour_pca), k).to(ctx.store.device)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        n = len(batch.indices)
        pick = torch.randint(self.neighbour_indices.shape[1], (n,), device=batch.indices.device)
        neighbours = self.neighbour_indices[batch.indices, pick]
        images = torch.cat([self.augment(batch.images), self.augment(self._store.batch(neighbours).to(batch.images))])
        logits = self.heads(self.backbone(images))
        parts = [scan_loss(head[:n], head[n:], self.entropy_weight) for head in logits]
        head_losses = torch.stack([total for total, _, _ in parts])
        self.selector.record(head_losses)
        consistency, entropy = self.selector.pick(torch.stack([torch.stack(part[1:]) for part in parts]).detach())
        return head_losses.sum(), {"consistency": consistency, "entropy": entropy}

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.backbone.parameters()), "lr_scale": self.backbone_lr_scale},
                {"params": list(self.heads.parameters())}]

    def state_for_checkpoint(self) -> dict:
        return {"neighbour_indices": None if self.neighbour_indices is None else self.neighbour_indices.cpu()}

    def load_state_from_checkpoint(self, state: dict) -> None:
        found = state.get("neighbour_indices")
        self.neighbour_indices = None if found is None else found.to(self.heads.heads[0].weight.device)
