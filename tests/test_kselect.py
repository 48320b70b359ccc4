"""K without labels (`labelless.kselect`) on data whose K is known.

Measured recovery (range 2..15, seeds 0 and 1, k-means on the L2-normalised features; 600 blobs in
16-D, sklearn digits restricted to the first-drawn 3, 5 or all 10 classes, raw pixels): blobs 3, 5,
10 → 6/6 exact; digits 3 and 5 → 4/4 exact; digits 10 → 9 and 12 (0/2 exact, both within 2).
Overall 10/12 exact, 12/12 within ±2. This test runs seed 0 on range 2..12 to stay fast.
"""
import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs

from labelless.errors import UserError
from labelless.kselect import parse_k_range, scores_table, select_k


@pytest.mark.parametrize("true_k", [3, 5, 10])
def test_recovers_k_on_blobs(true_k):
    features, _ = make_blobs(n_samples=600, centers=true_k, n_features=16, cluster_std=1.0, random_state=0)
    k, scores = select_k(features, range(2, 13), seed=0)
    assert k == true_k
    assert [s.k for s in scores] == list(range(2, 13))


@pytest.mark.parametrize("true_k, allowed", [(3, {3}), (5, {5}), (10, {8, 9, 10, 11, 12})])
def test_digit_subsets(true_k, allowed):
    digits = load_digits()
    classes = np.random.default_rng(0).choice(10, true_k, replace=False) if true_k < 10 else np.arange(10)
    keep = np.isin(digits.target, classes)
    k, scores = select_k(digits.data[keep], range(2, 13), seed=0)
    assert k in allowed
    row = scores_table(scores)[0]
    assert set(row) == {"k", "silhouette", "davies_bouldin", "stability", "mean_rank"}


def test_a_k_that_silhouette_and_stability_agree_on_is_pointed_out_when_the_rule_chose_another():
    """Three shape groups of a folder, range 2..30: K 3 had the best silhouette and stability, the mean
    rank (Davies-Bouldin improving with K) chose 22. The note names 3 and the --k that takes it."""
    from labelless.kselect import KScore, second_opinion

    scores = [KScore(2, 0.40, 1.0, 0.90), KScore(3, 0.54, 0.9, 1.00), KScore(22, 0.30, 0.5, 0.95)]
    note = second_opinion(scores, 22)
    assert note is not None and note.startswith("K = 3 has both") and note.endswith("pass --k 3")
    assert second_opinion(scores, 3) is None  # the rule agreed
    scores[0].stability = 1.0  # stability now best at 2 (ties go to the smaller K): no agreement, no note
    assert second_opinion(scores, 22) is None


def test_k_range_parsing():
    assert parse_k_range("2..30") == range(2, 31)
    for bad in ("1..5", "5..3", "2-30", "a..b"):
        with pytest.raises(UserError):
            parse_k_range(bad)


# ------------------------------------------------------------------ `--k auto` in the pipeline
def blob_images(true_k: int = 4, per_cluster: int = 50):
    """true_k random 8×8 patterns, each repeated with pixel noise: K is plain in pixel space."""
    import torch

    from labelless.data.stores import ImageStore

    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randint(30, 226, (true_k, 8, 8, 1), generator=generator).float()
    noise = 8 * torch.randn(true_k * per_cluster, 8, 8, 1, generator=generator)
    images = (prototypes.repeat_interleave(per_cluster, 0) + noise).clamp(0, 255).to(torch.uint8)
    return ImageStore(images, labels=torch.arange(true_k).repeat_interleave(per_cluster))


def tiny_config(*methods: str):
    from labelless.config import load_config

    stage_methods = {"simclr": {"name": "simclr", "backbone": "mlp", "augment": "none", "hidden_dim": 64},
                     "scan": {"name": "scan", "backbone": "mlp", "heads": 1, "num_neighbours": 5, "augment": "none"}}
    return load_config({"dataset": "digits", "device": "cpu", "k": 7,
                        "train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 1.0e-3,
                                  "log_every": 1000},
                        "stages": [{"name": f"s{i}-{m}", "method": stage_methods[m]} for i, m in enumerate(methods)]})


def fits_per_stage(monkeypatch) -> dict:
    from labelless.pipeline import Trainer

    calls: dict[str, list] = {}
    fit = Trainer.fit

    def counting_fit(self, method, resume=False):
        calls.setdefault(self.stage.name, []).append(method)
        return fit(self, method, resume=resume)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    return calls


@pytest.mark.parametrize("methods", [("scan",), ("simclr", "scan"), ("simclr",)])
def test_k_auto_trains_each_stage_once_and_recovers_k(monkeypatch, tmp_path, capsys, methods):
    """Pixels when the pipeline starts with a clustering stage, else the embedding stage's output, trained
    once and handed on; the config's k (7) is ignored; config.yaml, run.json and the Run carry the choice."""
    import json

    from labelless.config import load_config
    from labelless.pipeline import train

    calls = fits_per_stage(monkeypatch)
    run = train(tiny_config(*methods), tmp_path, progress=False, store=blob_images(), k_range=range(2, 9))
    assert {stage: len(fitted) for stage, fitted in calls.items()} == {f"s{i}-{m}": 1 for i, m in enumerate(methods)}
    selection = json.loads((tmp_path / "k_selection.json").read_text())
    assert selection["k"] == run.k == 4 and selection["k_range"] == [2, 8]
    assert selection["embedding"].startswith("pixels" if methods[0] == "scan" else "the embedding")
    assert [row["k"] for row in selection["scores"]] == list(range(2, 9)) and selection["rule"]
    assert json.loads((tmp_path / "run.json").read_text())["k"] == 4
    assert load_config(tmp_path / "config.yaml").k == 4
    assert "chose K = 4" in capsys.readouterr().err
    if methods == ("simclr", "scan"):
        assert run.method._pretrained[0] is calls["s0-simclr"][0]  # SCAN mined on the stage trained above
    if methods[-1] == "scan":
        assert run.probabilities(blob_images().images).shape == (200, 4)


def test_k_auto_scores_k_in_the_scan_stages_own_pixel_space(tmp_path):
    """The CPU recipe mines on patch k-means features (`pixel_space: patches`): `--k auto` scores K there too."""
    import json

    from labelless.pipeline import train

    config = tiny_config("scan")
    config.stages[0].method["pixel_space"] = "patches"
    run = train(config, tmp_path, progress=False, store=blob_images(), k_range=range(2, 9))
    selection = json.loads((tmp_path / "k_selection.json").read_text())
    assert selection["embedding"] == "patch k-means features" and selection["k"] == run.k


def test_k_auto_never_reads_labels(tmp_path):
    from labelless.pipeline import train

    store = blob_images()
    unlabelled = type(store)(store.images)
    first = train(tiny_config("scan"), tmp_path / "a", progress=False, store=store, k_range=range(2, 9))
    second = train(tiny_config("scan"), tmp_path / "b", progress=False, store=unlabelled, k_range=range(2, 9))
    assert (tmp_path / "a" / "k_selection.json").read_text() == (tmp_path / "b" / "k_selection.json").read_text()
    assert first.k == second.k == 4


def test_k_auto_resume_keeps_the_chosen_k(monkeypatch, tmp_path):
    """A resumed run must not choose again: the later stages' checkpoints were made for the first K."""
    from labelless import pipeline

    first = pipeline.train(tiny_config("simclr", "scan"), tmp_path, resume=True, progress=False, store=blob_images(),
                           k_range=range(2, 9))
    monkeypatch.setattr(pipeline, "select_k", lambda *a, **kw: pytest.fail("K chosen again on resume"))
    again = pipeline.train(tiny_config("simclr", "scan"), tmp_path, resume=True, progress=False, store=blob_images(),
                           k_range=range(2, 9))
    assert first.k == again.k == 4
