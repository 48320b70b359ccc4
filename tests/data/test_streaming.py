"""Datasets larger than memory: the memory plan, a folder decoded into a memory-mapped cache (equal
to the in-memory read bit for bit, reused while the files are unchanged), batches gathered on the
host, and training on a streamed store giving exactly what the in-memory store gives."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelless.config import StageConfig, TrainConfig, load_config
from labelless.data import folder as folder_module
from labelless.data import stores
from labelless.data.folder import read_folder
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore, memory_plan
from labelless.errors import UserError
from labelless.pipeline import PROJECT_CONFIGS, build_method, evaluate, train
from labelless.train import Trainer

GB = 10 ** 9


def test_memory_plan_streams_above_half_the_available_memory(monkeypatch):
    monkeypatch.delenv(stores.STREAM_ENV, raising=False)
    in_memory = memory_plan(60000, 28, 28, 1, available=20 * GB)
    assert not in_memory.stream and in_memory.nbytes == 60000 * 28 * 28
    assert in_memory.describe() == "60000 images 28×28×1 = 47 MB, 20 GB available → in memory"
    assert not memory_plan(1000, 100, 100, 1, available=2 * 10 ** 7).stream  # exactly half: in memory
    assert memory_plan(1001, 100, 100, 1, available=2 * 10 ** 7).stream
    big = memory_plan(300_000, 256, 256, 3, available=64 * GB)  # 59 GB of pixels
    assert big.stream and "→ memory-mapped" in big.describe()
    assert memory_plan(10, 8, 8, 1, mode="always", available=64 * GB).stream
    assert not memory_plan(300_000, 256, 256, 3, mode="never", available=GB).stream
    monkeypatch.setenv(stores.STREAM_ENV, "always")
    forced = memory_plan(10, 8, 8, 1, available=64 * GB)
    assert forced.stream and forced.describe().endswith("(LABELLESS_STREAM=always)")
    monkeypatch.setenv(stores.STREAM_ENV, "sometimes")
    with pytest.raises(UserError, match="LABELLESS_STREAM must be one of auto, always, never"):
        memory_plan(10, 8, 8, 1)
    with pytest.raises(UserError, match="the dataset option 'stream' must be one of auto, always, never, not 'often'"):
        memory_plan(10, 8, 8, 1, mode="often")  # `--set dataset.options.stream=often`: named as the user wrote it
    monkeypatch.setenv(stores.STREAM_ENV, "auto")
    monkeypatch.setattr(stores, "available_memory", lambda: None)
    unknown = memory_plan(300_000, 256, 256, 3)
    assert not unknown.stream and "available memory unknown" in unknown.describe()


def test_available_memory_is_a_positive_byte_count():
    available = stores.available_memory()
    if sys.platform.startswith("linux"):  # /proc/meminfo exists: None here would be a regression
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        assert available is not None and 10 ** 6 < available <= physical
    else:
        assert available is None or available > 10 ** 6


@pytest.mark.parametrize("limit, expected", [("max\n", 2048 * 1024), ("1000000\n", 1_000_000),
                                             ("9999999999\n", 2048 * 1024)])
def test_available_memory_reads_meminfo_capped_by_the_cgroup_limit(monkeypatch, limit, expected):
    files = {"/proc/meminfo": "MemTotal:  4096 kB\nMemFree:  1000 kB\nMemAvailable:  2048 kB\n",
             "/sys/fs/cgroup/memory.max": limit}

    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(stores, "open", fake_open, raising=False)
    assert stores.available_memory() == expected


@pytest.fixture
def digit_folder(tmp_path: Path) -> Path:
    """240 scikit-learn digits as 8×8 gray PNGs in class subfolders, plus a truncated 8×8 gray JPEG
    (its header reads, its pixels do not: a row that fails only while decoding) and a note."""
    store = load_dataset("digits").subset(slice(0, 240))
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(store.images[..., 0].numpy(), store.labels.tolist())):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{i:03d}.png")
    jpeg = io.BytesIO()
    Image.fromarray(store.images[0, ..., 0].numpy()).save(jpeg, "JPEG")
    (root / "3" / "000_truncated.jpg").write_bytes(jpeg.getvalue()[:-10])
    (root / "notes.txt").write_text("not an image")
    return root


def read(root: Path, stream: str, cache: Path, **options) -> ImageStore:
    with pytest.warns(UserWarning, match="skipped 2 file"):
        return read_folder(root, labels_from_folders=True, progress=False, stream=stream, cache_dir=cache, **options)


def test_streamed_folder_equals_the_in_memory_read_and_its_cache_is_reused(digit_folder, tmp_path, capsys,
                                                                           monkeypatch):
    cache = tmp_path / "cache"
    in_memory = read(digit_folder, "never", cache)
    assert not in_memory.streamed and not cache.exists()
    assert "241 images 8×8×1" in capsys.readouterr().err  # headers counted: the truncated row fails later
    streamed = read(digit_folder, "always", cache)
    assert streamed.streamed and len(streamed) == len(in_memory) == 240
    assert torch.equal(streamed.images, in_memory.images)  # bit for bit, with the failed row compacted away
    assert torch.equal(streamed.labels, in_memory.labels) and streamed.class_names == in_memory.class_names
    assert streamed.paths == in_memory.paths and streamed.skipped == in_memory.skipped
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")  # no partial left
    err = capsys.readouterr().err
    assert "→ memory-mapped from " + str(cache) in err and "reused" not in err

    streamed.images[0] += 1  # copy-on-write: this process's pages change, never the cache file
    decoded = []
    monkeypatch.setattr(folder_module, "_decode", lambda *a: decoded.append(a) or (None, "must not decode"))
    again = read(digit_folder, "always", cache)
    assert decoded == [] and torch.equal(again.images, in_memory.images) and again.skipped == in_memory.skipped
    assert "(decoded before, reused)" in capsys.readouterr().err
    monkeypatch.undo()

    changed = digit_folder / "0" / min(os.listdir(digit_folder / "0"))
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new mtime: the fingerprint no longer matches, the cache is rebuilt
    monkeypatch.setenv(stores.STREAM_ENV, "always")
    monkeypatch.setenv(folder_module.CACHE_ENV, str(cache))
    with pytest.warns(UserWarning, match="skipped 2 file"):
        rebuilt = load_dataset(f"folder:{digit_folder}", labels_from_folders=True, progress=False)
    assert rebuilt.streamed and len(list(cache.iterdir())) == 2
    row = rebuilt.paths.index(str(changed))
    assert (rebuilt.images[row] == 7).all()
    assert torch.equal(rebuilt.images[row + 1:], in_memory.images[row + 1:])


def test_batches_of_a_streamed_store_equal_the_in_memory_ones(digit_folder, tmp_path):
    in_memory = read(digit_folder, "never", tmp_path)
    streamed = read(digit_folder, "always", tmp_path).without_labels().to("cpu")
    assert streamed.streamed and streamed.batch_device == torch.device("cpu")
    index = torch.tensor([200, 3, 3, 57, 0, 239, 118])  # unsorted, repeated
    assert torch.equal(streamed.batch(index), in_memory.batch(index))
    assert streamed.batch(index).dtype == torch.float32 and streamed.batch(index).shape == (7, 1, 8, 8)
    head = streamed.subset(slice(10, 50))
    assert head.streamed and torch.equal(head.batch(torch.arange(5)), in_memory.batch(torch.arange(10, 15)))
    picked = streamed.subset(index)  # a gather copies the rows: no longer a map
    assert not picked.streamed and torch.equal(picked.images, in_memory.images[index])


def test_a_store_too_large_for_the_gpu_stays_on_the_host(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10 ** 6))
    store = ImageStore(torch.zeros(10, 8, 8, 3, dtype=torch.uint8)).to("cuda")  # 1920 bytes > half of 1000
    assert store.images.device.type == "cpu" and store.device == torch.device("cuda") and not store.streamed
    assert "kept in host memory" in capsys.readouterr().err


def streamed_copy(store: ImageStore, path: Path) -> ImageStore:
    """The same pixels as a copy-on-write memory map, as read_folder makes them."""
    np.save(path, store.images.numpy())
    return ImageStore(torch.from_numpy(np.load(path, mmap_mode="c")), streamed=True)


TINY = {  # methods whose epoch hooks read the whole store: neighbour mining, k-means features, rounds
    "scan": {"backbone": "small_cnn", "heads": 2, "num_neighbours": 3, "augment": "weak"},
    "deepcluster": {"backbone": "small_cnn", "augment": "weak", "pca_dims": 8, "kmeans_iterations": 5},
    "super_and": {"backbone": "small_cnn", "epochs_per_round": 1},
}


@pytest.mark.filterwarnings("ignore::labelless.train.CollapseWarning")  # random images have no clusters
@pytest.mark.parametrize("name", sorted(TINY))
def test_methods_train_the_same_on_a_streamed_store(name, tmp_path):
    images = torch.randint(0, 256, (48, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    weights = []
    for store in (ImageStore(images), streamed_copy(ImageStore(images), tmp_path / "pixels.npy")):
        torch.manual_seed(0)
        method = build_method(name, dict(TINY[name]), k=3, store=store, previous=None, where="test")
        stage = StageConfig(name=name, method={"name": name, **TINY[name]},
                            train=TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-3))
        run_dir = tmp_path / ("streamed" if store.streamed else "in_memory")
        Trainer(stage, store, run_dir, "cpu", seed=0, progress=False, tensorboard=False).fit(method)
        weights.append(method.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_the_digits_pipeline_runs_the_same_on_a_streamed_folder(digit_folder, tmp_path):
    config = load_config(PROJECT_CONFIGS / "digits" / "default.yaml",
                         ["train.epochs=1", "train.batch_size=64", "device=cpu"])
    results = []
    for stream in ("never", "always"):
        store = read(digit_folder, stream, tmp_path / "cache")
        run = train(config, tmp_path / stream, progress=False, store=store)
        metrics = evaluate(run, store, "all", "digits-folder")
        results.append((run.probabilities(store.images), {k: metrics[k] for k in ("ACC", "NMI", "ARI")}))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_fit_and_holdout_of_a_streamed_folder_are_a_one_line_refusal(digit_folder, tmp_path, monkeypatch):
    monkeypatch.setenv(stores.STREAM_ENV, "always")
    monkeypatch.setenv(folder_module.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="skipped 2 file"):
        with pytest.raises(UserError, match="streamed from disk because it does not fit: use 'all'"):
            load_dataset(f"folder:{digit_folder}", split="holdout", labels_from_folders=True, progress=False)
