"""The comparison study's classic baselines on scikit-learn's digits (1,797 8×8 images, no download)."""
import pytest
import torch

from labelless.baselines import BASELINES, run_baseline
from labelless.data import load_dataset
from labelless.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_kmeans_on_raw_digits(digits) -> None:
    result = run_baseline("kmeans", digits, None, k=10, train_split="all")
    assert 0.7 <= result["metrics"]["ACC"] <= 0.85  # MEASURED.md: 0.792
    assert result["split"] == "all" and result["n"] == 1797 and result["pca_dims"] is None
    assert result["labels_used_in_training"] is False


def test_pca_logreg_on_a_small_digits_split(digits) -> None:
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    train, test = digits.subset(order[:400]), digits.subset(order[400:800])
    result = run_baseline("pca-logreg", train, test, k=10)
    assert result["metrics"]["ACC"] > 0.85
    assert result["split"] == "test" and result["labels_used_in_training"] is True
    assert 0 < result["pca_dims"] < 64


def test_subsample_is_seeded(digits) -> None:
    first, again = (run_baseline("pca-kmeans", digits, None, k=10, subsample=300, seed=1) for _ in range(2))
    assert first["n"] == 300 and first["metrics"] == again["metrics"]


def test_user_mistakes_are_one_line_errors(digits) -> None:
    with pytest.raises(UserError, match="unknown baseline"):
        run_baseline("pca-xgboost", digits, None, k=10)
    with pytest.raises(UserError, match="needs a test split"):
        run_baseline("pca-svm", digits, None, k=10)
    with pytest.raises(UserError, match="subsample"):
        run_baseline("kmeans", digits, None, k=10, subsample=5000)
    assert set(BASELINES) == {"kmeans", "pca-kmeans", "pca-logreg", "pca-svm", "pca-rf", "pca-knn"}
