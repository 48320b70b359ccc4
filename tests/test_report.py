"""report.html: self-contained (no network), every section present, and it renders in a real browser
(headless Chromium: a screenshot that is not blank, no console errors). Chromium comes from Debian's
`chromium` package, which `.ci/run` installs; without it the browser test is skipped, saying so."""
import base64
import html
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from labelless.cli import main
from labelless.config import load_config
from labelless.data.sources import load_dataset
from labelless.pipeline import PROJECT_CONFIGS, evaluate, train
from labelless.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A labelled digits run (SCAN → selflabel, 1 epoch each on 300 images), evaluated, then reported."""
    store = load_dataset("digits").subset(slice(0, 300))
    config = load_config(PROJECT_CONFIGS / "digits" / "default.yaml",
                         ["train.epochs=1", "train.batch_size=64", "device=cpu"])
    run = train(config, tmp_path_factory.mktemp("run"), progress=False, store=store)
    evaluate(run, store, "all", "digits")
    return write_report(run.run_dir, store=store, split="all", tsne_points=300, device="cpu")


def test_report_is_self_contained_with_every_section(report):
    page = report.read_text(encoding="utf-8")
    assert report.name == "report.html"
    for anchor in ("metrics", "clusters", "confusion", "map", "training"):
        assert f"id='{anchor}'" in page, anchor
    assert "labels used in training</th><td>false" in page
    assert re.search(r"head \d of 10: the lowest mean training loss in stage 'cluster'", html.unescape(page))
    assert page.count("Cluster ") >= 10
    # nothing fetched from anywhere: no external src/href, every image a data URL
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)
    sources = re.findall(r"src='(data:image/png;base64,[^']+)'", page)
    assert len(sources) > 10 * 16
    for source in sources[:3] + sources[-3:]:
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()


def test_an_embedding_run_is_reported_with_its_k_means_clusters_on_its_own_split(tmp_path, capsys):
    """RotNet's last stage has no cluster head: `train` writes the report anyway (it failed after the
    scores, without printing them, until 2026-12-07), with the k-means clusters it scored; `report
    --dataset` without --split shows the run's evaluation split (holdout), not the dataset's default."""
    config = tmp_path / "rot.yaml"
    config.write_text("name: rot\ndataset: {name: digits, split: fit, eval_split: holdout}\n"
                      "method: {name: rotnet, backbone: mlp}\ntrain: {epochs: 1, batch_size: 256, optimizer: adam}\n")
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--device", "cpu", "--run-dir", str(run_dir), "--json"]) == 0
    assert '"ACC"' in capsys.readouterr().out
    for page in (run_dir / "report.html").read_text(encoding="utf-8"), None:
        if page is None:
            (run_dir / "report.html").unlink()
            assert main(["report", str(run_dir), "--dataset", "digits"]) == 0
            page = (run_dir / "report.html").read_text(encoding="utf-8")
        page = html.unescape(page)
        assert "digits, split 'holdout', 180 images" in page
        assert "none: the last stage learns an embedding; clusters are k-means (K 10) on it" in page
        assert "cosine similarity to the cluster" in page and "ACC_CONFIDENT" not in page
    # the clusters shown are the ones scored: the saved predictions' cluster sizes appear in the cards
    clusters = [int(line.split(",")[1]) for line in (run_dir / "predictions.csv").read_text().splitlines()[1:]]
    for c in range(10):
        assert f"{clusters.count(c)} images ({clusters.count(c) / 180:.1%})" in page, c


def test_report_command_error_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelless: error:") and len(err.strip().splitlines()) == 1


def test_a_damaged_run_directory_still_gets_its_report_and_says_what_it_left_out(report, tmp_path, capsys):
    """A run killed mid-write leaves half a line in metrics.jsonl; a hand-edited metrics.json may not parse.
    The report is still written: the bad line is counted and left out, the model predicts again."""
    run_dir = tmp_path / "run"
    shutil.copytree(report.parent, run_dir)
    epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"stage": "selflabel", "epo')
    (run_dir / "metrics.json").write_text("{not json")
    page = write_report(run_dir, store=load_dataset("digits").subset(slice(0, 300)), split="all", tsne_points=50,
                        device="cpu").read_text(encoding="utf-8")
    err = capsys.readouterr().err
    assert f"1 unreadable line(s) of metrics.jsonl left out (line {epochs + 1})" in page
    assert "id='training'" in page and "id='metrics'" in page
    assert "metrics.json is unreadable" in err and "unreadable line(s) of metrics.jsonl" in err
    assert "Traceback" not in err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    rendered = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", url],
                              check=False, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), rendered.stderr[-2000:]
    console = [line for line in rendered.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert (pixels < 100).mean() > 0.01, "no dark content (text, thumbnails) on the page"
    dom = subprocess.run([*common, "--dump-dom", url], check=False, capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="card"') == 10 and 'id="confusion"' in dom and 'id="training"' in dom
