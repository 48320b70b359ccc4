"""The Trainer: one loop for every method (DESIGN.md, "Trainer").

It knows only the `Method` interface: `on_epoch_start`, `training_step`, `cluster_logits`,
`parameter_groups` and the checkpoint hooks. It never sees labels: the store is stripped of them
before anything else happens.

Reproducibility and exact resume rest on one rule: at the start of every epoch, every random
number generator (torch CPU and CUDA, numpy, python `random`) is re-seeded from
(seed, stage, epoch, rank), and the epoch's permutation is drawn from a `torch.Generator` seeded from
(seed, stage, epoch). Checkpoints are written only at epoch ends, so the state a checkpoint would
have to capture is a pure function of numbers it already holds. This is exact for *every* DDP rank
(only rank 0 writes the checkpoint, so saved RNG states would cover rank 0 alone), and it survives
a change of GPU count or type. The learning-rate schedule is likewise a pure function of the global
step. A method's *own* generators are its state: return them from `state_for_checkpoint`.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
import zlib
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.config import StageConfig, TrainConfig
from labelless.data.stores import ImageStore
from labelless.errors import TimeLimitReached, TrainingDiverged, UserError
from labelless.methods.base import Batch, EpochContext, Method
from labelless.ranks import DistributedInfo, distributed_info  # noqa: F401  (torch-free; re-exported here)

CHECKPOINT_FORMAT = "labelless-checkpoint"
CHECKPOINT_VERSION = 1
COLLAPSE_FRACTION = 0.9  # one cluster holding more than this share of the sample → warning
COLLAPSE_SAMPLE = 2048  # images in the fixed sample the collapse check predicts on
STEPS_FOR_A_BAR_PER_EPOCH = 20  # shorter epochs share one progress bar that counts epochs


@dataclass
class Deadline:
    """A wall-clock limit for one call of a chain of time-limited calls (`--time-limit`).

    Checked at epoch ends only (checkpoints are exact there): a stage stops when the next epoch, taking
    as long as the last one did, would end after `at` (a `time.monotonic()` value); a stage not yet
    started stops before it starts once `at` has passed. Every call trains at least one epoch, so a
    chain always makes progress, even when one epoch is longer than the limit.
    """

    at: float
    trained: bool = False  # an epoch has been trained under this deadline

    @classmethod
    def after(cls, seconds: float, start: float | None = None) -> Deadline:
        return cls((time.monotonic() if start is None else start) + seconds)

    def allows(self, seconds: float) -> bool:
        """Whether work expected to take `seconds` may start now."""
        return not self.trained or time.monotonic() + seconds <= self.at


class CollapseWarning(UserWarning):
    """Most images fall into one cluster: a degenerate solution the clustering loss failed to prevent."""


def broadcast_from_rank_0(*tensors: Tensor) -> None:
    """Overwrite `tensors` in place with rank 0's under DDP (e.g. a per-epoch labelling drawn from each
    rank's own RNG); nothing outside DDP."""
    if _distributed():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def rank_0_value(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank under DDP, so that a choice each rank could
    make differently (K from an embedding whose BatchNorm statistics are per rank) is made once;
    `value` itself outside DDP."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def end_distributed() -> bool:
    """After a `torchrun` job's last collective: wait for every rank, tear the process group down (no
    rank leaves while a peer is still in a collective), and say whether this process is rank 0 — the
    one that evaluates, writes the run's files and prints. True outside DDP."""
    if _distributed():
        dist.barrier()
        dist.destroy_process_group()
    return distributed_info().is_main


def all_gather_tensor(x: Tensor) -> Tensor:
    """`x` from every rank, concatenated along dim 0 in rank order; `x` itself outside DDP.

    For methods that update a memory bank or queue with the whole global batch. No gradient flows
    through it. Every rank must pass the same shape, which the Trainer guarantees for batches.
    """
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' → CUDA when available, else CPU; a CUDA request without a GPU, or a name torch does not
    know ('foo', 'cuda:x'), is a user error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device '{device}' is not a device name: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' was asked for, but torch sees no CUDA GPU: use --device cpu")
    return resolved


# ----------------------------------------------------------------------------- schedule


def lr_factor(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of `train.lr` at global `step` (0-based): linear warm-up, then the schedule.

    Cosine decays per step; step and multistep change at epoch boundaries. With `restart_every`,
    the whole schedule (warm-up included) restarts every that many epochs.
    """
    period = train.restart_every or train.epochs
    step %= period * steps_per_epoch
    epoch = step // steps_per_epoch
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if train.schedule == "cosine":
        progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, period * steps_per_epoch - warmup_steps)))
        decay = train.min_lr_factor + (1 - train.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif train.schedule == "step":
        # lr·γ^⌊(epoch − start)/size⌋ from `step_start` on: TwoStageUC's code (start 80, size 40, γ 0.1),
        # whose first drop is at epoch 120; start 0 gives torch's StepLR.
        decay = train.gamma ** ((epoch - train.step_start) // train.step_size) if epoch >= train.step_start else 1.0
    elif train.schedule == "multistep":
        decay = train.gamma ** sum(epoch >= milestone for milestone in train.milestones)
    else:
        decay = 1.0
    return warmup * decay


# ----------------------------------------------------------------------------- optimisers


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017, "Large Batch Training of
    Convolutional Networks"): each weight tensor's update (∇L + λw) is scaled by η‖w‖ / (‖∇L‖ + λ‖w‖).

    As in SimCLR and solo-learn, 1-d tensors (biases, normalisation scales and shifts) skip the
    trust ratio: their norms say nothing about a sensible step size.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      nesterov=nesterov, eps=eps))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=decay)
                if p.ndim > 1:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    trust = group["eta"] * w_norm / (g_norm + decay * w_norm + group["eps"])
                    # A zero weight (fresh init) or zero gradient leaves the plain SGD step.
                    update.mul_(torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust)))
                if momentum:
                    buffer = self.state[p].get("momentum_buffer")
                    if buffer is None:
                        buffer = self.state[p]["momentum_buffer"] = update.clone()
                    else:
                        buffer.mul_(momentum).add_(update)
                    update = update.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                p.add_(update, alpha=-group["lr"])
        return loss


def optimizer_groups(method: Method, train: TrainConfig) -> list[dict]:
    """The method's parameter groups with `lr_scale` applied and, when configured, weight decay
    removed from 1-d tensors (biases and norm parameters, whatever module holds them — timm's rule).
    """
    groups = []
    for group in method.parameter_groups():
        group = dict(group)
        if "lr" in group:
            raise ValueError("a parameter group sets 'lr': set 'lr_scale' (a multiplier of train.lr) instead")
        params = [p for p in group.pop("params") if p.requires_grad]
        scale = float(group.pop("lr_scale", 1.0))
        weight_decay = group.pop("weight_decay", train.weight_decay)
        if train.exclude_norm_bias_from_weight_decay:
            parts = [([p for p in params if p.ndim > 1], weight_decay), ([p for p in params if p.ndim <= 1], 0.0)]
        else:
            parts = [(params, weight_decay)]
        for part, part_decay in parts:
            if part:
                groups.append({**group, "params": part, "weight_decay": part_decay, "lr_scale": scale,
                               "lr": train.lr * scale})
    if not groups:
        raise UserError(f"method '{_method_name(method)}' has no trainable parameters: nothing to train")
    return groups


def build_optimizer(groups: list[dict], train: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser over `groups` (from `optimizer_groups`)."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr, betas=train.betas)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)
    return LARS(groups, lr=train.lr, momentum=train.momentum, eta=train.lars_eta, nesterov=train.nesterov)


class WeightEMA:
    """Exponential moving average of the trainable parameters: ema ← d·ema + (1 − d)·w after each step.

    Own class rather than `torch.optim.swa_utils.AveragedModel`, which deep-copies the whole module:
    that would duplicate memory banks and average buffers whose average means nothing. Buffers are
    always taken from the live model.
    """

    def __init__(self, method: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, p in method.named_parameters() if p.requires_grad]
        named = dict(method.named_parameters())
        self.params = [named[name] for name in self.names]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(state[name])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, shadow in zip(self.params, self.shadow):
            p.copy_(shadow)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA's weights in the model for the duration — what the stage would return if it ended
        now — and the live weights back, bit for bit, afterwards."""
        live = [p.detach().clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in zip(self.params, live):
                    p.copy_(weights)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save, atomically: a crash leaves the previous checkpoint or the new one, never a torn file."""
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, stage: str, method_name: str) -> dict:
    """A checkpoint of this stage and method, or a UserError saying why the file cannot be used.

    `weights_only=True`: a checkpoint is data (tensors and plain containers), never code to run.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated, foreign or malicious files
        raise UserError(f"checkpoint {path} is unreadable ({type(error).__name__}: truncated, corrupt or not a "
                        f"labelless checkpoint); delete it to restart the stage") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a labelless checkpoint (no format marker); delete it to restart the stage")
    if state.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"checkpoint {path} has format version {state.get('version')}; "
                        f"this labelless reads version {CHECKPOINT_VERSION}")
    if state.get("stage") != stage or state.get("method_name") != method_name:
        raise UserError(f"checkpoint {path} belongs to stage '{state.get('stage')}' (method "
                        f"'{state.get('method_name')}'), not stage '{stage}' (method '{method_name}')")
    return state


def more_epochs_than_asked(stage: str, trained: int, asked: int, path: Path) -> UserError:
    """Resuming a stage whose checkpoint has more epochs than the config asks would keep the longer-trained
    model while the run records the shorter count."""
    return UserError(f"--resume: stage '{stage}' has trained {trained} epochs in {path}, more than the {asked} "
                     f"asked: use another --run-dir, or ask for at least {trained}")


def export_weights(method: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """method.state_dict() as safetensors (contiguous, unshared CPU copies: safetensors refuses views)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in method.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _atomic_write(path: Path, write: Any) -> None:
    """Write to a temp file in the same directory, fsync it, then os.replace (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _check_plain(value: Any, where: str) -> None:
    """Refuse at save time what `torch.load(weights_only=True)` would refuse at resume time."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (Tensor, str, int, float, bool))):
        raise TypeError(f"{where} is a {type(value).__name__}: checkpoints hold only tensors, numbers, "
                        f"strings and lists/dicts of them")


# ----------------------------------------------------------------------------- data order and seeds


def steps_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Optimiser steps in one epoch (the same on every rank); see `epoch_batches`."""
    full, remainder = divmod(n, batch_size)
    return full + int(not drop_last and remainder // world_size > 0)


def epoch_batches(n: int, batch_size: int, generator_seed: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = True, device: torch.device | None = None) -> list[Tensor]:
    """This rank's row indices for one epoch, one tensor per step.

    Global batches of `batch_size` rows are cut from one permutation that every rank draws alike;
    rank r takes the r-th contiguous 1/W of each, so W ranks together see exactly the rows one
    process would. A short last batch (drop_last false) is cut to a multiple of W so that every rank
    takes the same number of steps — otherwise DDP's collective calls would hang.

    Drawn on the CPU (the same permutation on any device), moved to `device` in one copy; the
    batches are views of it.
    """
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(generator_seed)).to(device)
    batches = []
    for i in range(steps_per_epoch(n, batch_size, world_size, drop_last)):
        rows = permutation[i * batch_size:(i + 1) * batch_size]
        local = len(rows) // world_size
        batches.append(rows[rank * local:(rank + 1) * local])
    return batches


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (numpy's SeedSequence: nearby inputs give unrelated streams)."""
    low, high = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(high) << 31) ^ int(low)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds every CUDA device too
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def takes_labels(method_class: type[Method]) -> bool:
    """Whether a method can train in weakly-supervised mode: it has cluster heads (`labelled_logits`)."""
    return method_class.labelled_logits is not Method.labelled_logits


def labels_refused(stage: str, method: str) -> UserError:
    # imported here: the registry imports every method, and one of them (super_and) imports this module
    from labelless.registry import METHODS

    able = ", ".join(name for name, cls in METHODS.items() if takes_labels(cls))
    return UserError(f"stage '{stage}': method '{method}' has no cluster head to train on labels, so it cannot "
                     f"run with labelled_fraction (these can: {able})")


def _method_name(method: Method) -> str:
    return getattr(method, "name", type(method).__name__)


# ----------------------------------------------------------------------------- the trainer


class _StepModule(nn.Module):
    """Makes `training_step` the forward of a module, so DDP and torch.compile can wrap it: DDP hooks
    its gradient all-reduce into the backward of whatever its forward returned."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, labelled: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
        loss, logs = self.method.training_step(batch)
        if labelled is None:
            return loss, logs
        # weakly-supervised mode: cross-entropy of every head on a batch of labelled images
        images, labels = labelled
        heads = self.method.labelled_logits(images)
        cross_entropy = torch.stack([F.cross_entropy(logits.float(), labels) for logits in heads]).mean()
        return loss + cross_entropy, {**logs, "labelled_ce": cross_entropy.detach()}


class Trainer:
    """Trains one stage (one method) on one ImageStore; writes logs and checkpoints under `run_dir`.

    Files: `metrics.jsonl` (one line per epoch, tagged with the stage, shared by a pipeline's stages),
    `tb/<stage>/` (TensorBoard), `checkpoints/<stage>.pt` (full state) and, at the end,
    `checkpoints/<stage>.safetensors` (weights only). The stages of a pipeline share one `run_dir`.

    Under `torchrun` (WORLD_SIZE > 1) the process group is initialised here (NCCL on CUDA, gloo on
    CPU), `train.batch_size` is the *global* batch, and only rank 0 writes files.
    """

    def __init__(self, stage: StageConfig, store: ImageStore, run_dir: str | Path,
                 device: str | torch.device = "auto", seed: int = 0, *, progress: bool = True,
                 tensorboard: bool = True, on_epoch_end: Callable[[str, int, Method], None] | None = None,
                 labels: Tensor | None = None, deadline: Deadline | None = None):
        """`on_epoch_end(stage name, epoch, method)` runs after every epoch, before its checkpoint: an
        observer (the time-to-accuracy benchmark's evaluation-only curve); it must not train. It sees the
        method in eval mode (train mode is restored after), and with an EMA the EMA's weights: what the
        stage would return if it ended there.
        `labels` (weakly-supervised mode, `labelled_fraction`): one per store row, −1 where unlabelled.
        Every step then adds the cross-entropy of the method's heads on a random batch of the labelled
        rows (`Method.labelled_logits`); a `uses_labels` stage (the supervised reference) sees only these
        labels in its batches, so it trains on the labelled part alone. With a `deadline`, `fit` raises
        TimeLimitReached at the first epoch end where the next epoch would not fit, after checkpointing."""
        self.stage, self.train, self.seed, self.deadline = stage, stage.train, seed, deadline
        self.on_epoch_end = on_epoch_end
        self.run_dir = Path(run_dir)
        self.progress, self.tensorboard = progress, tensorboard
        self.dist = distributed_info()
        if self.train.batch_size % self.dist.world_size:
            raise UserError(f"train.batch_size {self.train.batch_size} does not split over "
                            f"{self.dist.world_size} processes: use a multiple of {self.dist.world_size}")
        self.device = self._init_device(device)
        self.store = store.without_labels().to(self.device)  # once: every batch is then an index gather
        # Labels reach a batch only when the stage asks for them (`method.uses_labels: true`: the
        # supervised reference, weakly-supervised runs); the config, saved in the run, records it.
        self.labels = None
        self.labelled_rows: Tensor | None = None  # weakly-supervised mode: rows whose label a step may use
        if labels is not None:
            if len(labels) != len(store):
                raise ValueError(f"{len(labels)} partial labels for {len(store)} images")
            self.labels = labels.long().to(self.device)
            if not stage.method.get("uses_labels"):
                self.labelled_rows = torch.nonzero(self.labels >= 0).flatten()
        elif stage.method.get("uses_labels"):
            if store.labels is None:
                raise UserError(f"stage '{stage.name}' sets uses_labels but the dataset has no labels")
            self.labels = store.labels.to(self.device)
        self.steps_per_epoch = steps_per_epoch(len(self.store), self.train.batch_size, self.dist.world_size,
                                               self.train.drop_last)
        if self.steps_per_epoch == 0:
            fits = 1 << max(0, len(self.store).bit_length() - 1)  # the largest power of two up to the image count
            raise UserError(f"the dataset has {len(self.store)} images, less than one batch of "
                            f"{self.train.batch_size}: lower it, e.g. --set train.batch_size={fits}")
        self.checkpoint_path = self.run_dir / "checkpoints" / f"{stage.name}.pt"
        self.weights_path = self.run_dir / "checkpoints" / f"{stage.name}.safetensors"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._stage_key = zlib.crc32(stage.name.encode())  # stages of one run get unrelated streams
        sample = torch.randperm(len(self.store), generator=torch.Generator().manual_seed(derived_seed(seed, 2)))
        self._collapse_rows = sample[:COLLAPSE_SAMPLE].sort().values.to(self.device)

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _init_device(self, device: str | torch.device) -> torch.device:
        resolved = resolve_device(device)
        if self.dist.world_size == 1:
            return resolved
        if resolved.type == "cuda":
            resolved = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        return resolved

    def fit(self, method: Method, resume: bool = False) -> Method:
        """Train `method` for `train.epochs` epochs (or the rest of them, from `checkpoints/<stage>.pt`).

        Returns the method itself. With `ema_decay` set, its weights are the EMA's at the end, and so
        are the exported weights and anything evaluated afterwards; the checkpoint keeps both, so a resumed
        run continues from the live weights. Resuming a finished stage just restores it.
        """
        if self.labelled_rows is not None and not takes_labels(type(method)):
            raise labels_refused(self.stage.name, _method_name(method))
        method.to(self.device)
        if self._cuda and self.train.channels_last:
            method.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(optimizer_groups(method, self.train), self.train)
        ema = WeightEMA(method, self.train.ema_decay) if self.train.ema_decay is not None else None
        epoch, step = self._restore(method, optimizer, ema) if resume else (0, 0)
        if epoch < self.train.epochs and self._out_of_time(0.0):
            raise TimeLimitReached(self.stage.name, epoch, self.train.epochs, self.checkpoint_path)
        step_fn = self._step_function(method)
        log = _RunLog(self, first_epoch=epoch, first_step=step)
        # Epochs of a few steps (a small folder trains hundreds of them) share one bar counting epochs;
        # longer epochs get a bar each, counting steps.
        stage_bar = self._progress_bar(epoch, self.train.epochs, "epoch") \
            if self.steps_per_epoch < STEPS_FOR_A_BAR_PER_EPOCH and epoch < self.train.epochs else None
        try:
            clock = _StageClock(self.steps_per_epoch * (self.train.epochs - epoch))
            for epoch in range(epoch, self.train.epochs):
                started = time.monotonic()
                step = self._run_epoch(epoch, step, method, step_fn, optimizer, ema, log, clock, stage_bar)
                if self.on_epoch_end is not None and self.dist.is_main:
                    with ema.swapped_in() if ema is not None else nullcontext():
                        method.eval()  # the observer evaluates: BatchNorm statistics and dropout stay untouched
                        self.on_epoch_end(self.stage.name, epoch, method)
                    method.train()
                done = epoch + 1
                if self.deadline is not None:
                    self.deadline.trained = True
                stop = done < self.train.epochs and self._out_of_time(time.monotonic() - started)
                if done % self.train.checkpoint_every == 0 or done == self.train.epochs or stop:
                    self._save(method, optimizer, ema, done, step)
                if stop:
                    raise TimeLimitReached(self.stage.name, done, self.train.epochs, self.checkpoint_path)
        finally:
            log.close()
            if stage_bar is not None:
                stage_bar.close()
        if ema is not None:
            ema.copy_to_model()
        if self.dist.is_main:
            export_weights(method, self.weights_path,
                           {"stage": self.stage.name, "method": _method_name(method), "ema": str(ema is not None)})
        return method

    def _step_function(self, method: Method) -> Any:
        if self.dist.world_size > 1:
            module: nn.Module = nn.parallel.DistributedDataParallel(
                _StepModule(method), device_ids=[self.device.index] if self._cuda else None,
                # Buffers are rank 0's once, when DDP wraps the method, and per rank after that:
                # broadcasting a memory bank every step would cost more than the step. Methods keep banks
                # consistent with `all_gather_tensor`. (`forward_sync_buffers` replaces the deprecated
                # `broadcast_buffers`, which warned on every rank of every run.)
                forward_sync_buffers=False, find_unused_parameters=self.train.find_unused_parameters)
        else:
            module = _StepModule(method)
        if self.train.compile:
            if not self._cuda:
                warnings.warn("train.compile is ignored on CPU (it only pays off on a GPU)", stacklevel=3)
                return module
            return torch.compile(module)
        return module

    def _autocast(self) -> AbstractContextManager:
        if self._cuda and self.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _run_epoch(self, epoch: int, step: int, method: Method, step_fn: Any, optimizer: torch.optim.Optimizer,
                   ema: WeightEMA | None, log: _RunLog, clock: _StageClock, stage_bar: Any = None) -> int:
        """One epoch; returns the global step after it. Its progress goes to a bar of its own, or, when
        `stage_bar` is given (a bar counting the stage's epochs), to that one at the epoch's end."""
        train, spe = self.train, self.steps_per_epoch
        started = time.perf_counter()
        _seed_everything(derived_seed(self.seed, self._stage_key, epoch, 1, self.dist.rank))
        ctx = EpochContext(epoch, train.epochs, self.store, self.device, train.batch_size, self.run_dir)
        method.on_epoch_start(epoch, ctx)
        method.train()
        batches = epoch_batches(len(self.store), train.batch_size, derived_seed(self.seed, self._stage_key, epoch, 0),
                                self.dist.rank, self.dist.world_size, train.drop_last, self.device)
        losses = torch.zeros(len(batches), device=self.device)  # kept on the device: no sync per step
        means = _Means()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        bar = self._progress_bar(epoch, len(batches)) if stage_bar is None else _NO_BAR
        steps_started, checked = time.perf_counter(), 0
        try:
            for i, rows in enumerate(batches):
                loss, logs = self._train_step(step, rows, step_fn, optimizer, params, ema)
                losses[i] = loss
                means.add(logs)
                step += 1
                if (i + 1) % train.log_every == 0 or i + 1 == len(batches):
                    window_loss = self._check_finite(losses, checked, i + 1, epoch, step)
                    clock.advance(i + 1 - checked)
                    seen = (i + 1) * len(rows) * self.dist.world_size
                    bar.update(i + 1 - checked)
                    bar.set_postfix(loss=f"{window_loss:.4f}", eta=clock.eta(),
                                    img_s=f"{seen / (time.perf_counter() - steps_started):,.0f}")
                    log.step(step, {"loss": window_loss, "lr": train.lr * lr_factor(train, step - 1, spe)})
                    checked = i + 1
        finally:
            bar.close()
        step_seconds = time.perf_counter() - steps_started
        line: dict[str, Any] = {"stage": None, "epoch": None, "step": None}  # first in every JSON line
        line.update(means.result())
        line.update({key: float(value) for key, value in ctx.logs.items()})
        line.update({  # the trainer's own keys win over a method log of the same name
            "stage": self.stage.name, "epoch": epoch, "step": step,
            "loss": self._mean_over_ranks(losses.mean()),
            "lr": train.lr * lr_factor(train, step - 1, spe),  # at the epoch's last step
            "img_per_s": sum(len(rows) for rows in batches) * self.dist.world_size / step_seconds,
        })
        if self.dist.is_main:
            self._check_collapse(method, epoch, line)
        line["seconds"] = time.perf_counter() - started
        log.epoch(line)
        if stage_bar is not None:
            stage_bar.update(1)
            stage_bar.set_postfix(loss=f"{line['loss']:.4f}", eta=clock.eta())
        return step

    def _train_step(self, step: int, rows: Tensor, step_fn: Any, optimizer: torch.optim.Optimizer,
                    params: list[Tensor], ema: WeightEMA | None) -> tuple[Tensor, dict[str, Any]]:
        """One optimiser step at global `step` on store rows `rows`; returns the detached loss and logs."""
        factor = lr_factor(self.train, step, self.steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = self.train.lr * group["lr_scale"] * factor
        labelled = None
        if self.labelled_rows is not None:
            size = min(self.train.batch_size, len(self.labelled_rows))
            pick = self.labelled_rows[torch.randint(len(self.labelled_rows), (size,), device=self.device)]
            labelled = (self.store.batch(pick), self.labels[pick])
        with self._autocast():
            labels = self.labels[rows] if self.labels is not None else None
            batch = Batch(self.store.batch(rows), rows, labels)
            loss, logs = step_fn(batch) if labelled is None else step_fn(batch, labelled)
        if loss.ndim != 0:
            raise ValueError(f"training_step returned a loss of shape {tuple(loss.shape)}, not a scalar")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.train.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update()
        return loss.detach(), logs

    def _check_finite(self, losses: Tensor, start: int, end: int, epoch: int, step: int) -> float:
        """Mean loss of steps [start, end) of the epoch, or TrainingDiverged naming the first bad step.

        Checked every `log_every` steps rather than every step: one device sync per window. The flag is
        max-reduced over ranks so that every rank stops at the same window instead of hanging.
        """
        window = losses[start:end]
        bad = ~torch.isfinite(window)
        flag = bad.any().float().reshape(1)
        if _distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            local_bad = bad.nonzero()
            first = start + (int(local_bad[0]) if len(local_bad) else len(window) - 1)
            global_step = step - end + first
            raise TrainingDiverged(self.stage.name, epoch, global_step, first, float(losses[first]),
                                   self.checkpoint_path)
        return float(window.mean())

    def _out_of_time(self, next_seconds: float) -> bool:
        """Whether the deadline forbids work of `next_seconds`; rank 0 decides for every rank."""
        if self.deadline is None:
            return False
        flag = torch.tensor([0.0 if self.deadline.allows(next_seconds) else 1.0], device=self.device)
        broadcast_from_rank_0(flag)
        return bool(flag.item())

    def _mean_over_ranks(self, value: Tensor) -> float:
        if _distributed():
            value = value.clone()
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return float(value)

    def _check_collapse(self, method: Method, epoch: int, line: dict) -> None:
        """Share of the largest predicted cluster on a fixed sample; warn above COLLAPSE_FRACTION.

        A fixed, unaugmented sample makes the number comparable across epochs, and costs one forward
        pass over at most COLLAPSE_SAMPLE images per epoch.
        """
        method.eval()
        predictions = []
        try:
            for chunk in self._collapse_rows.split(self.train.batch_size):
                with torch.no_grad(), self._autocast():
                    logits = method.cluster_logits(self.store.batch(chunk))
                if logits is None:  # a pure embedding method: nothing to check
                    return
                predictions.append(logits.argmax(dim=1))
        finally:
            method.train()
        fraction = float(torch.bincount(torch.cat(predictions)).max()) / len(self._collapse_rows)
        line["largest_cluster_fraction"] = fraction
        if fraction > COLLAPSE_FRACTION:
            line["warning"] = "collapse"
            warnings.warn(f"stage '{self.stage.name}' epoch {epoch}: {fraction:.0%} of a fixed sample of "
                          f"{len(self._collapse_rows)} images fall in one cluster; the clustering may be "
                          f"collapsing", CollapseWarning, stacklevel=4)  # points at the caller of fit()

    def _progress_bar(self, epoch: int, total: int, unit: str = "step") -> Any:
        """A bar over epoch `epoch`'s `total` steps, or (unit "epoch") over the stage's `total` epochs,
        starting at `epoch` (a resumed stage)."""
        from tqdm import tqdm

        enabled = self.progress and self.dist.is_main and sys.stderr.isatty()
        if unit == "step":
            return tqdm(total=total, desc=f"{self.stage.name} {epoch + 1}/{self.train.epochs}", unit=unit,
                        disable=not enabled, dynamic_ncols=True)
        return tqdm(total=total, initial=epoch, desc=self.stage.name, unit=unit, disable=not enabled,
                    dynamic_ncols=True)

    def _save(self, method: Method, optimizer: torch.optim.Optimizer, ema: WeightEMA | None, epochs_done: int,
              step: int) -> None:
        if not self.dist.is_main:
            return
        method_state = method.state_for_checkpoint()
        _check_plain(method_state, f"{type(method).__name__}.state_for_checkpoint()")
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "stage": self.stage.name, "method_name": _method_name(method),
            "epoch": epochs_done, "global_step": step,  # epoch = epochs completed = the next one to run
            "seed": self.seed, "world_size": self.dist.world_size, "train": asdict(self.train),
            "model": method.state_dict(), "method_state": method_state,
            "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        }, self.checkpoint_path)

    def _restore(self, method: Method, optimizer: torch.optim.Optimizer, ema: WeightEMA | None) -> tuple[int, int]:
        """Load the stage checkpoint into the method, optimiser and EMA; returns (next epoch, global step)."""
        if not self.checkpoint_path.is_file():
            raise UserError(f"nothing to resume: {self.checkpoint_path} does not exist "
                            f"(start the stage without resume)")
        state = load_checkpoint(self.checkpoint_path, self.stage.name, _method_name(method))
        if int(state["epoch"]) > self.train.epochs:  # the model would keep them while the run said fewer
            raise more_epochs_than_asked(self.stage.name, int(state["epoch"]), self.train.epochs, self.checkpoint_path)
        try:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
            first_line = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [type(error).__name__])[0]
            raise UserError(f"checkpoint {self.checkpoint_path} does not fit this method (other settings?): "
                            f"{first_line}") from None
        method.load_state_from_checkpoint(state["method_state"])
        if ema is not None:
            if state["ema"] is None:
                warnings.warn("the checkpoint has no EMA (ema_decay was off): the EMA restarts from the weights",
                              stacklevel=3)
            else:
                ema.load_state_dict(state["ema"])
        self._warn_if_changed(state)
        return int(state["epoch"]), int(state["global_step"])

    def _warn_if_changed(self, state: dict) -> None:
        """Resuming under other settings is allowed (e.g. more epochs) but is no longer an exact resume."""
        changed = [key for key, value in asdict(self.train).items() if state["train"].get(key) != value]
        if state["seed"] != self.seed:
            changed.append("seed")
        if state["world_size"] != self.dist.world_size:
            changed.append("world_size")
        if changed:
            warnings.warn(f"resuming stage '{self.stage.name}' with changed {', '.join(changed)}: the run is no "
                          f"longer an exact continuation", stacklevel=3)


class _NoBar:
    """Stands in for an epoch's bar while the stage's bar counts epochs."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


_NO_BAR = _NoBar()


class _Means:
    """Epoch means of the scalar logs a method returns; tensor values are summed on the device, so
    logging costs no synchronisation per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict[str, Any]) -> None:
        for key, value in logs.items():
            value = value.detach().float() if isinstance(value, Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        return {key: float(total) / self.counts[key] for key, total in self.sums.items()}


class _StageClock:
    """ETA of the whole stage from the steps done so far in this process."""

    def __init__(self, total_steps: int):
        self.total, self.done, self.started = total_steps, 0, time.perf_counter()

    def advance(self, steps: int) -> None:
        self.done += steps

    def eta(self) -> str:
        seconds = (time.perf_counter() - self.started) / max(1, self.done) * (self.total - self.done)
        minutes, seconds = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{seconds:02d}"


class _RunLog:
    """metrics.jsonl (one JSON object per epoch) and TensorBoard scalars; written by rank 0 only."""

    def __init__(self, trainer: Trainer, first_epoch: int, first_step: int):
        self.enabled = trainer.dist.is_main
        self.stage = trainer.stage.name
        self.path = trainer.metrics_path
        self.writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_stale_lines(first_epoch)
        if trainer.tensorboard:
            # purge_step: TensorBoard hides this stage's events from `first_step` on that an earlier
            # (crashed or repeated) run left behind.
            self.writer = _summary_writer(trainer.run_dir / "tb" / self.stage, first_step)

    def _drop_stale_lines(self, first_epoch: int) -> None:
        """Remove this stage's lines from `first_epoch` on: left by a run that died after the checkpoint
        we start from (or by an earlier run, when starting afresh), they would be duplicated."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if not _is_stale(line, self.stage, first_epoch)]
        if len(kept) != len(lines):
            _atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept),
                                                                      encoding="utf-8"))

    def epoch(self, line: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        if self.writer is not None:
            for key, value in line.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"epoch/{key}", value, line["step"])
            self.writer.add_scalar("epoch/epoch", line["epoch"], line["step"])

    def step(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _is_stale(line: str, stage: str, first_epoch: int) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return True  # a line torn by a crash mid-write
    return record.get("stage") == stage and record.get("epoch", -1) >= first_epoch


def _summary_writer(log_dir: Path, purge_step: int) -> Any:
    """A TensorBoard SummaryWriter, imported lazily (slow import); None with a warning if unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: TensorBoard logs are skipped (metrics.jsonl has everything)",
                      stacklevel=3)
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)
