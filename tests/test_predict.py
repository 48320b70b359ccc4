"""`labelless predict` and `load_run`: a run rebuilt from disk predicts like the trained one; files and
folders in, CSV and cluster folders out; bad input ends in one line, nothing lost."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from labelless.cli import main
from labelless.config import load_config
from labelless.data.sources import load_dataset
from labelless.pipeline import PROJECT_CONFIGS, train
from labelless.predict import cluster_folder_name, load_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The digits default pipeline (SCAN → selflabel), 1 epoch each on 240 images: seconds on a CPU."""
    store = load_dataset("digits").subset(slice(0, 240))
    config = load_config(PROJECT_CONFIGS / "digits" / "default.yaml",
                         ["train.epochs=1", "train.batch_size=64", "device=cpu"])
    run_dir = tmp_path_factory.mktemp("run")
    return train(config, run_dir, progress=False, store=store), store


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, tiny_run):
    """Digits as files: PNGs at 8×8 (native) and 40×32 RGB (resized), a copy in a subfolder with a
    clashing name, one non-image, one name that is not UTF-8."""
    _, store = tiny_run
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    images = store.images[:11, ..., 0].numpy()
    for i in range(6):
        Image.fromarray(images[i]).save(root / f"{i}.png")
    for i in range(6, 11):
        Image.fromarray(images[i]).resize((40, 32)).convert("RGB").save(root / f"big{i}.png")
    Image.fromarray(images[0]).save(root / "sub" / "0.png")  # same image, so same cluster: the names clash
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(images[0]).save(os.path.join(os.fsencode(root), b"caf\xe9.png"))
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_load_run_predicts_like_the_trained_run(tiny_run, tmp_path):
    run, store = tiny_run
    loaded = load_run(run.run_dir)
    assert (loaded.k, loaded.image_size, loaded.channels) == (run.k, run.image_size, run.channels)
    images = store.images[:64]
    torch.testing.assert_close(loaded.probabilities(images), run.probabilities(images))
    # the exported trio alone, without checkpoints, metrics or artefacts
    for name in ("config.yaml", "run.json", "model.safetensors"):
        shutil.copy(run.run_dir / name, tmp_path / name)
    exported = load_run(tmp_path / "model.safetensors")
    torch.testing.assert_close(exported.probabilities(images), run.probabilities(images))


def test_predict_folder_writes_csv_and_sorts(tiny_run, image_folder, tmp_path, capsys):
    run, _ = tiny_run
    out, sorted_dir = tmp_path / "p.csv", tmp_path / "sorted"
    code, _, err = run_cli(capsys, "predict", run.run_dir, image_folder, "--out", out, "--probs",
                           "--sort-into", sorted_dir, "--device", "cpu", "--batch-size", "5")
    assert code == 0
    assert "skipped 1 unreadable file(s)" in err and "notes.txt" in err
    assert "5 image(s) resized to the run's input size 8×8" in err
    assert "labelless: 5 image(s) converted to grey, the run's input (1 channel)" in err  # the big*.png are RGB
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "cluster", "confidence"] + [f"prob_{c}" for c in range(run.k)]
    assert len(rows) == 1 + 13  # 6 + 5 + 1 + the non-UTF-8 name
    probabilities = np.array([[float(v) for v in row[3:]] for row in rows[1:]])
    assert np.allclose(probabilities.sum(1), 1, atol=1e-3)
    assert [int(r[1]) for r in rows[1:]] == probabilities.argmax(1).tolist()
    assert np.allclose([float(r[2]) for r in rows[1:]], probabilities.max(1), atol=1e-5)
    assert os.fsencode(rows[1 + [os.path.basename(r[0]) for r in rows[1:]].index("caf\udce9.png")][0]).endswith(
        b"caf\xe9.png")
    links = sorted(p for p in sorted_dir.rglob("*") if p.is_symlink())
    assert len(links) == 13 and all(p.parent.name.startswith("cluster_") for p in links)
    assert all(p.resolve().is_file() for p in links)
    names = [p.name for p in links]
    assert "0.png" in names and "0_1.png" in names  # root/0.png and sub/0.png both kept


def test_predict_with_copies_and_a_list_of_files(tiny_run, image_folder, tmp_path, capsys):
    run, _ = tiny_run
    code, _, _ = run_cli(capsys, "predict", run.run_dir, image_folder / "1.png", image_folder / "big7.png",
                         "--out", tmp_path / "p.csv", "--sort-into", tmp_path / "s", "--copy", "--json")
    assert code == 0
    copies = [p for p in (tmp_path / "s").rglob("*.png")]
    assert len(copies) == 2 and not any(p.is_symlink() for p in copies)


def test_skipped_files_are_all_listed_beside_the_csv(tiny_run, image_folder, tmp_path, capsys):
    """stderr names the first five; every skipped file, with its reason, goes to p.skipped.txt."""
    run, _ = tiny_run
    images = tmp_path / "images"
    shutil.copytree(image_folder, images)
    for i in range(7):
        (images / f"notes{i}.txt").write_text("not an image")
    code, out, err = run_cli(capsys, "predict", run.run_dir, images, "--out", tmp_path / "p.csv", "--json")
    listed = tmp_path / "p.skipped.txt"
    assert code == 0 and json.loads(out)["skipped"] == 8 and json.loads(out)["skipped_list"] == str(listed)
    lines = listed.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(
        [str(images / "notes.txt")] + [str(images / f"notes{i}.txt") for i in range(7)])
    assert all(line.split("\t")[1] for line in lines) and "and 3 more" in err and str(listed) in err


def test_sorting_into_a_folder_that_is_not_empty_or_inside_the_inputs_is_refused(tiny_run, image_folder,
                                                                                  tmp_path, capsys):
    """A second sort into the same folder would add every image again (name_1.png) and keep the links of
    an earlier model; a folder inside the inputs would be read as more images next time."""
    run, _ = tiny_run
    sorted_dir = tmp_path / "sorted"
    argv = ["predict", run.run_dir, image_folder / "1.png", "--out", tmp_path / "p.csv", "--sort-into", sorted_dir]
    assert run_cli(capsys, *argv)[0] == 0
    before = sorted(p.name for p in sorted_dir.rglob("*"))
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "is not empty" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in sorted_dir.rglob("*")) == before
    inside = image_folder / "sorted"
    code, _, err = run_cli(capsys, "predict", run.run_dir, image_folder, "--out", tmp_path / "q.csv",
                           "--sort-into", inside)
    assert code == 2 and "is inside the images it sorts" in err and not inside.exists()
    code, _, err = run_cli(capsys, "predict", run.run_dir, image_folder, "--out", tmp_path / "r.csv", "--copy")
    assert code == 2 and "--copy needs --sort-into" in err and not (tmp_path / "r.csv").exists()


def test_cluster_folders_are_zero_padded():
    assert cluster_folder_name(3, 10) == "cluster_03"
    assert cluster_folder_name(7, 150) == "cluster_007"


@pytest.mark.parametrize("problem, message", [
    ("no_images", "none of the 1 files is an image Pillow can read"), ("not_a_run", "lacks"),
    ("unwritable_parent", "cannot write to"),
    ("read_only", "cannot write to"), ("out_is_a_folder", "is a folder: name the CSV file to write"),
    ("bad_device", "device 'cuda:x' is not a device name"),
])
def test_bad_input_ends_in_one_line(problem, message, tiny_run, image_folder, tmp_path, capsys):
    run, _ = tiny_run
    images, out, device = image_folder, tmp_path / "p.csv", []
    run_dir = run.run_dir
    if problem == "no_images":
        images = tmp_path / "texts"
        images.mkdir()
        (images / "a.txt").write_text("x")
    elif problem == "not_a_run":
        run_dir = image_folder
    elif problem == "out_is_a_folder":  # refused before predicting, not after
        out = tmp_path
    elif problem == "unwritable_parent":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "p.csv"
    elif problem == "bad_device":
        device = ["--device", "cuda:x"]
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the unwritable_parent case covers the message")
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o555)
        out = read_only / "p.csv"
    code, _, err = run_cli(capsys, "predict", run_dir, images, "--out", out, *device)
    assert code == 2
    assert err.startswith("labelless: error:") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
