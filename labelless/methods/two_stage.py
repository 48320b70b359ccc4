"""TwoStageUC, stage 2 (Han et al., ECCV 2020, "Mitigating embedding and class assignment mismatch in
unsupervised image classification"): class assignment on top of a Super-AND embedding.

The stage-1 encoder (`labelless.methods.super_and`, both trunks and the projection) is fine-tuned
under five Norm-FC heads of fixed random prototypes (`labelless.nn.heads.NormFCHeads`):

    L_stage2 = L_assign + λ·L_cp,  λ = 1                                    (supplement Eq. 1)

L_assign is IIC's −I(y, ŷ) between the head posteriors of two augmented views, averaged over the
heads (`labelless.losses.iic_loss`, as the released code); L_cp, which keeps the embedding from
drifting while the heads pull it into clusters, is the two-term ISIF loss on the 128-d embeddings
of the two views (`labelless.losses.neighbourhood.isif_loss`, τ = 0.1). Only the encoder trains.
The head with the lowest training loss answers (never the most accurate: that would need labels).

Where the encoder comes from:
- the previous stage of the pipeline (`pretrained`): a `super_and` method — the paper's model — or a
  `simclr` one, whose backbone and projector become the encoder (v = normalise(g(f(x))), the
  projector's 128-d output): issue 8's alternative to SCAN as the clustering stage of `fast.yaml`;
- `encoder_from: PATH` — the stage-1 weights of an earlier run: a `.safetensors` file the Trainer
  wrote (`RUN_DIR/checkpoints/<stage>.safetensors`) or a run directory holding one super_and stage;
- neither: a fresh encoder, the supplement's "without stage 1" ablation (§D: 58.6% at 300 epochs).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.errors import UserError
from labelless.losses import iic_loss
from labelless.losses.neighbourhood import isif_loss
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.methods.simclr import SimCLR
from labelless.methods.super_and import SuperAND, TwoTrunkEncoder, paper_augment, round_consistency
from labelless.nn.heads import HeadSelector, NormFCHeads

ENCODER_PREFIX = "encoder."


def stage_one_weights(path: str | Path) -> Path:
    """The `.safetensors` file of a stage-1 (super_and) encoder: `path` itself, or the only super_and
    stage among `path/checkpoints/*.safetensors` when `path` is a run directory."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"encoder_from: {path} is neither a .safetensors file nor a run directory")
    found = []
    for candidate in sorted((path / "checkpoints").glob("*.safetensors")):
        with safe_open(str(candidate), framework="pt") as handle:
            if (handle.metadata() or {}).get("method") == SuperAND.name:
                found.append(candidate)
    if len(found) != 1:
        listed = ", ".join(str(f) for f in found) or "none"
        raise UserError(f"encoder_from: {path} must hold exactly one finished super_and stage in checkpoints/ "
                        f"(found: {listed}); give the .safetensors file itself")
    return found[0]


def load_encoder(encoder: TwoTrunkEncoder, path: str | Path) -> None:
    """Copy the `encoder.*` weights of a stage-1 export into `encoder` (strict: same backbone, sobel
    and embedding_dim as stage 1)."""
    from safetensors.torch import load_file

    file = stage_one_weights(path)
    weights = {key[len(ENCODER_PREFIX):]: value for key, value in load_file(str(file)).items()
               if key.startswith(ENCODER_PREFIX)}
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"encoder_from: {file} does not fit this encoder (use stage 1's backbone, sobel and "
                        f"embedding_dim): {first_line}") from None


class ProjectedEncoder(nn.Module):
    """A SimCLR stage's backbone f and projector g as TwoStageUC's encoder: x ∈ [0, 1] → normalise(g(f(x)))."""

    def __init__(self, backbone: nn.Module, projector: nn.Sequential) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.embedding_dim = projector[-1].out_features

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=1)


class TwoStageUC(Method):
    name = "two_stage"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 encoder_from: str | None = None, backbone: str = "resnet18", embedding_dim: int = 128,
                 sobel: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 heads: int = 5, head_norm: str = "feature_rows", head_temperature: float = 0.1,
                 cp_weight: float = 1.0, cp_temperature: float = 0.1, augment: str = "simclr",
                 augment_options: dict | None = None) -> None:
        super().__init__()
        if pretrained is not None:
            if encoder_from is not None:
                raise UserError("two_stage: give encoder_from only when no previous stage hands over an encoder")
            if isinstance(getattr(pretrained, "encoder", None), TwoTrunkEncoder):
                self.encoder: nn.Module = copy.deepcopy(pretrained.encoder)
            elif isinstance(pretrained, SimCLR):
                self.encoder = ProjectedEncoder(copy.deepcopy(pretrained.backbone), copy.deepcopy(pretrained.projector))
            else:
                raise UserError(f"two_stage continues a super_and or simclr stage, not '{pretrained.name}'")
        else:
            self.encoder = TwoTrunkEncoder(backbone, in_channels, image_size, embedding_dim, sobel, mean, std)
            if encoder_from is not None:
                load_encoder(self.encoder, encoder_from)
        try:
            self.heads = NormFCHeads(self.encoder.embedding_dim, k, heads, head_temperature, head_norm)
        except ValueError as error:
            raise UserError(f"two_stage: {error}") from None
        self.selector = HeadSelector(heads)
        self.augment = paper_augment(image_size, in_channels, augment, augment_options)
        self.cp_weight, self.cp_temperature = cp_weight, cp_temperature
        self.stage1_rounds = pretrained.neighbour_round if isinstance(pretrained, SuperAND) else 0

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        self.selector.start_epoch()

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        n = len(batch.indices)
        embeddings = self.encoder(torch.cat([self.augment(batch.images), self.augment(batch.images)]))  # 2n×D
        assign = torch.stack([iic_loss(p[:n], p[n:]) for p in (logits.softmax(1) for logits in self.heads(embeddings))])
        consistency = isif_loss(embeddings[:n], embeddings[n:], self.cp_temperature)
        self.selector.record(assign + self.cp_weight * consistency)  # each head's own L_stage2
        logs = {"assign": assign.mean().detach(), "cp": consistency.detach()}
        logs.update({f"assign_head_{h}": loss for h, loss in enumerate(assign.detach())})  # the head choice's evidence
        return assign.mean() + self.cp_weight * consistency, logs

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.encoder, images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.heads(self.encoder(x))[self.selector.chosen], images)

    def head_logits(self, images: Tensor) -> list[Tensor]:
        return self.heads(self.embed(images))

    def diagnostics(self, labels: Tensor, run_dir: Path | None) -> dict:
        """Stage 1's per-round neighbourhood consistency (Super-AND's Fig. 4), when a `super_and` stage
        wrote its round files into this run directory; {} after a `simclr` stage. Evaluation only."""
        return round_consistency(labels, run_dir, self.stage1_rounds)
