"""Use a trained run on new images: rebuild it from disk, predict files and folders, sort them.

A run is rebuilt from three files only — `config.yaml`, `run.json` (k, input size, channels) and
`model.safetensors` (the final method's state_dict) — so the exported trio works without the rest
of the run directory. The model is rebuilt by constructing every stage's method in order, each
given the previous one as `pretrained` exactly as training did (some constructors, e.g. selflabel,
deep-copy parts of their predecessor), untrained: the final weights overwrite all of it.

Images are decoded by the folder reader's own per-file decoder, so prediction sees the training
preprocessing: EXIF orientation, alpha on white, 16 → 8 bit, short side resized to the run's input
size then centre-cropped, converted to the run's channels (gray ↔ RGB). They are decoded batch by
batch, so a folder of any size predicts in bounded memory.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labelless.config import RunConfig, load_config
from labelless.data import folder
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.base import Method
from labelless.pipeline import Run, build_pipeline
from labelless.train import resolve_device

RUN_FILES = ("config.yaml", "run.json", "model.safetensors")


@dataclass
class RunInfo:
    """What rebuilding a run needs besides its weights."""

    root: Path
    config: RunConfig
    k: int
    image_size: tuple[int, int]  # (height, width) of the training images
    channels: int


def read_run_info(path: str | os.PathLike) -> RunInfo:
    """config.yaml + run.json of the run at `path` (a run directory, an exported trio's folder, or its
    model.safetensors), checked to be all there."""
    root = Path(path)
    if root.is_file() and root.name == "model.safetensors":
        root = root.parent
    if not root.is_dir():
        raise UserError(f"run '{folder._shown(str(root))}' is not a directory")
    missing = [name for name in RUN_FILES if not (root / name).is_file()]
    if missing:
        hint = " (runs trained before run.json existed: retrain them)" if missing == ["run.json"] else ""
        raise UserError(f"run '{folder._shown(str(root))}' lacks {', '.join(missing)}{hint}")
    config = load_config(root / "config.yaml")
    try:
        info = json.loads((root / "run.json").read_text(encoding="utf-8"))
        k, channels, image_size = int(info["k"]), int(info["channels"]), tuple(int(s) for s in info["image_size"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{root / 'run.json'} is not a run description ({type(error).__name__}: {error})") from None
    return RunInfo(root, config, k, image_size, channels)


def load_run(path: str | os.PathLike, device: str = "cpu") -> Run:
    """The run at `path` (see `read_run_info`), its final method on `device` in eval mode."""
    info = read_run_info(path)
    return _rebuilt(info, info.config, info.root / "model.safetensors", device)


def _rebuilt(info: RunInfo, config: RunConfig, weights: Path, device: str) -> Run:
    """`config`'s pipeline built untrained for `info`'s input, `weights` loaded, on `device` in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # build_pipeline reads only the channels and the input size of the store: one blank image carries them
    placeholder = ImageStore(torch.zeros(1, *info.image_size, info.channels, dtype=torch.uint8))
    method = build_pipeline(config, info.k, placeholder)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise UserError(f"{weights} cannot be read: {error}") from None
    _load_weights(method, tensors, weights)
    method.to(resolve_device(device)).eval()
    return Run(config, info.root, method, info.k, info.image_size, info.channels)


def stage_weights(info: RunInfo, stage: str) -> Path:
    """Where the trained weights of stage `stage` of a run are: `checkpoints/<stage>.safetensors`, which
    the Trainer writes when the stage has finished (its EMA weights where it kept one); for the last
    stage, also `model.safetensors` (the same weights; an exported trio has only it). A UserError names
    the run's stages for an unknown one, and says so for an unfinished one."""
    names = [s.name for s in info.config.stages]
    if stage not in names:
        raise UserError(f"run '{folder._shown(str(info.root))}' has no stage '{stage}': its stages are "
                        f"{', '.join(names)}")
    path = info.root / "checkpoints" / f"{stage}.safetensors"
    if path.is_file():
        return path
    if stage == names[-1] and (info.root / "model.safetensors").is_file():
        return info.root / "model.safetensors"
    checkpoint = info.root / "checkpoints" / f"{stage}.pt"
    unfinished = f" ({checkpoint.name} exists: the stage has not finished; resume the run)" if checkpoint.is_file() else ""
    raise UserError(f"stage '{stage}' of run '{folder._shown(str(info.root))}' has no trained weights: "
                    f"{path} is missing{unfinished}")


def load_stage(path: str | os.PathLike, stage: str, device: str = "cpu", store: ImageStore | None = None) -> Run:
    """The run at `path` rebuilt up to its stage `stage` (a stage name of its config.yaml), with that
    stage's trained weights (`stage_weights`), on `device` in eval mode; the stages after it are not
    built. For evaluating an earlier stage of a multi-stage run, e.g. k-means on the RotNet features
    before LSD-C clusters them (issue 5). The stages before it are built untrained as `load_run` builds
    them (a stage may deep-copy parts of its predecessor); the stage's weights overwrite all of that.

    A run whose later stages are still training (a chain of time-limited calls) has no run.json yet:
    given `store` (images of the run's dataset), its image size and channels stand in, and K is the
    one `--k auto` chose (k_selection.json), else config.k, else the store's class count."""
    root = Path(path)
    if store is not None and root.is_dir() and (root / "config.yaml").is_file() and not (root / "run.json").is_file():
        info = _unfinished_run_info(root, store)
    else:
        info = read_run_info(path)
    weights = stage_weights(info, stage)
    index = [s.name for s in info.config.stages].index(stage)
    return _rebuilt(info, replace(info.config, stages=info.config.stages[:index + 1]), weights, device)


def _unfinished_run_info(root: Path, store: ImageStore) -> RunInfo:
    config = load_config(root / "config.yaml")
    chosen = root / "k_selection.json"
    k = json.loads(chosen.read_text())["k"] if chosen.is_file() else config.k or store.num_classes
    if k is None:
        raise UserError(f"run '{folder._shown(str(root))}' has no run.json yet and nothing says its K "
                        f"(no k in config.yaml, no labels in the dataset)")
    return RunInfo(root, config, int(k), tuple(store.image_size), store.channels)


def _load_weights(method: Method, tensors: dict[str, Tensor], source: Path) -> None:
    """Load strictly, after giving data-sized buffers (memory banks, pseudo-labels: empty in a fresh
    method, N×D after training) the shape they were saved with. Parameters must match exactly."""
    own = method.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise UserError(f"{source} does not fit the run's config.yaml (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]})")
    buffers = dict(method.named_buffers())
    for key, value in tensors.items():
        if own[key].shape == value.shape:
            continue
        if key not in buffers:
            raise UserError(f"{source}: '{key}' has shape {tuple(value.shape)}, the config builds "
                            f"{tuple(own[key].shape)}")
        owner, _, attr = key.rpartition(".")
        setattr(method.get_submodule(owner), attr, torch.empty_like(value))
    method.load_state_dict(tensors, strict=True)


# ---------------------------------------------------------------------------------------- images
def list_image_files(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files named directly, plus every non-hidden file under each folder (the folder reader's walk)."""
    files: list[str] = []
    for item in inputs:
        name = os.fsdecode(item)
        if os.path.isdir(name):
            files += folder._walk(name)
        elif os.path.isfile(name):
            files.append(name)
        else:
            raise UserError(f"'{folder._shown(name)}' is neither a file nor a folder")
    if not files:
        raise UserError("no files to predict under " + ", ".join(folder._shown(os.fsdecode(i)) for i in inputs))
    return files


@dataclass
class ImageBatch:
    images: Tensor  # N×H×W×C uint8 at the run's size and channels
    paths: list[str]
    resized: int  # how many of them had another native size
    converted: int = 0  # how many were grey for a colour run, or colour for a grey one


@dataclass
class Predictions:
    paths: list[str]
    probabilities: Tensor  # N×K
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    resized: int = 0
    converted: int = 0  # grey ↔ colour to the run's channels

    @property
    def clusters(self) -> Tensor:
        return self.probabilities.argmax(1)

    @property
    def confidence(self) -> Tensor:
        return self.probabilities.max(1).values


def iter_image_batches(files: Sequence[str], image_size: tuple[int, int], channels: int, batch_size: int,
                       skipped: list[tuple[str, str]],
                       max_pixels: int = folder.DEFAULT_MAX_PIXELS) -> Iterator[ImageBatch]:
    """Decode `files` batch by batch at the run's input size; unreadable files go to `skipped`."""
    size = (image_size[1], image_size[0])  # the reader speaks (width, height)
    mode = "L" if channels == 1 else "RGB"

    def decode(file: str) -> tuple[np.ndarray | None, str, bool, bool]:
        header, reason = folder._header(file, max_pixels)
        if header is None:
            return None, reason, False, False
        array, reason = folder._decode(file, size, mode)
        return array, reason, header.size != size, header.gray != (channels == 1)

    with folder._bomb_guard_lifted(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            arrays, paths, resized, converted = [], [], 0, 0
            for file, (array, reason, was_resized, was_converted) in zip(chunk, pool.map(decode, chunk)):
                if array is None:
                    skipped.append((file, reason))
                    continue
                arrays.append(array.reshape(image_size[0], image_size[1], channels))
                paths.append(file)
                resized += was_resized
                converted += was_converted
            if arrays:
                yield ImageBatch(torch.from_numpy(np.stack(arrays)), paths, resized, converted)


def predict_files(run: Run, inputs: Sequence[str | os.PathLike], batch_size: int = 256) -> Predictions:
    """Cluster probabilities for every readable image among `inputs` (files and folders)."""
    files = list_image_files(inputs)
    skipped: list[tuple[str, str]] = []
    paths, chunks, resized, converted = [], [], 0, 0
    for batch in iter_image_batches(files, run.image_size, run.channels, batch_size, skipped):
        chunks.append(run.probabilities(batch.images))
        paths += batch.paths
        resized += batch.resized
        converted += batch.converted
    if not paths:
        first = f" (first: {folder._shown(skipped[0][0])}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"none of the {len(files)} files is an image Pillow can read{first}")
    return Predictions(paths, torch.cat(chunks), sorted(skipped), resized, converted)


# ---------------------------------------------------------------------------------------- outputs
def check_writable(directory: Path) -> None:
    """Fail in one line before predicting, not after, when `directory` cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".labelless-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to '{folder._shown(str(directory))}': {error.strerror or error}") from None


def check_sort_target(directory: Path, inputs: Sequence[str]) -> None:
    """`--sort-into` must be a new or empty folder outside the images it sorts: sorting into a folder
    that already holds clusters would add every image a second time (name_1.png, …) and keep stale
    links from an earlier model, and a folder inside the inputs would be read as images next time."""
    if directory.is_dir() and any(directory.iterdir()):
        raise UserError(f"--sort-into '{folder._shown(str(directory))}' is not empty: name a new folder "
                        "(or empty that one), so that no image is sorted twice")
    target = directory.resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if source.is_dir() and (target == source or source in target.parents):
            raise UserError(f"--sort-into '{folder._shown(str(directory))}' is inside the images it sorts "
                            f"('{folder._shown(given)}'): the next run on that folder would read the sorted "
                            "copies as more images; name a folder outside it")


def write_predictions_csv(path: Path, predictions: Predictions, with_probabilities: bool = False) -> None:
    """path, cluster, confidence[, prob_0..]; file names keep undecodable bytes (surrogateescape)."""
    k = predictions.probabilities.shape[1]
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "cluster", "confidence"] + ([f"prob_{c}" for c in range(k)] if with_probabilities else []))
        for i, (file, cluster, confidence) in enumerate(zip(predictions.paths, predictions.clusters.tolist(),
                                                            predictions.confidence.tolist())):
            row = [file, cluster, f"{confidence:.5f}"]
            if with_probabilities:
                row += [f"{p:.5f}" for p in predictions.probabilities[i].tolist()]
            writer.writerow(row)


def cluster_folder_name(cluster: int, k: int) -> str:
    """cluster_07: zero-padded so a file manager lists the folders in cluster order."""
    return f"cluster_{cluster:0{max(2, len(str(k - 1)))}d}"


def sort_into(directory: Path, predictions: Predictions, copy: bool = False) -> None:
    """Link (or copy) every image into directory/cluster_XX/; equal names become name_1.ext, name_2.ext."""
    k = predictions.probabilities.shape[1]
    for file, cluster in zip(predictions.paths, predictions.clusters.tolist()):
        target_dir = directory / cluster_folder_name(cluster, k)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = _free_name(target_dir, os.path.basename(file))
        try:
            if copy:
                shutil.copy2(file, target)
            else:
                os.symlink(os.path.abspath(file), target)
        except OSError as error:
            raise UserError(f"cannot {'copy' if copy else 'link'} into '{folder._shown(str(target_dir))}': "
                            f"{error.strerror or error}") from None


def _free_name(directory: Path, name: str) -> Path:
    stem, suffix = os.path.splitext(name)
    candidate, n = directory / name, 0
    while os.path.lexists(candidate):  # lexists: a dangling link still occupies the name
        n += 1
        candidate = directory / f"{stem}_{n}{suffix}"
    return candidate
