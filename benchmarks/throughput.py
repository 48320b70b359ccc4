"""SimCLR training throughput in view-images per second: our engine against its limit and the standard path.

One process, one model (a backbone + SimCLR's 2-layer projector), one batch size, one training step
(both views through one forward, NT-Xent, SGD-Nesterov), fed three ways:

  (a) raw       random float views already on the device: the most any data path can reach;
  (b) engine    the uint8 ImageStore on the device → `store.batch(idx)` → `Augment("simclr")` → step;
  (c) standard  what SCAN and solo-learn do: a torchvision DataLoader whose workers apply the PIL
                transforms of the same recipe, `num_workers` = every CPU core, pinned memory on CUDA.

Issue 3's target on one H100 at batch 512: (b)/(a) ≥ 0.85 and (b)/(c) ≥ 2.3. Examples:

    python benchmarks/throughput.py --device cuda --batch 512 --dataset cifar10 --data-root /root/data/cifar10 \\
        --out throughput-h100.json
    python benchmarks/throughput.py --device cpu --batch 64 --steps 5 --warmup 2 --workers 2

The JSON follows ../shared/RESULTS.md (throughput fields) plus the settings that produced it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms

from labelless.cli import OneLineParser
from labelless.provenance import device_name, stamp
from labelless.data import load_dataset
from labelless.data.augment import Augment
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.losses.contrastive import nt_xent_loss
from labelless.methods.simclr import projection_head
from labelless.nn.backbones import build_backbone, list_backbones
from labelless.train import resolve_device

SCRIPT = "python benchmarks/throughput.py"
SYNTHETIC_IMAGES = 2048
SEED = 0

# The SimCLR recipe at CIFAR strength (DEVICE.md's calibration run): crop scale 0.2–1, flip, jitter
# (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with p 0.2. Both paths below apply exactly this.
CROP_SCALE = (0.2, 1.0)
JITTER = (0.4, 0.4, 0.4, 0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2


def build_step(backbone: str, channels: int, image_size: int, device: torch.device) -> Callable[[Tensor], None]:
    """A fresh model and optimiser (same seed for every path, so each path starts from the same
    weights) and the training step that all three paths share: `step(views)` with views 2N×C×H×W,
    rows 0…N−1 the first view and N…2N−1 the second. bf16 autocast and channels_last on CUDA only, as
    the Trainer does; both views go through one forward, as in the calibration run."""
    torch.manual_seed(SEED)
    net = build_backbone(backbone, channels, image_size)
    # backbone + SimCLR's projector (num_features → 2048 → 128), the model of DEVICE.md's calibration
    # run, so that (a) is comparable with its 44.9k view-img/s
    model = nn.Sequential(net, projection_head(net.num_features, 2048, 128)).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def autocast() -> AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def step(views: Tensor) -> None:
        if cuda:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast():
            z1, z2 = model(views).chunk(2)  # z1, z2: N×128
            loss = nt_xent_loss(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the device: CUDA kernels run asynchronously, so a clock read without this would
    time the launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def view_images_per_second(feed_and_step: Callable[[], None], batch: int, steps: int, warmup: int,
                           device: torch.device) -> float:
    """2·batch·steps / seconds over `steps` timed steps after `warmup` untimed ones (cuDNN's
    algorithm search, allocator growth, worker start-up and the first fill of their queues)."""
    for _ in range(warmup):
        feed_and_step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        feed_and_step()
    synchronize(device)
    return 2 * batch * steps / (time.perf_counter() - start)


def measure_raw(step: Callable[[Tensor], None], batch: int, channels: int, image_size: int, steps: int, warmup: int,
                device: torch.device) -> float:
    """(a): the same two random views every step; nothing but the model, the loss and the optimiser."""
    views = torch.rand(2 * batch, channels, image_size, image_size, device=device)
    return view_images_per_second(lambda: step(views), batch, steps, warmup, device)


def measure_engine(step: Callable[[Tensor], None], store: ImageStore, batch: int, steps: int, warmup: int,
                   device: torch.device) -> float:
    """(b): the uint8 store lives on the device; a step draws indices there, gathers and converts the
    rows, and augments both views in one `Augment` call over the batch stacked twice (each row draws
    its own parameters, so the two copies of a row become two independent views, in half the launches).
    Indices are drawn with replacement, like the standard path's sampler."""
    store = store.to(device)
    augment = Augment("simclr", store.image_size[0], store.channels, scale=CROP_SCALE, jitter=JITTER,
                      jitter_p=JITTER_P, grayscale_p=GRAYSCALE_P)

    def feed_and_step() -> None:
        index = torch.randint(len(store), (batch,), device=device)
        step(augment(store.batch(index.repeat(2))))  # 2N×C×H×W float in [0, 1], then two views

    return view_images_per_second(feed_and_step, batch, steps, warmup, device)


class TwoViewImages(Dataset):
    """The standard SimCLR dataset: row i of a uint8 N×H×W×C array as a PIL image, returned as two
    independently transformed views."""

    def __init__(self, images: np.ndarray, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def standard_transform(size: int) -> transforms.Compose:
    """The recipe as SCAN and solo-learn write it with torchvision's PIL transforms."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=CROP_SCALE),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(*JITTER)], p=JITTER_P),
        transforms.RandomGrayscale(GRAYSCALE_P),
        transforms.ToTensor(),
    ])


def measure_standard(step: Callable[[Tensor], None], store: ImageStore, batch: int, steps: int, warmup: int,
                     workers: int, device: torch.device) -> float:
    """(c): a DataLoader over `TwoViewImages`, `workers` persistent worker processes, pinned memory
    on CUDA. One iterator yields exactly warmup + steps batches (sampling with replacement), so no
    epoch boundary — where workers restart their queues — falls inside the timing: if anything, this
    flatters the standard path."""
    cuda = device.type == "cuda"
    dataset = TwoViewImages(store.images.numpy(), standard_transform(store.image_size[0]))
    sampler = RandomSampler(dataset, replacement=True, num_samples=(warmup + steps) * batch,
                            generator=torch.Generator().manual_seed(SEED))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=cuda,
                        drop_last=True, persistent_workers=workers > 0)
    batches: Iterator[tuple[Tensor, Tensor]] = iter(loader)

    def feed_and_step() -> None:
        view1, view2 = next(batches)
        step(torch.cat([view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)]))

    return view_images_per_second(feed_and_step, batch, steps, warmup, device)


def load_images(dataset: str, data_root: str | None) -> ImageStore:
    """CIFAR-10's train split, or `SYNTHETIC_IMAGES` random 32×32 RGB images (no files needed)."""
    if dataset == "synthetic":
        generator = torch.Generator().manual_seed(SEED)
        images = torch.randint(0, 256, (SYNTHETIC_IMAGES, 32, 32, 3), dtype=torch.uint8, generator=generator)
        return ImageStore(images, source=f"synthetic ({SYNTHETIC_IMAGES} random 32×32 RGB images)")
    return load_dataset(dataset, split="train", root=data_root).without_labels()


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--batch", type=int, default=512,
                        help="images per step (each gives two views); below 512 an H100 idles (DEVICE.md)")
    parser.add_argument("--steps", type=int, default=200,
                        help="timed steps per path; keep ≫ the number of workers, whose batches arrive in waves")
    parser.add_argument("--warmup", type=int, default=30,
                        help="untimed steps per path; more than --workers, so that worker start-up stays out")
    parser.add_argument("--dataset", choices=["cifar10", "synthetic"], default="cifar10",
                        help=f"cifar10's train split, or {SYNTHETIC_IMAGES} random images (needs no files)")
    parser.add_argument("--data-root", help="where the dataset files are (default: $LABELLESS_DATA, else ../shared/data)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers of the standard path (default: every CPU core, as that path is run)")
    parser.add_argument("--threads", type=int,
                        help="intra-op threads of the main process (default: torch's choice); on a CPU shared with "
                             "other jobs 1 is faster, since threads that wait for each other stall every op")
    parser.add_argument("--backbone", default="resnet18", choices=list_backbones(),
                        help="resnet18 is the reference; small_cnn keeps a CPU test quick")
    parser.add_argument("--out", type=Path,
                        help="result JSON (default: benchmarks/results/throughput-<cpu|cuda>.json)")
    parser.add_argument("--commit", help="commit to record where the checkout has no git history (device machine)")
    parser.add_argument("--note", help="free text stored in the JSON, e.g. what else loaded the machine")
    return parser


def run(args: argparse.Namespace, device: torch.device, command: str) -> dict:
    """Measure the three paths in this process and return the result record."""
    if min(args.batch, args.steps, args.threads or 1) < 1 or args.warmup < 0 or args.workers < 0:
        raise UserError("--batch, --steps and --threads must be ≥ 1, --warmup and --workers ≥ 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels, for all paths alike
    store = load_images(args.dataset, args.data_root)
    height, width = store.image_size
    if height != width:
        raise UserError(f"{args.dataset} has {height}×{width} images; the benchmark needs square ones")
    settings = (args.backbone, store.channels, height, device)
    device_label = device_name(str(device))
    print(f"{device_label} · {args.backbone} · batch {args.batch} · {store.source} · "
          f"{args.warmup} warm-up + {args.steps} timed steps per path", flush=True)

    rates = {}
    print("(a) raw limit …", flush=True)
    rates["raw"] = measure_raw(build_step(*settings), args.batch, store.channels, height, args.steps, args.warmup,
                               device)
    print("(b) engine …", flush=True)
    rates["engine"] = measure_engine(build_step(*settings), store, args.batch, args.steps, args.warmup, device)
    print(f"(c) standard DataLoader, {args.workers} workers …", flush=True)
    rates["standard"] = measure_standard(build_step(*settings), store, args.batch, args.steps, args.warmup,
                                         args.workers, device)
    rates = {path: round(rate, 1) for path, rate in rates.items()}

    record = {
        "raw_view_img_s": rates["raw"],
        "engine_view_img_s": rates["engine"],
        "standard_view_img_s": rates["standard"],
        "engine_over_raw": round(rates["engine"] / rates["raw"], 4),
        "engine_over_standard": round(rates["engine"] / rates["standard"], 4),
        "batch": args.batch,
        "backbone": args.backbone,
        "dataset": args.dataset,
        "image_size": height,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "fp32",
        "device": device_label,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        **stamp(command, commit=args.commit),
    }
    if args.note:
        record["note"] = args.note
    return record


def print_table(record: dict) -> None:
    rows = [("(a) raw limit (random tensors on the device)", record["raw_view_img_s"]),
            ("(b) engine (store on device + batched augment)", record["engine_view_img_s"]),
            (f"(c) standard (DataLoader + PIL, {record['workers']} workers)", record["standard_view_img_s"])]
    print(f"{'path':<50}{'view-img/s':>12}")
    for name, rate in rows:
        print(f"{name:<50}{rate:>12,.1f}")
    print(f"(b)/(a) = {record['engine_over_raw']:.3f}    (b)/(c) = {record['engine_over_standard']:.3f}")


def main(argv: list[str] | None = None, prog: str = SCRIPT) -> int:
    """Entry point of this script and of `labelless bench throughput` (which passes its own `prog`, so
    that the recorded `command` is the one that was typed). Returns the exit code."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(args_list)
    try:
        device = resolve_device(args.device)
        record = run(args, device, command=f"{prog} {shlex.join(args_list)}".strip())
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print_table(record)
    out = args.out or Path("benchmarks/results") / f"throughput-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
