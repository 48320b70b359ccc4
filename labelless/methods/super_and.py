"""Super-AND (Han et al. 2020, "A comprehensive approach to unsupervised embedding learning based on
AND algorithm", arXiv:2002.12158): an embedding learnt against a memory bank, with AND's curriculum
of nearest-neighbour pairs, an entropy term that pulls neighbours together and an augmentation loss.

    L_total = L_and + w(t)·L_ue + L_aug                                           (Eq. 6)

- Encoder: one backbone on the RGB image and a second, separate one on its two Sobel gradients; the
  pooled features are concatenated and projected to a 128-d unit vector v (Fig. 2; the released code
  has two trunks, not one 5-channel network).
- Memory bank M (N×128, `labelless.nn.memory`): p_i = softmax(v_i·Mᵀ/τ) over all N samples, τ = 0.1;
  after each step m_i ← normalise(0.5·m_i + 0.5·v_i).
- Rounds of `epochs_per_round` epochs (5 × 200). Round 0 is instance discrimination. At the start of
  round r ≥ 1 the ⌊0.25·r·N⌋ samples whose bank entropy (memory against memory, self included, Eq. 9)
  is lowest are selected, each with its single nearest bank neighbour, fixed for the round (Eq. 7–8).
  The selected pairs go to `RUN_DIR/artefacts/round_<r>_pairs.pt` (P×2 store rows: anchor, neighbour);
  after training, `diagnostics` scores their neighbourhood consistency (the paper's Fig. 4) — labels
  reach only that evaluation hook, never training.
- L_and (Eq. 10), L_ue (Eq. 11–12, weight w = 0.2·⌊epoch-in-round/80⌋) and L_aug (Eq. 13–14: ISIF on
  the normalised relationship vectors r_i, each view's bank logits) — see `labelless.losses.neighbourhood`.
- The lr schedule restarts every round: the config sets `train.restart_every: 200`. The round length,
  the lr restarts and steps and the UE steps are separate keys; `check_train` refuses a stage whose
  schedules the rounds would cut (e.g. rounds of 40 epochs with the UE weight's first step at 80).
- kNN evaluation (k 200, τ 0.1) scores test queries against the memory bank as the training features,
  as the released code does (`knn_bank: memory`); `knn_bank: embed` embeds the training images instead.

Where the paper and the released code differ, the code's choice is the default (VERIFIED-DETAILS.md);
`ue`, `aug_loss` and `sobel` switch components off for the paper's ablations (Table 4).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.config import TrainConfig
from labelless.data.augment import Augment, normalize
from labelless.data.augment import sobel as sobel_gradients
from labelless.errors import UserError
from labelless.evaluate.knn import knn_indices
from labelless.losses.neighbourhood import bank_losses, isif_loss
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.nn.backbones import build_backbone
from labelless.nn.memory import MemoryBank, bank_entropy
from labelless.train import all_gather_tensor, distributed_info

# The authors' training transform (both Super-AND and TwoStageUC): RandomResizedCrop(32, scale 0.2–1),
# ColorJitter(0.4, 0.4, 0.4, 0.4) applied always, RandomGrayscale(0.2), RandomHorizontalFlip.
PAPER_AUGMENT_OPTIONS = {"scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.4), "jitter_p": 1.0, "grayscale_p": 0.2}
KNN_BANKS = ("memory", "embed")


class TwoTrunkEncoder(nn.Module):
    """x ∈ [0, 1] → v = normalise(W·[f_rgb(x̄); f_sobel(sobel(x̄))]), x̄ = (x − mean)/std: N×embedding_dim.

    The Sobel trunk sees the two gradients of the normalised image, filtered after normalisation as the
    released code does. Two details differ from that code (resnet_cifar.py): it takes the plain mean of
    the channels and a zero-padded 3×3 Sobel, which puts an edge along every image border; we take the
    luma (`augment.sobel`, shared with DeepCluster and IIC) with replicated borders.
    `sobel=False` drops that trunk (Table 4, "w/o Sobel")."""

    def __init__(self, backbone: str, in_channels: int, image_size: int, embedding_dim: int = 128,
                 sobel: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise UserError("give both mean and std, or neither")
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.rgb = build_backbone(backbone, in_channels=in_channels, image_size=image_size)
        self.sobel = build_backbone(backbone, in_channels=2, image_size=image_size) if sobel else None
        features = self.rgb.num_features + (self.sobel.num_features if self.sobel is not None else 0)
        self.projection = nn.Linear(features, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        features = self.rgb(x)
        if self.sobel is not None:
            features = torch.cat([features, self.sobel(sobel_gradients(x))], 1)
        return F.normalize(self.projection(features), dim=1)


def paper_augment(image_size: int, in_channels: int, augment: str, options: dict | None) -> Augment:
    """The recipe `augment` with `options`; when `options` is None, the authors' transform for their
    recipe (`simclr`) and the recipe's own defaults for any other (`affine` for digits, say)."""
    if options is None:
        options = PAPER_AUGMENT_OPTIONS if augment == "simclr" else {}
    return Augment(augment, size=image_size, channels=in_channels, **options)


def select_neighbourhoods(memory: Tensor, count: int, temperature: float, size: int = 1) -> tuple[Tensor, Tensor]:
    """AND's neighbourhood discovery and curriculum selection (Super-AND Eq. 7–9).

    The `count` bank rows of lowest entropy H(softmax(m_i·Mᵀ/τ)) are the anchors; each one's
    neighbourhood is its `size` most similar other rows. Returns (anchors `count`, neighbours count×size)."""
    anchors = bank_entropy(memory, temperature).topk(count, largest=False).indices
    return anchors, knn_indices(memory, size)[anchors]


class SuperAND(Method):
    name = "super_and"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", embedding_dim: int = 128, sobel: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 temperature: float = 0.1, memory_momentum: float = 0.5, epochs_per_round: int = 200,
                 select_rate: float = 0.25, neighbourhood_size: int = 1, ue: bool = True,
                 ue_weight_step: float = 0.2, ue_weight_every: int = 80, ue_exclude_self: bool = True,
                 aug_loss: bool = True, aug_temperature: float = 0.1, augment: str = "simclr",
                 augment_options: dict | None = None, knn_bank: str = "memory") -> None:
        super().__init__()
        if pretrained is not None:
            raise UserError("super_and learns its encoder from scratch: put it first in the pipeline")
        if knn_bank not in KNN_BANKS:
            raise UserError(f"super_and's knn_bank must be one of {', '.join(KNN_BANKS)}, got {knn_bank!r}")
        self.encoder = TwoTrunkEncoder(backbone, in_channels, image_size, embedding_dim, sobel, mean, std)
        self.memory = MemoryBank(embedding_dim, memory_momentum)
        self.augment = paper_augment(image_size, in_channels, augment, augment_options)
        self.temperature, self.aug_temperature = temperature, aug_temperature
        self.epochs_per_round, self.select_rate = epochs_per_round, select_rate
        self.neighbourhood_size = neighbourhood_size
        self.ue, self.ue_weight_step, self.ue_weight_every = ue, ue_weight_step, ue_weight_every
        self.ue_exclude_self, self.aug_loss = ue_exclude_self, aug_loss
        self.knn_source = knn_bank  # not `self.knn_bank`: that name is the evaluation hook
        self.ue_weight = 0.0
        # N×size bank rows of each sample's neighbourhood, −1 where the sample is not selected
        self.neighbours: Tensor | None = None
        self.neighbour_round = 0  # the round whose selection `neighbours` holds (0: none)

    # ---------------------------------------------------------------- rounds
    def check_train(self, train: TrainConfig) -> None:
        """Refuse (UserError) a stage schedule that the rounds would cut short, before it trains.

        The round length (`epochs_per_round`), the lr schedule's restarts and steps (`train.restart_every`,
        `step_start`/`step_size` or `milestones`) and the UE steps (`ue_weight_every`) are separate keys:
        changing only the first would train with the UE weight stuck at 0, or an lr that never drops, or
        restarts out of step with the rounds — silently. With more than one round the lr schedule must
        restart with each round, and a UE step or lr drop that the run is long enough to reach must fall
        inside a round. (Runs shorter than a schedule's first step, like the tiny test runs, may stop
        before it: that is a truncated run, not a cut one.)"""
        rounds = self.epochs_per_round
        two_fifths, fifth = max(1, round(0.4 * rounds)), max(1, round(0.2 * rounds))
        scaled = (f"for rounds of {rounds} epochs in the paper's proportions (UE steps at 80 and 160 of 200, lr drops "
                  f"at 120 and 160) set train.restart_every={rounds} train.step_start={two_fifths} "
                  f"train.step_size={fifth} method.ue_weight_every={two_fifths}")
        period = train.restart_every or train.epochs
        if train.epochs > rounds and period != rounds:
            raise UserError(f"super_and runs rounds of {rounds} epochs but the lr schedule restarts every {period}: "
                            f"{scaled}")
        if self.ue and rounds <= self.ue_weight_every < train.epochs:
            raise UserError(f"super_and's UE weight would stay 0: its first step (ue_weight_every "
                            f"{self.ue_weight_every}) comes after the round ends (epochs_per_round {rounds}); {scaled}"
                            f", or method.ue=false")
        first_drop = {"step": train.step_start + train.step_size,
                      "multistep": train.milestones[0] if train.milestones else None}.get(train.schedule)
        if first_drop is not None and rounds <= first_drop < train.epochs:
            raise UserError(f"super_and's lr would never drop: the schedule's first drop (epoch {first_drop}) "
                            f"comes after the round ends (epochs_per_round {rounds}); {scaled}")

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        n = len(ctx.store)
        if len(self.memory) == 0:
            self.memory.reset(n)
        if len(self.memory) != n:
            raise UserError(f"super_and's memory bank has {len(self.memory)} rows but the data has {n} images")
        if self.neighbours is None:
            self.neighbours = torch.full((n, self.neighbourhood_size), -1, dtype=torch.long,
                                         device=self.memory.memory.device)
        round_, epoch_in_round = divmod(epoch, self.epochs_per_round)
        if round_ >= 1 and round_ != self.neighbour_round:
            self.start_round(round_, ctx)
        self.ue_weight = self.ue_weight_step * (epoch_in_round // self.ue_weight_every) if self.ue else 0.0
        ctx.logs.update({"round": round_, "ue_weight": self.ue_weight,
                         "selected_fraction": float((self.neighbours[:, 0] >= 0).float().mean())})

    def start_round(self, round_: int, ctx: EpochContext) -> None:
        """Select ⌊select_rate·r·N⌋ anchors and their neighbourhoods from the bank; write the pairs."""
        memory = self.memory.memory
        count = min(len(memory), int(len(memory) * self.select_rate * round_))
        anchors, neighbours = select_neighbourhoods(memory, count, self.temperature, self.neighbourhood_size)
        self.neighbours = torch.full_like(self.neighbours, -1)
        self.neighbours[anchors] = neighbours
        self.neighbour_round = round_
        if ctx.run_dir is not None and distributed_info().is_main:
            pairs = torch.stack([anchors.repeat_interleave(self.neighbourhood_size), neighbours.flatten()], 1)
            (ctx.run_dir / "artefacts").mkdir(parents=True, exist_ok=True)
            torch.save(pairs.cpu(), ctx.run_dir / "artefacts" / f"round_{round_}_pairs.pt")

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        n = len(batch.indices)
        embeddings = self.encoder(torch.cat([self.augment(batch.images), self.augment(batch.images)]))  # 2n×D
        rows = batch.indices.repeat(2)
        bank_logits = self.memory.logits(embeddings, self.temperature)  # 2n×N
        # AND + w(t)·UE (Eq. 10–12) from one exponentiation of the bank logits
        loss, and_value, ue = bank_losses(bank_logits, rows, self.neighbours[rows], self.ue_weight, self.ue_exclude_self)
        logs = {"and": and_value}
        if self.ue_weight > 0:
            logs["ue"] = ue
        if self.aug_loss:
            # on the relationship vectors r_i = v_i·Mᵀ, each view's similarities to the whole bank (Eq. 2),
            # whose dot products are v_iᵀ·MᵀM·v_j: the same loss without the 2n×N vectors
            aug = isif_loss(embeddings[:n], embeddings[n:], self.aug_temperature, metric=self.memory.gram())
            loss, logs["aug"] = loss + aug, aug.detach()
        # one EMA write per sample per step (the code writes both views into one slot from the old
        # value, so one of them survives): the first view's
        self.memory.update(all_gather_tensor(batch.indices), all_gather_tensor(embeddings[:n].detach()))
        return loss, logs

    # ---------------------------------------------------------------- inference and state
    def embed(self, images: Tensor) -> Tensor:
        """The 128-d unit embedding v."""
        return predict_in_batches(self.encoder, images)

    def knn_bank(self) -> Tensor | None:
        """The memory bank (N×128, row i = training image i), which kNN evaluation scores test queries
        against: "memory bank as the training features" (VERIFIED-DETAILS.md, the released code's kNN).
        None with `knn_bank: embed`, or before training has filled the bank."""
        if self.knn_source != "memory" or len(self.memory) == 0:
            return None
        return self.memory.memory

    @torch.no_grad()
    def diagnostics(self, labels: Tensor, run_dir: Path | None) -> dict:
        """The per-round neighbourhood consistency (`round_consistency`), evaluation only. {} when `labels`
        does not describe the training store (its length is not the bank's). Files of rounds after the
        last one this method ran (left by an earlier, longer run in the same directory) are left out; a
        method loaded for evaluation alone does not know that round and scores every file."""
        if len(self.memory) and len(labels) != len(self.memory):
            return {}
        return round_consistency(labels, run_dir, self.neighbour_round)

    def state_for_checkpoint(self) -> dict:
        return {"neighbours": None if self.neighbours is None else self.neighbours.cpu(),
                "neighbour_round": self.neighbour_round}

    def load_state_from_checkpoint(self, state: dict) -> None:
        found = state.get("neighbours")
        self.neighbours = None if found is None else found.to(self.memory.memory.device)
        self.neighbour_round = int(state.get("neighbour_round", 0))


def round_consistency(labels: Tensor, run_dir: Path | None, last_round: int = 0) -> dict:
    """Neighbourhood consistency per round (the paper's Fig. 4), evaluation only: for round r ≥ 1, the
    fraction of the selected pairs (i, j) — anchor i and each neighbour j ∈ N(i), read from
    `run_dir/artefacts/round_<r>_pairs.pt` — whose labels agree, labels[i] = labels[j]. With one
    neighbour (the default) that is the fraction of selected samples whose nearest bank neighbour
    shares their class. `labels`: N int64, aligned with the training store; pairs with an unlabelled
    member (−1) do not count, and a round without a scorable pair is left out. `last_round` > 0 leaves
    out the files of later rounds. Returns {"neighbourhood_consistency": {"1": …, "2": …}}, or {} when
    no round file exists. Reads files only. TwoStageUC reports it too: its stage 1 writes the files into
    the same run directory."""
    if run_dir is None:
        return {}
    labels = labels.cpu()
    consistency = {}
    for path in (Path(run_dir) / "artefacts").glob("round_*_pairs.pt"):
        round_ = path.name[len("round_"):-len("_pairs.pt")]
        if not round_.isdigit() or 0 < last_round < int(round_):
            continue
        pairs = torch.load(path, map_location="cpu", weights_only=True)  # P×2: anchor, neighbour
        anchor, neighbour = labels[pairs[:, 0]], labels[pairs[:, 1]]
        known = (anchor >= 0) & (neighbour >= 0)  # −1 marks an unlabelled image
        if known.any():
            consistency[int(round_)] = float((anchor == neighbour)[known].float().mean())
    if not consistency:
        return {}
    return {"neighbourhood_consistency": {str(r): consistency[r] for r in sorted(consistency)}}
