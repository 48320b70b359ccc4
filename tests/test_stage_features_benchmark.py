"""benchmarks/stage_features.py: an earlier stage of a finished run is rebuilt from its own checkpoint
and scored by k-means (issue 5) or a linear probe at a block (issue 6) exactly as a direct computation
on the trained model would; bad input ends in one line and exit code 2."""
from __future__ import annotations

import json
import shutil
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelless.cli import load_benchmark
from labelless.config import load_config
from labelless.data.sources import load_dataset
from labelless.data.stores import to_float
from labelless.evaluate.knn import knn_accuracy
from labelless.evaluate.metrics import cluster_metrics
from labelless.evaluate.probe import linear_probe
from labelless.pipeline import kmeans_predictions, train
from labelless.predict import load_stage

# RotNet → LSD-C on 8×8 digits with the 3-block small CNN: LSD-C trains only the last block
CONFIG = {
    "name": "tiny-rotnet-lsd_c", "seed": 0, "device": "cpu", "dataset": {"name": "digits"},
    "train": {"batch_size": 64, "optimizer": "sgd", "lr": 0.05, "epochs": 1, "schedule": "constant"},
    "stages": [
        {"name": "rotnet", "method": {"name": "rotnet", "backbone": "small_cnn", "flip": False}},
        {"name": "lsd_c", "method": {"name": "lsd_c", "knn_k": 5, "data_mix": "none", "flip": False,
                                     "rampup_epochs": 1}},
    ],
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("stage_features")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The run, and the RotNet stage's own method object as training left it (LSD-C deep-copies the
    backbone it continues, so this object keeps the RotNet weights: the direct computation's model)."""
    kept = {}

    def keep(stage, epoch, method):
        kept[stage] = method

    run_dir = tmp_path_factory.mktemp("run")
    store = load_dataset("digits").subset(slice(0, 240))
    run = train(load_config(CONFIG), run_dir, progress=False, store=store, on_epoch_end=keep)
    return run, kept["rotnet"].eval()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")  # the run's dataset, split "all" (1797 images)


@pytest.fixture(scope="module")
def holdout():
    return load_dataset("digits", split="holdout")  # 180 of them: k-means in a fraction of a second


def run_script(bench, capsys, *argv):
    code = bench.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def direct_kmeans(method, images, normalise=False):
    with torch.no_grad():
        features = method.embed(to_float(images)).float()
    features = F.normalize(features, dim=1) if normalise else features
    return features, kmeans_predictions(features, 10, 0)


def test_the_earlier_stage_is_rebuilt_with_its_own_weights(tiny_run, digits):
    run, rotnet = tiny_run
    loaded = load_stage(run.run_dir, "rotnet")
    assert [s.name for s in loaded.config.stages] == ["rotnet"] and loaded.method.name == "rotnet"
    for key, value in rotnet.state_dict().items():
        torch.testing.assert_close(loaded.method.state_dict()[key], value.cpu(), rtol=0, atol=0)
    # LSD-C trained the last block: the final model's differs, the frozen first blocks do not
    final = load_stage(run.run_dir, "lsd_c").method.backbone.blocks
    assert not torch.equal(final[2][0].weight, loaded.method.backbone.blocks[2][0].weight)
    assert torch.equal(final[0][0].weight, loaded.method.backbone.blocks[0][0].weight)
    torch.testing.assert_close(load_stage(run.run_dir, "lsd_c").embed(digits.images[:50]),
                               run.embed(digits.images[:50]))


@pytest.mark.parametrize("normalise", [False, True])
def test_kmeans_on_the_rotnet_stage_equals_the_direct_computation(bench, tiny_run, holdout, capsys, tmp_path,
                                                                  normalise):
    _, rotnet = tiny_run
    out = tmp_path / "result.json"
    code, stdout, err = run_script(bench, capsys, tiny_run[0].run_dir, "--stage", "rotnet", "--kmeans", "--split",
                                   "holdout", "--device", "cpu", "--json", "--out", out,
                                   *(["--normalise"] if normalise else []))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert json.loads(stdout) == result
    _, predictions = direct_kmeans(rotnet, holdout.images, normalise)
    expected = cluster_metrics(holdout.labels.numpy(), predictions.numpy())
    assert result["metrics"] == pytest.approx(expected, abs=1e-9)
    assert set(result["metrics"]) >= {"ACC", "NMI", "ARI"} and all(0 <= v <= 1 for v in result["metrics"].values())
    assert (result["method"], result["stage"], result["stages"]) == ("rotnet", "rotnet", ["rotnet"])
    assert (result["split"], result["train_split"], result["n"], result["seeds"]) == ("holdout", "all", 180, [0])
    assert result["kmeans"] == {"k": 10, "n_init": 10, "seed": 0, "l2_normalised": normalise}
    assert result["features"]["source"] == "embedding" and result["features"]["dim"] == 128
    assert result["labels_used_in_training"] is False and "labels_used_by_probe" not in result
    assert result["device"].startswith("cpu") and result["wall_seconds"] > 0 and result["commit"]
    assert result["command"].startswith("python benchmarks/stage_features.py ") and "--kmeans" in result["command"]


def test_normalising_changes_the_clustering(bench, tiny_run, holdout):
    """The option is not a no-op on these features (so the two runs above test different paths)."""
    _, rotnet = tiny_run
    plain, normalised = direct_kmeans(rotnet, holdout.images)[1], direct_kmeans(rotnet, holdout.images, True)[1]
    assert not torch.equal(plain, normalised)


def test_block_features_are_the_pooled_maps_of_forward_blocks(bench, tiny_run, digits):
    run, _ = tiny_run
    stage = load_stage(run.run_dir, "lsd_c")
    images = digits.images[:70]
    with torch.no_grad():
        maps = stage.method.backbone.forward_blocks(to_float(images))
    for layer, grid in ((1, 1), (2, 2), (3, 1)):
        features = bench.extract(stage, images, layer, grid, 32, "test", False)  # 3 batches, the last short
        expected = F.adaptive_avg_pool2d(maps[layer - 1], grid).flatten(1)
        assert features.shape == expected.shape
        torch.testing.assert_close(features, expected)
    # the last block, globally averaged, is the embedding (small_cnn's pool)
    torch.testing.assert_close(bench.extract(stage, images, 3, 1, 1024, "test", False), stage.embed(images))
    assert torch.equal(bench.extract(stage, images, None, 1, 1024, "test", False), stage.embed(images))


def test_probe_on_separable_features_is_near_perfect_and_on_shuffled_labels_near_chance(bench):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 16))
    y_train, y_test = np.repeat(np.arange(4), 80), np.repeat(np.arange(4), 40)
    x_train = centres[y_train] + rng.normal(size=(320, 16))
    x_test = centres[y_test] + rng.normal(size=(160, 16))
    scores = bench.probe_scores(torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test)
    assert scores["LINEAR"] >= 0.99 and scores["LINEAR_TRAIN"] >= 0.99
    assert scores["LINEAR"] == linear_probe(x_train, y_train, x_test, y_test)  # the library's probe, same model
    shuffled = bench.probe_scores(x_train, rng.permutation(y_train), x_test, y_test)
    assert shuffled["LINEAR"] < 0.5


def test_probe_at_a_block_of_the_final_stage(bench, tiny_run, capsys, tmp_path):
    out = tmp_path / "probe.json"
    code, _, err = run_script(bench, capsys, tiny_run[0].run_dir, "--stage", "lsd_c", "--probe", "--layer", "2",
                              "--grid", "2", "--train-split", "fit", "--split", "holdout", "--device", "cpu",
                              "--out", out)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["evaluation"] == "linear_probe" and result["split"] == "holdout"
    assert result["probe"]["train_split"] == "fit" and result["probe"]["n_train"] + result["n"] == 1797
    assert result["features"] == {"source": "block", "layer": 2, "blocks": 3, "map": "64×4×4",
                                  "pool": "adaptive average to 2×2", "dim": 64 * 4, "l2_normalised": False}
    assert result["metrics"]["LINEAR"] > 0.6  # chance is 0.1: pooled conv maps of digits separate well
    assert set(result["metrics"]) == {"LINEAR"} and result["probe"]["train_accuracy"] >= result["metrics"]["LINEAR"]
    assert result["labels_used_in_training"] is False and result["labels_used_by_probe"] is True


def test_an_unfinished_run_without_run_json_still_gives_its_finished_stage(bench, tiny_run, capsys, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run[0].run_dir, partial)
    for name in ("run.json", "model.safetensors", "checkpoints/lsd_c.safetensors"):
        (partial / name).unlink()
    results = []
    for run_dir in (tiny_run[0].run_dir, partial):
        code, stdout, err = run_script(bench, capsys, run_dir, "--stage", "rotnet", "--kmeans", "--json",
                                       "--split", "holdout", "--device", "cpu")
        assert code == 0, err
        results.append(json.loads(stdout)["metrics"])
    assert results[0] == results[1]
    code, _, err = run_script(bench, capsys, partial, "--stage", "lsd_c", "--kmeans", "--device", "cpu")
    assert code == 2 and "has no trained weights" in err and "has not finished" in err


# Super-AND on the digits' `fit` split, 2 rounds of 1 epoch: round 1 selects and writes its pairs
SUPER_AND = {
    "name": "tiny-super_and", "seed": 0, "device": "cpu", "dataset": {"name": "digits", "split": "fit"},
    "train": {"batch_size": 128, "optimizer": "sgd", "lr": 0.03, "epochs": 2, "restart_every": 1,
              "schedule": "constant", "drop_last": True},
    "stages": [{"name": "super_and", "method": {"name": "super_and", "backbone": "mlp", "epochs_per_round": 1,
                                                "augment": "affine"}}],
}


@pytest.fixture(scope="module")
def super_and_run(tmp_path_factory):
    store = load_dataset("digits", split="fit")
    return train(load_config(SUPER_AND), tmp_path_factory.mktemp("super_and"), progress=False, store=store), store


def test_knn_on_a_super_and_stage_votes_with_its_memory_bank_and_adds_the_round_consistency(
        bench, super_and_run, holdout, capsys, tmp_path):
    run, fit = super_and_run
    out = tmp_path / "knn.json"
    code, _, err = run_script(bench, capsys, run.run_dir, "--stage", "super_and", "--knn", "--split", "holdout",
                              "--device", "cpu", "--json", "--out", out)
    assert code == 0, err
    result = json.loads(out.read_text())
    stage = load_stage(run.run_dir, "super_and")
    memory = stage.method.memory.memory
    assert memory.shape == (len(fit), 128) and torch.equal(memory, run.method.memory.memory)
    with torch.no_grad():
        queries = stage.embed(holdout.images)
    expected = knn_accuracy(F.normalize(memory, dim=1), fit.labels, F.normalize(queries, dim=1), holdout.labels)
    assert result["metrics"] == {"KNN": pytest.approx(expected, abs=1e-12)} and 0.1 < expected <= 1
    assert result["knn"] == {"k": 200, "temperature": 0.1, "bank": "the method's memory bank", "bank_split": "fit",
                             "n_bank": len(fit)}
    pairs = torch.load(run.run_dir / "artefacts" / "round_1_pairs.pt", weights_only=True)
    agree = float((fit.labels[pairs[:, 0]] == fit.labels[pairs[:, 1]]).float().mean())
    assert len(pairs) == len(fit) // 4 and result["neighbourhood_consistency"] == {"1": pytest.approx(agree)}
    assert (result["evaluation"], result["split"], result["train_split"]) == ("knn", "holdout", "fit")
    assert result["labels_used_in_training"] is False


def test_knn_on_a_stage_without_a_bank_embeds_the_bank_split(bench, tiny_run, holdout, capsys, tmp_path):
    run, rotnet = tiny_run
    fit = load_dataset("digits", split="fit")
    code, out, err = run_script(bench, capsys, run.run_dir, "--stage", "rotnet", "--knn", "--split", "holdout",
                                "--train-split", "fit", "--knn-k", "7", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out)
    with torch.no_grad():
        bank, queries = (F.normalize(rotnet.embed(to_float(s.images)).float(), dim=1) for s in (fit, holdout))
    assert result["metrics"]["KNN"] == pytest.approx(knn_accuracy(bank, fit.labels, queries, holdout.labels, 7),
                                                     abs=1e-12)
    assert result["knn"]["bank"] == "the bank split, embedded" and "neighbourhood_consistency" not in result
    assert result["features"]["l2_normalised"] is True  # the vote compares normalised features


def test_splits_that_share_images_are_spotted():
    from labelless.data.sources import splits_overlap

    for name, a, b in (("mnist", "train", "train"), ("mnist", "holdout", "train"), ("digits", "all", "fit"),
                       ("folder:/x", "all", "holdout"), ("cifar10", "fit", "train"), ("mnist", "all", "test"),
                       ("mnist", "all", "holdout"), ("cifar10", "all", "train")):
        assert splits_overlap(name, a, b) and splits_overlap(name, b, a), (name, a, b)
    for name, a, b in (("mnist", "fit", "holdout"), ("mnist", "train", "test"), ("cifar10", "holdout", "test"),
                       ("digits", "train", "fit")):
        assert not splits_overlap(name, a, b) and not splits_overlap(name, b, a), (name, a, b)


@pytest.mark.parametrize("options, message", [
    (["--stage", "rotnet", "--knn", "--split", "holdout"], "shares no image with the queries' ('holdout'), got 'all'"),
    (["--stage", "rotnet", "--knn", "--split", "holdout", "--train-split", "fit", "--layer", "1"], "drop --layer"),
    (["--stage", "rotnet", "--kmeans", "--knn-k", "5"], "they need --knn"),
    (["--stage", "rotnet", "--knn", "--knn-temperature", "0"], "--knn-temperature positive"),
    (["--stage", "nope", "--kmeans"], "has no stage 'nope': its stages are rotnet, lsd_c"),
    (["--stage", "rotnet", "--probe", "--layer", "4"], "--layer 4 is out of range: stage 'rotnet' has 3 macro-blocks"),
    (["--stage", "rotnet", "--probe", "--layer", "0"], "out of range"),
    (["--stage", "rotnet", "--kmeans", "--grid", "2"], "--grid pools a block's map: it needs --layer"),
    (["--stage", "rotnet", "--kmeans", "--train-split", "fit"], "it needs --probe or --knn"),
    (["--stage", "rotnet", "--kmeans", "--split", "test"], "digits"),  # digits has no test split
    (["--stage", "rotnet", "--kmeans", "--k", "1"], "--k must be between 2 and the number of images (1797)"),
])
def test_mistakes_are_one_line_and_exit_2(bench, tiny_run, capsys, options, message):
    code, out, err = run_script(bench, capsys, tiny_run[0].run_dir, *options, "--device", "cpu")
    assert code == 2 and out == ""
    assert err.startswith("stage_features: error: ") and err.count("\n") == 1 and message in err


def test_missing_checkpoint_and_missing_run_are_one_line(bench, tiny_run, capsys, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0].run_dir, broken)
    (broken / "checkpoints" / "rotnet.safetensors").unlink()
    (broken / "checkpoints" / "rotnet.pt").unlink()
    code, _, err = run_script(bench, capsys, broken, "--stage", "rotnet", "--kmeans", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "rotnet.safetensors is missing" in err
    code, _, err = run_script(bench, capsys, tmp_path / "nothing", "--stage", "rotnet", "--kmeans")
    assert code == 2 and err.count("\n") == 1 and "is not a run directory" in err
