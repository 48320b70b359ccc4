"""The Trainer on a tiny linear method over 4×4 images (CPU, seconds): logs, checkpoints, exact resume,
divergence, collapse warning, schedules, optimisers, data order and DDP parity."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from labelless.config import StageConfig, TrainConfig
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.base import Batch, EpochContext, Method
from labelless.errors import TimeLimitReached
from labelless.train import (LARS, CollapseWarning, Deadline, Trainer, TrainingDiverged, all_gather_tensor,
                             build_optimizer, distributed_info, end_distributed, epoch_batches, lr_factor,
                             optimizer_groups, rank_0_value, save_checkpoint)
from labelless.cli import main


def make_store(n: int = 64) -> ImageStore:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 4, 4, 1), dtype=torch.uint8, generator=generator)
    return ImageStore(images, labels=torch.arange(n) % 3)  # labels present: the trainer must strip them


def pixels(images: Tensor) -> Tensor:
    return images.flatten(1) - 0.5  # centred, so that no output dominates every argmax


class TinyMethod(Method):
    """A linear map of the 16 pixels regressed onto a fixed random linear "teacher" of the clean
    pixels, with input noise drawn from the global torch RNG (so exact resume needs the RNG stream)."""

    name = "tiny"

    def __init__(self, n: int = 64, k: int = 3, noise: float = 0.1):
        super().__init__()
        self.linear = nn.Linear(16, k)
        self.register_buffer("teacher", torch.randn(16, k, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("seen", torch.zeros(n))  # a buffer the step mutates, like a memory bank
        self.noise = noise
        self.epochs_started: list[int] = []

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        assert batch.labels is None
        x = pixels(batch.images)
        target = x @ self.teacher
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        self.seen[batch.indices] += 1
        output = self.linear(x)
        return F.mse_loss(output, target), {"output_mean": output.mean().detach()}

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        assert ctx.store.labels is None
        self.epochs_started.append(epoch)
        ctx.logs["bank_rows_seen"] = float((self.seen > 0).sum())

    def embed(self, images: Tensor) -> Tensor:
        return self.linear(pixels(images))

    def cluster_logits(self, images: Tensor) -> Tensor | None:
        return self.linear(pixels(images))

    def state_for_checkpoint(self) -> dict:
        return {"epochs_started": list(self.epochs_started)}

    def load_state_from_checkpoint(self, state: dict) -> None:
        self.epochs_started = list(state["epochs_started"])


class CrashingMethod(TinyMethod):
    """Dies at the start of `crash_at`, as a killed job would."""

    def __init__(self, crash_at: int, **kwargs):
        super().__init__(**kwargs)
        self.crash_at = crash_at

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        if epoch == self.crash_at:
            raise KeyboardInterrupt
        super().on_epoch_start(epoch, ctx)


class DivergingMethod(TinyMethod):
    """Returns a NaN loss from global step `nan_at` on; remembers the checkpoint bytes seen at epoch 1."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.nan_at, self.steps, self.checkpoint_bytes = nan_at, 0, b""

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        if epoch == 1:
            self.checkpoint_bytes = (ctx.run_dir / "checkpoints" / "tiny.pt").read_bytes()

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss, logs = super().training_step(batch)
        self.steps += 1
        return (loss * float("nan") if self.steps > self.nan_at else loss), logs


class CollapsedMethod(TinyMethod):
    def cluster_logits(self, images: Tensor) -> Tensor | None:
        logits = torch.zeros(len(images), 3)
        logits[:, 0] = 1.0
        return logits


def stage(name: str = "tiny", **train: object) -> StageConfig:
    defaults = dict(epochs=4, batch_size=16, optimizer="sgd", lr=0.1, weight_decay=1e-4, schedule="constant",
                    checkpoint_every=1, log_every=2)
    return StageConfig(name=name, method={"name": "tiny"}, train=TrainConfig(**{**defaults, **train}))


def fit(method: Method, run_dir: Path, config: StageConfig | None = None, n: int = 64, resume: bool = False,
        **kwargs: object) -> Method:
    trainer = Trainer(config or stage(), make_store(n), run_dir, "cpu", seed=7, progress=False,
                      tensorboard=kwargs.pop("tensorboard", False))
    return trainer.fit(method, resume=resume)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores shared by several workers: intra-op threads would only fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_loss_decreases_and_every_epoch_is_logged(tmp_path):
    torch.manual_seed(0)
    method = fit(TinyMethod(), tmp_path, stage(epochs=6), tensorboard=True)
    lines = metrics(tmp_path)
    assert [line["epoch"] for line in lines] == list(range(6)) and lines[-1]["step"] == 6 * 4
    assert lines[-1]["loss"] < 0.7 * lines[0]["loss"]
    expected = {"stage", "epoch", "step", "loss", "lr", "img_per_s", "seconds", "output_mean", "bank_rows_seen",
                "largest_cluster_fraction"}
    assert expected <= set(lines[0]) and "warning" not in lines[0]
    assert lines[1]["bank_rows_seen"] == 64  # the method's ctx.logs reach the line
    exported = load_file(tmp_path / "checkpoints" / "tiny.safetensors")
    assert exported.keys() == method.state_dict().keys()
    assert all(torch.equal(exported[key], value) for key, value in method.state_dict().items())
    assert any((tmp_path / "tb" / "tiny").iterdir())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["tiny.pt", "tiny.safetensors"]  # no temp file left


def test_resume_after_a_crash_is_exact(tmp_path):
    """4 epochs straight == 2 epochs, crash, new Trainer and method resumed to 4: bit-identical weights,
    including the noise drawn from the global RNG, the warm-up + cosine schedule, momentum and EMA."""
    config = stage(epochs=4, schedule="cosine", warmup_epochs=1, nesterov=True, ema_decay=0.9, checkpoint_every=2)
    torch.manual_seed(0)
    straight = fit(TinyMethod(), tmp_path / "straight", config)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after the epoch-2 line, before its checkpoint
        fit(CrashingMethod(crash_at=3), tmp_path / "resumed", config)
    torch.manual_seed(123)  # a differently initialised method and a disturbed global RNG
    torch.rand(5)
    resumed = fit(TinyMethod(), tmp_path / "resumed", config, resume=True)

    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.epochs_started == straight.epochs_started == [0, 1, 2, 3]
    losses = [(line["epoch"], line["loss"]) for line in metrics(tmp_path / "resumed")]
    assert losses == [(line["epoch"], line["loss"]) for line in metrics(tmp_path / "straight")]


class _RecordedBar:
    """Stands in for tqdm.tqdm: records each bar's arguments and how far it was moved."""
    made: list["_RecordedBar"] = []

    def __init__(self, total: int, initial: int = 0, unit: str = "it", **kwargs: object):
        self.total, self.n, self.unit, self.closed = total, initial, unit, False
        _RecordedBar.made.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("batch_size, bars", [(16, [(4, 4, "step")] * 4), (64, [(4, 4, "epoch")])])
def test_epochs_of_a_few_steps_share_one_progress_bar(tmp_path, monkeypatch, batch_size, bars):
    """64 images in batches of 16: a bar per epoch, over its 4 steps (a long epoch shows its steps);
    in batches of 64 (one step an epoch, a small folder's case): one bar over the 4 epochs, not 4 bars."""
    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", _RecordedBar)
    monkeypatch.setattr(sys.modules["labelless.train"], "STEPS_FOR_A_BAR_PER_EPOCH", 2)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _RecordedBar.made = []
    trainer = Trainer(stage(batch_size=batch_size), make_store(), tmp_path, "cpu", seed=7, progress=True)
    trainer.fit(TinyMethod())
    assert [(bar.total, bar.n, bar.unit) for bar in _RecordedBar.made] == bars
    assert all(bar.closed for bar in _RecordedBar.made)


def test_a_deadline_stops_at_epoch_ends_and_the_chain_of_calls_resumes_exactly(tmp_path):
    """Under a deadline that has passed, each call trains one epoch (every call makes progress), writes
    its checkpoint although checkpoint_every would skip it, and raises TimeLimitReached; repeating the
    call with resume ends with the uninterrupted weights, bit for bit. A distant deadline changes nothing."""
    config = stage(epochs=4, schedule="cosine", warmup_epochs=1, nesterov=True, ema_decay=0.9, checkpoint_every=3)
    torch.manual_seed(0)
    straight = fit(TinyMethod(), tmp_path / "straight", config)

    def call(run_dir: Path, number: int, deadline: Deadline) -> Method:
        torch.manual_seed(0 if number == 1 else 100 + number)  # later calls: other init, restored from the checkpoint
        trainer = Trainer(config, make_store(), run_dir, "cpu", seed=7, progress=False, tensorboard=False,
                          deadline=deadline)
        return trainer.fit(TinyMethod(), resume=number > 1)

    calls = 0
    while True:
        calls += 1
        try:
            chained = call(tmp_path / "chain", calls, Deadline(at=0.0))
            break
        except TimeLimitReached as stop:
            assert (stop.stage, stop.epochs_done, stop.epochs) == ("tiny", calls, 4)
            assert torch.load(stop.checkpoint, weights_only=False)["epoch"] == calls
    assert calls == 4
    roomy = call(tmp_path / "roomy", 1, Deadline.after(3600))
    for key, value in straight.state_dict().items():
        assert torch.equal(chained.state_dict()[key], value), key
        assert torch.equal(roomy.state_dict()[key], value), key
    assert [line["epoch"] for line in metrics(tmp_path / "chain")] == [0, 1, 2, 3]


def test_a_stage_not_started_before_the_deadline_is_left_for_the_next_call(tmp_path):
    spent = Deadline(at=0.0, trained=True)  # an earlier stage of this call trained an epoch, and time is up
    with pytest.raises(TimeLimitReached, match="stage 'tiny' not started"):
        Trainer(stage(), make_store(), tmp_path, "cpu", progress=False, tensorboard=False,
                deadline=spent).fit(TinyMethod())
    assert not (tmp_path / "checkpoints").exists()


def test_deadline_lets_work_start_only_when_it_fits():
    import time

    deadline = Deadline.after(10.0)
    assert deadline.allows(60.0)  # nothing trained yet under it: the first epoch always runs
    deadline.trained = True
    assert deadline.allows(5.0) and not deadline.allows(20.0)
    assert not Deadline(at=time.monotonic() - 1, trained=True).allows(0.0)


def test_resuming_a_finished_stage_restores_it(tmp_path):
    torch.manual_seed(0)
    done = fit(TinyMethod(), tmp_path, stage(epochs=2, ema_decay=0.5))
    again = fit(TinyMethod(), tmp_path, stage(epochs=2, ema_decay=0.5), resume=True)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in done.state_dict().items())
    assert len(metrics(tmp_path)) == 2


def test_unusable_checkpoints_are_refused_with_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        fit(TinyMethod(), tmp_path, resume=True)
    fit(TinyMethod(), tmp_path, stage(epochs=1))
    path = tmp_path / "checkpoints" / "tiny.pt"
    (tmp_path / "checkpoints" / "other.pt").write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="belongs to stage 'tiny'.*not stage 'other'"):
        fit(TinyMethod(), tmp_path, stage("other", epochs=1), resume=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="unreadable"):
        fit(TinyMethod(), tmp_path, stage(epochs=1), resume=True)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a labelless checkpoint"):
        fit(TinyMethod(), tmp_path, stage(epochs=1), resume=True)


def test_a_failed_checkpoint_write_leaves_the_old_one_and_no_temp_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        save_checkpoint({"a": torch.zeros(2), "unpicklable": lambda: None}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    method = DivergingMethod(nan_at=5)  # 4 steps per epoch: the 6th step (global 5) is epoch 1, step 1 of it
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 5 \(step 1 of the epoch\)") as error:
        fit(method, tmp_path, stage(epochs=3, log_every=50))
    checkpoint = tmp_path / "checkpoints" / "tiny.pt"
    assert error.value.step == 5 and error.value.checkpoint == checkpoint
    assert checkpoint.read_bytes() == method.checkpoint_bytes
    assert os.listdir(tmp_path / "checkpoints") == ["tiny.pt"]  # no weights exported after divergence


def test_collapse_is_flagged(tmp_path):
    with pytest.warns(CollapseWarning, match="100% of a fixed sample of 64 images"):
        fit(CollapsedMethod(), tmp_path, stage(epochs=1))
    (line,) = metrics(tmp_path)
    assert line["warning"] == "collapse" and line["largest_cluster_fraction"] == 1.0


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")  # TinyMethod's argmax is not a clustering
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "lars"])
def test_every_optimizer_trains(tmp_path, optimizer):
    """Each optimizer lowers the noise-free regression error on the whole store (a sign-flipped or
    mis-scaled update would raise it or leave it), not merely changes the weights."""
    x = pixels(make_store().batch(torch.arange(64)))

    def error(method: TinyMethod) -> float:
        with torch.no_grad():
            return F.mse_loss(method.linear(x), x @ method.teacher).item()

    torch.manual_seed(0)
    before = error(TinyMethod())
    torch.manual_seed(0)
    lr = 1.0 if optimizer == "lars" else 0.1  # LARS scales a weight's step by its trust ratio (eta 1e-3)
    method = fit(TinyMethod(), tmp_path, stage(epochs=30, optimizer=optimizer, lr=lr, nesterov=optimizer == "sgd"))
    after = error(method)  # measured: sgd 0.019, adam(w) 0.021, lars 0.652, from 0.924
    assert torch.isfinite(method.linear.weight).all() and after < 0.8 * before, (before, after)


def test_lars_scales_weights_by_the_trust_ratio_but_not_biases():
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer(torch.randn(8, 4)).square().mean().backward()
    LARS(layer.parameters(), lr=0.5, momentum=0.0, eta=0.02).step()
    grad_w, grad_b = layer.weight.grad, layer.bias.grad
    trust = 0.02 * weight.norm() / grad_w.norm()
    torch.testing.assert_close(layer.weight.detach(), weight - 0.5 * trust * grad_w)
    torch.testing.assert_close(layer.bias.detach(), bias - 0.5 * grad_b)


class NormMethod(TinyMethod):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)

    def parameter_groups(self) -> list[dict]:
        trunk = [*self.conv.parameters(), *self.norm.parameters()]
        return [{"params": trunk}, {"params": self.linear.parameters(), "lr_scale": 0.1}]


def test_weight_decay_skips_norm_and_bias_parameters_and_lr_scale_is_applied():
    method = NormMethod()
    groups = optimizer_groups(method, stage(weight_decay=5e-4, lr=0.2).train)
    names = {id(p): name for name, p in method.named_parameters()}
    summary = [(sorted(names[id(p)] for p in g["params"]), g["weight_decay"], g["lr"]) for g in groups]
    assert summary == [
        (["conv.weight"], 5e-4, 0.2),
        (["conv.bias", "norm.bias", "norm.weight"], 0.0, 0.2),
        (["linear.weight"], 5e-4, pytest.approx(0.02)),
        (["linear.bias"], 0.0, pytest.approx(0.02)),
    ]
    kept = optimizer_groups(method, stage(exclude_norm_bias_from_weight_decay=False).train)
    assert [g["weight_decay"] for g in kept] == [1e-4, 1e-4]
    assert isinstance(build_optimizer(groups, stage(optimizer="lars").train), LARS)


def test_warmup_then_cosine_per_step():
    train = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine", min_lr_factor=0.1)
    factors = {step: lr_factor(train, step, steps_per_epoch=10) for step in (0, 9, 19, 20, 60, 100)}
    assert factors[0] == pytest.approx(0.05) and factors[9] == pytest.approx(0.5)
    assert factors[19] == pytest.approx(1.0) and factors[20] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the 80 post-warm-up steps
    assert lr_factor(train, 99, 10) == pytest.approx(0.1, abs=1e-3)


def test_two_stage_uc_step_schedule():
    """lr·0.1^⌊(epoch − 80)/40⌋ for epoch ≥ 80, lr 0.01: 0.01 up to epoch 119, 0.001 from 120, 1e-4 from 160."""
    train = TrainConfig(epochs=300, lr=0.01, schedule="step", step_start=80, step_size=40, gamma=0.1)
    lr = {epoch: train.lr * lr_factor(train, epoch * 7 + 3, steps_per_epoch=7) for epoch in (0, 79, 119, 120, 160)}
    assert lr == pytest.approx({0: 0.01, 79: 0.01, 119: 0.01, 120: 0.001, 160: 1e-4})


def test_multistep_schedule_restarts_every_round():
    """Super-AND: drops at 120 and 160, restarting every 200-epoch round."""
    train = TrainConfig(epochs=1000, schedule="multistep", milestones=[120, 160], gamma=0.1, restart_every=200)
    factors = [lr_factor(train, epoch * 5, steps_per_epoch=5) for epoch in (119, 120, 160, 199, 200, 320)]
    assert factors == pytest.approx([1, 0.1, 0.01, 0.01, 1, 0.1])


def test_ranks_split_each_global_batch_of_one_shared_permutation():
    single = epoch_batches(50, 16, generator_seed=3, drop_last=False)
    shards = [epoch_batches(50, 16, generator_seed=3, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert [len(b) for b in single] == [16, 16, 16, 2] and [len(b) for b in shards[0]] == [8, 8, 8, 1]
    for step, rows in enumerate(single):
        assert torch.equal(torch.cat([shards[0][step], shards[1][step]]), rows)
    assert [len(b) for b in epoch_batches(50, 16, generator_seed=3)] == [16, 16, 16]


def test_single_process_helpers():
    info = distributed_info()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    x = torch.arange(3)
    assert all_gather_tensor(x) is x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_spawned_worker() -> None:
    """A spawned DDP worker whose checks passed ends here, without interpreter finalisation: gloo's C++
    threads can still hold work objects then, and tearing those down aborted a worker in the CI's full
    suite twice ("terminate called without an active exception", SIGABRT), each time after every
    assertion had passed (pytorch/pytorch#179291 describes the race). A failing worker never gets here:
    its exception reaches mp.spawn as before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


DDP_STAGE = stage(epochs=5, batch_size=32, schedule="cosine", warmup_epochs=1, lr=0.2, checkpoint_every=5)


def _ddp_worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        method = fit(TinyMethod(n=32, noise=0.0), Path(run_dir), DDP_STAGE, n=32)
        gathered = all_gather_tensor(torch.tensor([rank]))
        assert gathered.tolist() == list(range(world_size))
        assert method.seen.sum() == 5 * 32 / world_size  # each rank stepped over its half of every batch
        assert rank_0_value(("from", rank)) == ("from", 0)
        # barrier, then teardown: no rank leaves gloo while its peer is still in a collective (SIGABRT at exit)
        assert end_distributed() is (rank == 0) and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    leave_spawned_worker()


def test_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes × 16 images vs 1 process × 32: per-step losses (one step per epoch) and final
    weights agree within 1e-5 (gradients are averaged in a different float order)."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    torch.manual_seed(0)
    single = fit(TinyMethod(n=32, noise=0.0), tmp_path / "single", DDP_STAGE, n=32)
    ddp_losses = [line["loss"] for line in metrics(tmp_path / "ddp")]
    single_losses = [line["loss"] for line in metrics(tmp_path / "single")]
    assert len(ddp_losses) == 5 and single_losses[-1] < single_losses[0]
    assert ddp_losses == pytest.approx(single_losses, abs=1e-5, rel=0)
    ddp_weights = load_file(tmp_path / "ddp" / "checkpoints" / "tiny.safetensors")
    for key in ("linear.weight", "linear.bias"):
        torch.testing.assert_close(ddp_weights[key], single.state_dict()[key], atol=1e-5, rtol=0)


def _cli_worker(rank: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "imsat.yaml"
    with open(Path(out_dir) / f"stdout{rank}", "w") as out, contextlib.redirect_stdout(out):
        code = main(["train", "--config", str(config), "--set", "train.epochs=1", "--device", "cpu", "--no-report",
                     "--json", "--run-dir", run_dir])
    assert code == 0 and not dist.is_initialized()
    leave_spawned_worker()


def test_a_torchrun_job_prints_one_result_and_writes_rank_0s_files(tmp_path):
    """`labelless train` under 2 gloo processes (as torchrun starts it): rank 1 trains its half of each
    batch and leaves; rank 0 alone evaluates, writes metrics.json and prints. The ranks' BatchNorm running
    statistics differ, so two evaluations would print, and race to write, different numbers."""
    mp.spawn(_cli_worker, args=(_free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "stdout1").read_text() == ""
    printed = (tmp_path / "stdout0").read_text().splitlines()
    assert len(printed) == 1
    result = json.loads(printed[0])
    assert result["ACC"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["ACC"] > 0.2
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_batch_size_must_split_over_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="does not split over 3 processes"):
        Trainer(stage(batch_size=16), make_store(), tmp_path, "cpu")


def test_on_epoch_end_sees_the_ema_weights_and_training_keeps_the_live_ones(tmp_path):
    """With an EMA the observer evaluates what the stage would return if it ended there: at the last
    epoch exactly the final (EMA'd) model, so the curve's last point is the reported number. The live
    weights come back bit for bit: the run is identical to one without the observer."""
    seen = []
    config = stage(ema_decay=0.9)
    torch.manual_seed(0)
    plain = Trainer(config, make_store(), tmp_path / "plain", "cpu", seed=7, progress=False,
                    tensorboard=False).fit(TinyMethod())
    torch.manual_seed(0)
    observed = Trainer(config, make_store(), tmp_path / "observed", "cpu", seed=7, progress=False, tensorboard=False,
                       on_epoch_end=lambda s, e, m: seen.append(m.linear.weight.detach().clone())).fit(TinyMethod())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), observed.state_dict().values()))
    assert len(seen) == 4 and torch.equal(seen[-1], observed.linear.weight)
    assert not torch.equal(seen[0], seen[-1])


class TinyDropout(TinyMethod):
    """TinyMethod with dropout on its input: a run left in eval mode after an observer trains differently."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        x = pixels(batch.images)
        output = self.linear(self.dropout(x))
        return F.mse_loss(output, x @ self.teacher), {}


def test_on_epoch_end_observes_every_epoch_without_changing_training(tmp_path):
    """The observer (the time-to-accuracy curve) sees each epoch once, in order, with the live method
    in eval mode, and the weights come out bit-identical to a run without it: train mode (dropout here)
    is restored after each observation."""
    seen = []

    def observe(stage_name: str, epoch: int, method: Method) -> None:
        seen.append((stage_name, epoch, method.training, method.dropout.training))
        method.cluster_logits(torch.zeros(2, 1, 4, 4))  # an evaluation pass must not disturb the run

    torch.manual_seed(0)
    plain = fit(TinyDropout(), tmp_path / "plain")
    torch.manual_seed(0)
    trainer = Trainer(stage(), make_store(), tmp_path / "observed", "cpu", seed=7, progress=False,
                      tensorboard=False, on_epoch_end=observe)
    observed = trainer.fit(TinyDropout())
    assert seen == [("tiny", epoch, False, False) for epoch in range(4)]
    assert observed.training and observed.dropout.training
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), observed.state_dict().values()))
    # and the check has teeth: an observer that leaves the method in eval mode changes the weights
    torch.manual_seed(0)
    stuck = Trainer(stage(), make_store(), tmp_path / "stuck", "cpu", seed=7, progress=False, tensorboard=False,
                    on_epoch_end=lambda s, e, m: setattr(m, "train", lambda mode=True: m)).fit(TinyDropout())
    assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), stuck.state_dict().values()))
