"""The CLI contract other issues build on: forms, --json keys, one-line errors with exit code 2."""
import json
from pathlib import Path

import numpy as np
import pytest

from labelless.cli import main

JSON_KEYS = {"ACC", "NMI", "ARI", "n", "k", "split", "dataset", "seconds"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_registry(capsys):
    for what, expected in [("methods", "scan"), ("datasets", "digits"), ("backbones", "resnet18"),
                           ("augments", "simclr")]:
        code, out, _ = run_cli(capsys, "list", what)
        assert code == 0 and expected in out.split()


def test_run_on_digits_writes_the_run_directory_and_json(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", "--dataset", "digits", "--device", "cpu", "--run-dir", str(tmp_path),
                           "--set", "stages.0.train.epochs=2", "--set", "stages.1.train.epochs=1", "--json")
    assert code == 0
    result = json.loads(out)
    assert JSON_KEYS <= set(result)
    assert result["n"] == 1797 and result["k"] == 10 and result["split"] == "all" and result["dataset"] == "digits"
    # measured 0.534 after 2 + 1 epochs; random clusters score ≈ 0.12 on digits
    assert 0.35 < result["ACC"] <= 1 and result["labels_used_in_training"] is False and result["seed"] == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())  # the run directory alone says how it was made
    assert saved["seed"] == 0 and saved["labels_used_in_training"] is False and saved["split"] == "all"
    for name in ("config.yaml", "metrics.jsonl", "predictions.csv", "model.safetensors", "metrics.json",
                 "artefacts/neighbour_indices.pt", "checkpoints/cluster.pt", "checkpoints/selflabel.pt"):
        assert (tmp_path / name).exists(), name
    # the written predictions score the same through `evaluate`
    code, out, _ = run_cli(capsys, "evaluate", str(tmp_path), "--dataset", "digits", "--json")
    scored = json.loads(out)
    assert code == 0 and scored["ACC"] == pytest.approx(result["ACC"])
    assert scored["k"] == 10 and 1 <= scored["clusters_used"] <= 10  # K from run.json, not from the clusters used


def test_evaluate_a_hand_written_csv(capsys, tmp_path):
    from labelless.data import load_dataset

    labels = load_dataset("digits").labels.numpy()[:100]
    csv = tmp_path / "p.csv"
    csv.write_text("index,cluster\n" + "".join(f"{i},{(y + 3) % 10}\n" for i, y in enumerate(labels)))
    code, out, _ = run_cli(capsys, "evaluate", str(csv), "--dataset", "digits", "--json")
    result = json.loads(out)
    assert code == 0 and result["ACC"] == 1.0 and result["NMI"] == pytest.approx(1.0) and result["n"] == 100
    assert result["clusters_used"] == 10 and "k" not in result  # a CSV of clusters alone does not say K
    csv.write_text("index,cluster\n" + "".join(f"{i},{int(y) % 3}\n" for i, y in enumerate(labels)))
    code, out, _ = run_cli(capsys, "evaluate", str(csv), "--dataset", "digits", "--json")
    assert code == 0 and json.loads(out)["clusters_used"] == 3
    csv.rename(tmp_path / "predictions.csv")  # the same clusters as a run directory's, whose run.json says K 10
    (tmp_path / "run.json").write_text(json.dumps({"k": 10, "image_size": [8, 8], "channels": 1}))
    code, out, _ = run_cli(capsys, "evaluate", str(tmp_path), "--dataset", "digits", "--json")
    scored = json.loads(out)
    assert code == 0 and (scored["k"], scored["clusters_used"]) == (10, 3)


def test_evaluate_without_split_scores_and_records_the_test_split(capsys, cifar10_root):
    """The tiny CIFAR-10 has 10 train and 3 test images: a CSV that predicts the test labels exactly
    scores 1.0 on the split it names (it scored train's first three images and said "test" until
    2026-12-07)."""
    root, _, train_y, _, test_y = cifar10_root
    assert list(test_y) != list(train_y[:3])  # scoring the wrong split would show
    csv = root / "p.csv"
    csv.write_text("index,cluster\n" + "".join(f"{i},{y}\n" for i, y in enumerate(test_y)))
    code, out, _ = run_cli(capsys, "evaluate", str(csv), "--dataset", "cifar10", "--data-root", str(root), "--json")
    result = json.loads(out)
    assert code == 0 and (result["split"], result["n"], result["ACC"]) == ("test", 3, 1.0)


def test_baseline_kmeans_on_digits(capsys):
    code, out, _ = run_cli(capsys, "baseline", "kmeans", "--dataset", "digits", "--json")
    result = json.loads(out)
    assert code == 0 and JSON_KEYS <= set(result) and 0.7 < result["ACC"] < 0.85


@pytest.mark.parametrize("argv, message", [
    (["run", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (["run", "--dataset", "digits", "--split", "test"], "has the split 'all'"),
    (["run", "--dataset", "digits", "--k", "5000"], "not smaller than the number of images"),
    (["run", "--dataset", "digits", "--set", "stages.0.train.lrr=1"], "unknown config key"),
    (["run", "--dataset", "digits", "--set", "stages.0.method.name=nosuch"], "unknown method 'nosuch'"),
    # a method parameter is checked against its constructor's type: a typo is not a truthy string
    (["run", "--dataset", "digits", "--set", "stages.1.method.balance=flase"],
     "stage 'selflabel': config key 'method.balance' must be true or false, got 'flase'"),
    (["run", "--dataset", "digits", "--set", "stages.0.method.heads=two"],
     "stage 'cluster': config key 'method.heads' must be an integer, got 'two'"),
    (["run", "--dataset", "cifar10", "--data-root", "/nonexistent"], "cifar10"),
    (["run", "--dataset", "folder:/nonexistent"], "/nonexistent"),
    (["run", "--dataset", "digits", "--labelled-fraction", "2"], "--labelled-fraction must be in (0, 1]"),
    (["baseline", "nosuch", "--dataset", "digits"], "unknown baseline"),
    (["baseline", "kmeans", "--dataset", "digits", "--k", "5000"], "smaller than the 1797 images fitted"),
    (["baseline", "kmeans", "--dataset", "digits", "--k", "1"], "k=1 clusters: it must be at least 2"),
    (["evaluate", "/nonexistent.csv", "--dataset", "digits"], "no predictions file"),
    (["run", "--dataset", "digits", "--set", "dataset.options.image_size=32"], "dataset 'digits' takes no options"),
    (["run", "--dataset", "digits", "--image-size", "16"], "--image-size only applies to folder:PATH, not to 'digits'"),
    (["baseline", "kmeans", "--dataset", "digits", "--labels-from-folders", "--image-size", "16"],
     "--labels-from-folders and --image-size only apply to folder:PATH"),
    (["run", "--dataset", "digits", "--device", "foo"], "device 'foo' is not a device name"),
    (["run", "--dataset", "digits", "--set", "stages.0.method.heads=0"],
     "stage 'cluster': config key 'method.heads' must be at least 1, got 0"),
    (["run", "--dataset", "digits", "--set", "stages.0.method.num_neighbours=0"],
     "stage 'cluster': config key 'method.num_neighbours' must be at least 1, got 0"),
    (["run", "--dataset", "digits", "--set", "stages.1.method.threshold=1.5"],
     "stage 'selflabel': config key 'method.threshold' must be in [0, 1), got 1.5"),
    (["run", "--dataset", "digits", "--k", "1"], "--k must be a whole number of clusters, at least 2, or 'auto', got '1'"),
    (["run", "--dataset", "digits", "--k", "2.5"], "--k must be a whole number of clusters, at least 2"),
    (["run", "--dataset", "digits", "--set", "foo=1"], "(known: dataset, name, seed, device, k, labelled_fraction, "
     "notes, train.KEY (every stage), stages.N.method.KEY, stages.N.train.KEY)"),
    (["run", "--dataset", "digits", "--device", "cuda:x"], "device 'cuda:x' is not a device name"),
])
def test_mistakes_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, *(["--run-dir", str(tmp_path)] if argv[0] == "run" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_csv_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,2\n")
    code, _, err = run_cli(capsys, "evaluate", str(bad), "--dataset", "digits")
    assert code == 2 and "index,cluster" in err


@pytest.mark.parametrize("body, message", [
    ("index,cluster\n0,1.5\n1,2\n", "line 2: cluster '1.5' is not a whole number"),      # not truncated to 1
    ("index,cluster\n0,-4\n", "line 2: cluster '-4' is not a whole number ≥ 0"),
    ("index,cluster\n0,inf\n", "line 2: cluster 'inf' is not a whole number"),
    ("index,cluster\n0.9,1\n", "line 2: index '0.9' is not a whole number"),               # not read as 0
    ("index,cluster\n-1,1\n", "line 2: index '-1' is not a whole number ≥ 0"),
    ("index,cluster\n0,1\n5,2\n0,3\n", "line 4: index 0 again (first on line 2)"),      # not scored twice
    ("index,cluster\n0,1\n1,2,3\n", "line 3 has 3 columns, the header 2"),
    ("index,cluster,prob_0,prob_1\n0,5,0.5,0.5\n", "line 2: cluster 5 has no column among prob_0..prob_1"),
    ("index,cluster,prob_0,prob_1\n0,1,nan,0.5\n", "line 2: probabilities must lie in [0, 1]"),
    ("index,cluster,prob_0,prob_1\n0,1,-0.1,1.1\n", "line 2: probabilities must lie in [0, 1]"),
    ("index,cluster,p0,p1\n0,1,0.5,0.5\n", "the header must name prob_0..prob_1"),
    ("index,cluster\n", "no predictions"),
])
def test_a_csv_that_cannot_be_scored_as_written_is_a_one_line_error(capsys, tmp_path, body, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    code, out, err = run_cli(capsys, "evaluate", str(bad), "--dataset", "digits")
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_reads_whole_number_floats_blank_lines_and_probabilities(capsys, tmp_path):
    """What a spreadsheet or pandas writes (3.0, a trailing blank line) is the same prediction; the
    probability columns give the confident-sample figures."""
    csv = tmp_path / "p.csv"
    csv.write_text("index,cluster,prob_0,prob_1\n0,0.0,0.95,0.05\n\n1,1,0.4,0.6\n\n")
    code, out, err = run_cli(capsys, "evaluate", str(csv), "--dataset", "digits", "--json")
    result = json.loads(out)
    assert code == 0 and result["n"] == 2 and result["k"] == 2 and result["CONFIDENT_FRACTION"] == 0.5
    assert f"labelless: warning: {csv} predicts 2 of the 1797 images of that split: the scores cover those 2 only" \
        in err.splitlines()
    csv.write_text("index,cluster,prob_0,prob_1,path\n0,0,0.95,0.05,a b.png\n1,1,0.4,0.6,c,d.png\n")  # a folder run's
    code, out, err = run_cli(capsys, "evaluate", str(csv), "--dataset", "digits", "--json")
    assert code == 0 and json.loads(out)["k"] == 2 and json.loads(out)["CONFIDENT_FRACTION"] == 0.5


def test_an_index_past_the_split_names_itself(capsys, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("index,cluster\n0,1\n1797,2\n")
    code, _, err = run_cli(capsys, "evaluate", str(csv), "--dataset", "digits")
    assert code == 2 and "index 1797 is outside the 1797 images" in err


def _class_folders(root: Path) -> Path:
    from PIL import Image

    for i, name in enumerate(["a", "a", "b", "b"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=60 * i).save(root / name / f"{i}.png")
    return root


def test_skipped_files_are_one_warning_line_on_the_command_line(capsys, tmp_path):
    images = _class_folders(tmp_path / "images")
    (images / "a" / "notes.txt").write_text("not an image")
    csv = tmp_path / "p.csv"
    csv.write_text("index,cluster\n0,0\n1,0\n2,1\n3,1\n")
    code, out, err = run_cli(capsys, "evaluate", str(csv), "--dataset", f"folder:{images}", "--labels-from-folders",
                             "--json")
    assert code == 0 and json.loads(out)["ACC"] == 1.0
    warning = [line for line in err.splitlines() if "notes.txt" in line]
    assert len(warning) == 1 and warning[0].startswith("labelless: warning: skipped 1 file(s)")
    assert "warnings.warn" not in err and "return read_folder" not in err  # no echoed source line


def _random_images(root: Path, n: int) -> Path:
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _run_on_folder(capsys, images: Path, run_dir: Path, *sets: str) -> tuple[int, str, str]:
    """`run` of configs/cpu.yaml on a folder, one epoch, K 2, plus `--set` overrides."""
    overrides = [arg for value in ("stages.0.train.epochs=1", *sets) for arg in ("--set", value)]
    return run_cli(capsys, "run", "--dataset", f"folder:{images}", "--device", "cpu", "--k", "2",
                   "--run-dir", str(run_dir), "--no-report", "--json", *overrides)


def test_a_small_folder_trains_min_steps_and_the_run_records_the_raised_epochs(capsys, tmp_path):
    """configs/cpu.yaml counts epochs and at least `min_steps` steps: 48 images in batches of 16 make 3
    steps an epoch, so min_steps 7 raises 1 epoch to 3 — in the JSON, config.yaml and the log."""
    images = _random_images(tmp_path / "images", 48)
    run_dir = tmp_path / "run"
    code, out, err = _run_on_folder(capsys, images, run_dir, "stages.0.train.min_steps=7", "train.batch_size=16")
    assert code == 0 and json.loads(out)["epochs"] == 3
    assert "labelless: stage 'cluster': 48 images make 3 step(s) an epoch, so 3 epochs instead of 1 " \
           "(train.min_steps 7)" in err.splitlines()
    from labelless.config import load_config
    assert load_config(run_dir / "config.yaml").stages[0].train.epochs == 3
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(line["epoch"] for line in logged if "epoch" in line) == 2  # 0-based: three epochs trained


def test_a_folder_smaller_than_one_batch_trains_on_batches_of_all_its_images(capsys, tmp_path):
    """configs/cpu.yaml's batch is 512: 48 images are not refused, they train in batches of 48 (said on
    stderr, recorded in config.yaml), and min_steps then counts those one-step epochs."""
    images = _random_images(tmp_path / "images", 48)
    run_dir = tmp_path / "run"
    code, out, err = _run_on_folder(capsys, images, run_dir, "stages.0.train.min_steps=3")
    assert code == 0 and json.loads(out)["n"] == 48 and json.loads(out)["epochs"] == 3
    lines = err.splitlines()
    assert "labelless: stage 'cluster': 48 images, fewer than a batch of 512, so batches of 48" in lines
    assert "labelless: stage 'cluster': 48 images make 1 step(s) an epoch, so 3 epochs instead of 1 " \
           "(train.min_steps 3)" in lines
    from labelless.config import load_config
    assert load_config(run_dir / "config.yaml").stages[0].train.batch_size == 48


def test_run_on_a_folder_lists_its_skipped_files_in_the_run_directory(capsys, tmp_path):
    """The reader's warning names the first few skipped files; `run` keeps all of them, with their
    reasons, in RUN_DIR/skipped_files.txt and says where on stderr."""
    images = _random_images(tmp_path / "images", 48)
    (images / "notes.txt").write_text("not an image")
    (images / "empty.png").write_bytes(b"")
    run_dir = tmp_path / "run"
    code, out, err = _run_on_folder(capsys, images, run_dir, "stages.0.train.min_steps=null", "train.batch_size=16")
    assert code == 0 and json.loads(out)["n"] == 48
    listed = run_dir / "skipped_files.txt"
    assert listed.read_text() == (f"{images / 'empty.png'}\tempty file\n"
                                  f"{images / 'notes.txt'}\tnot an image Pillow can read\n")
    assert f"labelless: the 2 skipped file(s), each with its reason: {listed}" in err.splitlines()


def test_a_run_directory_is_never_overwritten_or_resumed_on_other_data(capsys, tmp_path, monkeypatch):
    """Every folder trains into runs/cpu-seed0 unless told otherwise: a second run goes to runs/cpu-seed0-2,
    a run directory named explicitly that holds a run is refused (the first model stays), and so is
    --resume on other data, before any file of the run changes. The
    folder is recorded as an absolute path, so that `report` works from any directory."""
    monkeypatch.chdir(tmp_path)
    _random_images(tmp_path / "images", 48)
    sets = ["--set", "stages.0.train.epochs=1", "--set", "stages.0.train.min_steps=null",
            "--set", "train.batch_size=16"]
    argv = ["run", "--dataset", "folder:images", "--device", "cpu", "--k", "2", "--no-report", *sets]
    assert run_cli(capsys, *argv)[0] == 0
    run_dir = tmp_path / "runs" / "cpu-seed0"
    from labelless.config import load_config
    assert load_config(run_dir / "config.yaml").dataset.name == f"folder:{tmp_path / 'images'}"
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, out, err = run_cli(capsys, *argv, "--json")  # the same command again: the next free default name
    assert code == 0 and json.loads(out)["run_dir"] == str(Path("runs") / "cpu-seed0-2")
    assert f"labelless: {Path('runs') / 'cpu-seed0'} holds an earlier run; this one goes to " \
           f"{Path('runs') / 'cpu-seed0-2'} (--run-dir DIR to choose)" in err.splitlines()
    code, _, err = run_cli(capsys, *argv, "--run-dir", str(run_dir))  # named explicitly: refused
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"'{run_dir}' already holds a run (model.safetensors, checkpoints): --resume" in err
    _random_images(tmp_path / "other", 48)
    code, _, err = run_cli(capsys, "run", "--dataset", "folder:other", "--device", "cpu", "--k", "2",
                           "--no-report", "--resume", *sets)
    assert code == 2 and f"was trained on folder:{tmp_path / 'images'}, not folder:{tmp_path / 'other'}" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
    code, _, err = run_cli(capsys, *argv, "--resume", "--json")  # the same data resumes: nothing to train
    assert code == 0
    (tmp_path / "a_file").write_text("x")
    code, _, err = run_cli(capsys, *argv, "--run-dir", "a_file")
    assert code == 2 and "--run-dir 'a_file' is a file, not a directory" in err


def test_a_folder_of_fewer_images_than_neighbours_mines_fewer(capsys, tmp_path):
    """configs/cpu.yaml mines 20 neighbours; 6 images have 5 others: SCAN mines those, says so, and the
    run's predictions.csv names each row's file."""
    images = _random_images(tmp_path / "images", 6)
    run_dir = tmp_path / "run"
    code, out, err = _run_on_folder(capsys, images, run_dir, "stages.0.train.min_steps=null", "train.batch_size=4")
    assert code == 0 and json.loads(out)["n"] == 6
    assert "labelless: scan mines 5 neighbours per image, not 20: the data has 6 images" in err.splitlines()
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "path" and [row.split(",")[-1] for row in rows[1:]] == [
        str(images / f"{i:02d}.png") for i in range(6)]


def test_labels_from_a_flat_folder_say_why_there_are_none(capsys, tmp_path):
    images = _class_folders(tmp_path / "images")
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in images.rglob("*.png"):
        (flat / png.name).write_bytes(png.read_bytes())
    csv = tmp_path / "p.csv"
    csv.write_text("index,cluster\n0,0\n")
    code, _, err = run_cli(capsys, "evaluate", str(csv), "--dataset", f"folder:{flat}", "--labels-from-folders")
    assert code == 2 and "is a readable image inside a class subfolder" in err and "Pillow" not in err


def test_help_documents_every_option():
    from labelless.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"'labelless {name}' option {action.option_strings or action.dest} has no help"


def test_train_resume_restores_finished_stages_and_starts_missing_ones(capsys, tmp_path):
    """`train --resume` on an empty run directory starts fresh; repeated, it restores every stage and
    predicts exactly the same clusters (the chained-calls workflow of a time-limited GPU)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    argv = ["train", "--config", str(config), "--run-dir", str(tmp_path), "--json", "--resume",
            "--set", "stages.0.train.epochs=1", "--set", "stages.1.train.epochs=1", "--set", "device=cpu"]
    code, first, _ = run_cli(capsys, *argv)
    predictions = (tmp_path / "predictions.csv").read_text()
    code_again, again, _ = run_cli(capsys, *argv)
    assert code == code_again == 0
    assert json.loads(again)["ACC"] == json.loads(first)["ACC"]
    assert (tmp_path / "predictions.csv").read_text() == predictions


def test_resume_refuses_to_record_fewer_epochs_than_the_checkpoint_trained(capsys, tmp_path):
    """A finished 2-epoch stage resumed with epochs=1 kept the 2-epoch model but recorded 1."""
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    argv = ["train", "--config", str(config), "--run-dir", str(tmp_path), "--json", "--no-report",
            "--set", "stages.1.train.epochs=1", "--set", "device=cpu"]
    assert run_cli(capsys, *argv, "--set", "stages.0.train.epochs=2")[0] == 0
    saved = (tmp_path / "config.yaml").read_text()
    code, out, err = run_cli(capsys, *argv, "--set", "stages.0.train.epochs=1", "--resume")
    assert code == 2 and out == "" and err.strip().splitlines()[-1].endswith(
        "stage 'cluster' has trained 2 epochs in " + str(tmp_path / "checkpoints" / "cluster.pt")
        + ", more than the 1 asked: use another --run-dir, or ask for at least 2")
    assert (tmp_path / "config.yaml").read_text() == saved  # refused before any file changed


def test_time_limit_stops_with_exit_75_and_the_same_command_finishes_the_run(capsys, tmp_path):
    """`--time-limit` (here far below one epoch) stops after one epoch per call, checkpointed, with one
    line and exit code 75; repeating the command with --resume finishes with the clusters of an
    uninterrupted run."""
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    short = ["--config", str(config), "--json", "--set", "stages.0.train.epochs=2", "--set", "stages.1.train.epochs=1",
             "--set", "device=cpu"]
    code, straight, _ = run_cli(capsys, "train", *short, "--run-dir", str(tmp_path / "straight"))
    assert code == 0
    chain = ["train", *short, "--run-dir", str(tmp_path / "chain"), "--resume", "--time-limit", "0.0001", "--no-report"]
    stops = []
    for _ in range(5):
        code, out, err = run_cli(capsys, *chain)
        if code == 0:
            break
        assert code == 75 and out == "" and len(err.strip().splitlines()) == 1, (code, err)
        stops.append(err.split("time limit: ")[1].split(",")[0].split(" (")[0])
    assert code == 0, err
    assert stops == ["stage 'cluster' stopped after epoch 1 of 2", "stage 'selflabel' not started"]
    assert json.loads(out)["ACC"] == json.loads(straight)["ACC"]
    assert (tmp_path / "chain" / "predictions.csv").read_text() == (tmp_path / "straight" / "predictions.csv").read_text()
    assert (tmp_path / "straight" / "report.html").is_file() and not (tmp_path / "chain" / "report.html").exists()


def test_a_diverged_training_is_one_line_and_exit_1(capsys, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--run-dir", str(tmp_path), "--json",
                             "--set", "stages.0.train.lr=1e30", "--set", "device=cpu")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "stage 'cluster': loss is nan" in err and "Lower train.lr" in err


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_time_limit_must_be_a_positive_number(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "x.yaml", "--time-limit", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "expected a positive number" in err
    assert err.count("\n") == 1 and err.endswith("(see labelless train --help)\n")  # one line, no usage block


def test_demo_margin_writes_its_png(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "demo", "margin", "--out", str(tmp_path / "m.png"), "--gamma", "0", "0.1")
    assert code == 0 and (tmp_path / "m.png").stat().st_size > 10_000


@pytest.mark.parametrize("command", [["run", "--dataset", "digits"], ["train", "--config", "x.yaml"]])
def test_k_auto_options_parse(command):
    from labelless.cli import _k_choice, build_parser

    parser = build_parser()
    assert _k_choice(parser.parse_args(command + ["--k", "auto"])) == (None, range(2, 31))
    assert _k_choice(parser.parse_args(command + ["--k", "auto", "--k-range", "3..6"])) == (None, range(3, 7))
    assert _k_choice(parser.parse_args(command + ["--k", "7"])) == (7, None)
    assert _k_choice(parser.parse_args(command)) == (None, None)


@pytest.mark.parametrize("options, message", [
    (["--k", "auto", "--k-range", "6..3"], "--k-range must be LOW..HIGH"),
    (["--k", "auto", "--k-range", "1..5"], "--k-range must be LOW..HIGH"),
    (["--k", "auto", "--k-range", "2-30"], "--k-range must be LOW..HIGH"),
    (["--k-range", "3..6"], "--k-range needs --k auto"),
    (["--k", "5", "--k-range", "3..6"], "--k-range needs --k auto"),
    (["--k", "many"], "whole number of clusters, at least 2, or 'auto'"),
    (["--k", "0"], "whole number of clusters, at least 2, or 'auto'"),
])
@pytest.mark.parametrize("command", [["run", "--dataset", "digits"],
                                     ["train", "--config", "configs/digits/default.yaml"]])
def test_k_auto_mistakes_are_one_line_and_exit_2(capsys, tmp_path, command, options, message):
    code, _, err = run_cli(capsys, *command, *options, "--run-dir", str(tmp_path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything is trained or written


def test_run_k_auto_on_digits_writes_its_choice(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--dataset", "digits", "--device", "cpu", "--run-dir", str(tmp_path),
                             "--k", "auto", "--k-range", "2..12", "--set", "stages.0.train.epochs=1",
                             "--set", "stages.1.train.epochs=1", "--json")
    selection = json.loads((tmp_path / "k_selection.json").read_text())
    assert code == 0 and json.loads(out)["k"] == selection["k"]
    scores = selection["scores"]
    assert [row["k"] for row in scores] == list(range(2, 13))
    assert selection["k"] == min(scores, key=lambda row: (row["mean_rank"], row["k"]))["k"]  # the rule, applied
    assert 8 <= selection["k"] <= 12  # digits has 10 classes; test_kselect finds 9 or 12 on its pixels
    assert selection["embedding"].startswith("pixels")  # the digits default has no embedding stage
    assert f"chose K = {selection['k']}" in err


def test_run_picks_the_dataset_default_then_its_fast_recipe_then_the_generic_one_for_the_device(tmp_path, monkeypatch):
    from labelless import pipeline

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "default.yaml").write_text("x")
    (tmp_path / "a" / "fast.yaml").write_text("x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "fast.yaml").write_text("x")
    monkeypatch.setattr(pipeline, "PROJECT_CONFIGS", tmp_path)
    assert pipeline.default_config_path("a") == tmp_path / "a" / "default.yaml"
    assert pipeline.default_config_path("b") == tmp_path / "b" / "fast.yaml"
    assert pipeline.default_config_path("c") == tmp_path / "default.yaml"
    assert pipeline.default_config_path("c", "cpu") == tmp_path / "cpu.yaml"  # the GPU recipe would take days
    assert pipeline.default_config_path("b", "cpu") == tmp_path / "b" / "fast.yaml"


def test_bench_tta_reaches_the_time_to_accuracy_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "tta", "--help"])
    assert exit_info.value.code == 0 and "--budget-min" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # its mistakes are one line too, like the CLI's own
        main(["bench", "tta", "--budget-min", "10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == ("labelless bench tta: error: the following arguments are required: "
                                                 "--config (see labelless bench tta --help)\n")


def test_train_takes_seed_and_device_like_run(capsys, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    code, out, _ = run_cli(capsys, "train", "--config", str(config), "--seed", "3", "--device", "cpu", "--json",
                           "--run-dir", str(tmp_path), "--set", "stages.0.train.epochs=1",
                           "--set", "stages.1.train.epochs=1")
    assert code == 0 and json.loads(out)["device"].startswith("cpu")
    recorded = (tmp_path / "config.yaml").read_text()
    assert "seed: 3" in recorded and "device: cpu" in recorded
    # SCAN chose the head, self-labelling refined it: metrics.json still names the choice and its losses
    scored = json.loads((tmp_path / "metrics.json").read_text())
    assert scored["chosen_head_stage"] == "cluster" and len(scored["head_losses"]) > 1
    assert scored["chosen_head"] == min(range(len(scored["head_losses"])), key=scored["head_losses"].__getitem__)


def test_weak_mode_scored_on_its_training_split_says_so(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--dataset", "digits", "--labelled-fraction", "0.1", "--device", "cpu",
                             "--run-dir", str(tmp_path), "--json", "--set", "stages.0.train.epochs=1",
                             "--set", "stages.1.train.epochs=1")
    assert code == 0 and "labelled images are part of the score" in err
    result = json.loads(out)
    assert result["labels_used_in_training"] is True and result["labelled_fraction"] == 0.1
    # labels trained cluster c as class c: ACC is the plain accuracy, the Hungarian one is kept beside it
    from sklearn.datasets import load_digits

    clusters = [int(line.split(",")[1]) for line in (tmp_path / "predictions.csv").read_text().splitlines()[1:]]
    direct = float((np.array(clusters) == load_digits().target).mean())
    assert result["ACC"] == pytest.approx(direct) and result["ACC_HUNGARIAN"] >= result["ACC"]


@pytest.mark.parametrize("train_split, knn", [("fit", True), ("all", False)])
def test_knn_is_scored_only_against_a_bank_that_holds_none_of_the_queries(capsys, tmp_path, train_split, knn):
    """An embedding method scored on digits' holdout: trained on `fit`, the fit images are the kNN bank;
    trained on `all`, which holds the holdout images, a query would find itself (a run on all scored
    KNN 0.92 where the same embedding without its own rows gave 0.91), so no KNN, and the file says why.
    The also-scored `all` shares images with `fit` as well."""
    config = tmp_path / "rot.yaml"
    config.write_text(f"name: rot\ndataset: {{name: digits, split: {train_split}, eval_split: holdout}}\n"
                      "method: {name: rotnet, backbone: mlp}\n"
                      "train: {epochs: 1, batch_size: 256, lr: 1.0e-3, optimizer: adam}\n")
    extra = ["--also-score", "all"] if train_split == "fit" else []
    code, out, _ = run_cli(capsys, "train", "--config", str(config), "--device", "cpu", "--run-dir",
                           str(tmp_path / "run"), "--json", "--no-report", *extra)
    assert code == 0
    result = json.loads(out)
    assert (result["split"], result["n"]) == ("holdout", 180)
    assert ("KNN" in result) is knn
    if knn:
        assert 0.5 < result["KNN"] <= 1  # measured 0.91 after one epoch; chance is 0.1
        assert "KNN" not in result["also_scored"]["all"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert ("KNN" in saved) is knn and saved["knn_bank"].startswith("none:") is not knn


def test_tuning_trains_on_fit_and_scores_the_unseen_holdout(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--dataset", "digits", "--device", "cpu", "--run-dir", str(tmp_path),
                             "--split", "holdout", "--set", "dataset.split=fit", "--json", "--also-score", "fit",
                             "--set", "stages.0.train.epochs=1", "--set", "stages.1.train.epochs=1")
    assert code == 0 and "warning" not in err
    result = json.loads(out)
    assert (result["n"], result["split"], result["train_split"]) == (180, "holdout", "fit")
    # RESULTS.md's fields, and the training split scored too (--also-score) without overwriting the first
    assert result["method"] == "pipeline:scan+selflabel" and result["epochs"] == {"cluster": 1, "selflabel": 1}
    assert result["head_selection"] == "lowest_loss" and "ACC_HUNGARIAN" not in result
    assert result["variant"] == "digits-default dataset.split=fit stages.0.train.epochs=1 stages.1.train.epochs=1"
    fit = result["also_scored"]["fit"]
    # measured 0.414 on fit, 0.433 on holdout after 1 + 1 epochs; random clusters score ≈ 0.12
    assert fit["n"] == 1617 and fit["split"] == "fit" and 0.25 < fit["ACC"] <= 1 and 0.25 < result["ACC"]
    assert "KNN" not in fit
    assert len((tmp_path / "predictions-fit.csv").read_text().splitlines()) == 1 + 1617
    assert json.loads((tmp_path / "metrics-fit.json").read_text())["ACC"] == fit["ACC"]
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 1 + 180
    # the predictions score the same through `evaluate` on the same split
    code, out, _ = run_cli(capsys, "evaluate", str(tmp_path), "--dataset", "digits", "--split", "holdout", "--json")
    assert code == 0 and json.loads(out)["ACC"] == pytest.approx(result["ACC"])


def test_scoring_holdout_after_training_on_all_of_train_warns(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--dataset", "digits", "--device", "cpu", "--run-dir", str(tmp_path),
                           "--split", "holdout", "--json", "--set", "stages.0.train.epochs=1",
                           "--set", "stages.1.train.epochs=1")
    assert code == 0 and "which contains it" in err
