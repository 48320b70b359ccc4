"""Classic baselines of the comparison study (comparison-study-cifar10.txt, "Traditional Machine Learning").

Pixels are flattened and scaled to [0, 1] (`uint8 / 255`). The `pca-*` baselines first keep the
principal components that explain 99% of the train pixels' variance — on CIFAR-10 train that is
658 of 3,072 dimensions, the study's number, which is how we know it scaled by 1/255 and did not
standardise the pixels (standardised pixels need 662).

- Unsupervised, scored with `cluster_metrics` (Hungarian ACC, NMI, ARI): `kmeans` on raw pixels and
  `pca-kmeans`, both k-means with `k` clusters and 10 restarts. Fitted on `train`; scored on `test`
  when given, else on the very images they clustered (single-split datasets such as `digits`).
- Supervised references, fitted with train labels, scored on `test` (ACC is plain accuracy, and NMI
  / ARI of the predictions are given for comparison): `pca-logreg`, `pca-svm`, `pca-rf`, `pca-knn`
  with the study's choices: SVM with an RBF kernel, C=100, gamma=0.001 (its grid-search winner);
  random forest and kNN with scikit-learn's defaults (its table "trained with default parameters").
  Logistic regression is the one place we standardise (the PCA coordinates): it is the same model up
  to the L2 penalty, and L-BFGS converges in ~12 iterations instead of stopping unconverged at 100.
  The SVM's gamma is tied to the study's unstandardised scale, and trees do not care.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.evaluate.metrics import cluster_metrics
from labelless.evaluate.probe import logistic_regression

PCA_VARIANCE = 0.99


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    supervised: bool  # True: fitted with train labels, a reference rather than a competitor
    pca: bool  # reduce to the components that keep PCA_VARIANCE of the variance first
    make_model: Callable[[int, int], Any]  # (k, seed) → an unfitted scikit-learn estimator


def _kmeans(k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=10, random_state=seed)


BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("kmeans", "k-means on raw pixels (10 restarts)", False, False, _kmeans),
    Baseline("pca-kmeans", "PCA to 99% variance, then k-means (10 restarts)", False, True, _kmeans),
    Baseline("pca-logreg", "PCA 99%, standardised, multinomial logistic regression (L-BFGS)", True, True,
             lambda k, seed: logistic_regression()),
    Baseline("pca-svm", "PCA 99%, SVM with RBF kernel, C=100, gamma=0.001", True, True,
             lambda k, seed: SVC(C=100, gamma=0.001, cache_size=1000)),
    Baseline("pca-rf", "PCA 99%, random forest (scikit-learn defaults: 100 trees)", True, True,
             lambda k, seed: RandomForestClassifier(n_jobs=-1, random_state=seed)),
    Baseline("pca-knn", "PCA 99%, k-nearest neighbours (scikit-learn defaults: 5, uniform)", True, True,
             lambda k, seed: KNeighborsClassifier(n_jobs=-1)),
]}


def pixels(store: ImageStore) -> np.ndarray:
    """N×(H·W·C) float32 in [0, 1], the flattened uint8 images / 255."""
    return store.images.reshape(len(store), -1).cpu().numpy().astype(np.float32) / 255.0


def _pca(x: np.ndarray) -> PCA:
    # With at least as many samples as features the D×D covariance eigendecomposition is the fast
    # exact route (~30 s for CIFAR-10's 50,000 × 3,072 on 2 cores); a full SVD otherwise.
    solver = "covariance_eigh" if x.shape[0] >= x.shape[1] else "full"
    return PCA(n_components=PCA_VARIANCE, svd_solver=solver).fit(x)


def _labels(store: ImageStore, role: str) -> np.ndarray:
    if store.labels is None:
        raise UserError(f"the {role} images have no labels: a baseline needs them to be scored")
    return store.labels.cpu().numpy()


def run_baseline(name: str, train: ImageStore, test: ImageStore | None, k: int, subsample: int | None = None,
                 seed: int = 0, train_split: str = "train") -> dict[str, Any]:
    """Fit baseline `name` on `train` (or a seeded random `subsample` of it) and score it.

    Returns `metrics` (ACC, NMI, ARI — plus ACC_VOTE when `cluster_metrics` adds it), `n` (images
    fitted), `n_scored`, `k`, `pca_dims` (None without PCA), `labels_used_in_training`, `seconds`
    (PCA + fit + predict, not loading) and `split` / `train_split` (the split scored / fitted;
    `train_split` names what `train` holds, e.g. "all" for digits).
    """
    if name not in BASELINES:
        raise UserError(f"unknown baseline '{name}': choose one of {', '.join(BASELINES)}")
    baseline = BASELINES[name]
    if baseline.supervised and test is None:
        raise UserError(f"'{name}' is a supervised reference: it needs a test split to score")
    if subsample is not None:
        if not 0 < subsample <= len(train):
            raise UserError(f"subsample={subsample} but the train split has {len(train)} images")
        rows = np.sort(np.random.default_rng(seed).choice(len(train), subsample, replace=False))
        train = train.subset(rows)
    if not baseline.supervised and not 2 <= k < len(train):
        raise UserError(f"k={k} clusters: it must be at least 2 and smaller than the {len(train)} images fitted")
    scored = test if test is not None else train

    start = time.perf_counter()
    x_train, x_scored = pixels(train), pixels(scored)
    pca_dims = None
    if baseline.pca:
        pca = _pca(x_train)
        x_train, x_scored = pca.transform(x_train), pca.transform(x_scored)
        pca_dims = int(pca.n_components_)
    model = baseline.make_model(k, seed)
    truth = _labels(scored, "scored")
    if baseline.supervised:
        predictions = model.fit(x_train, _labels(train, "train")).predict(x_scored)
        metrics = {"ACC": float(accuracy_score(truth, predictions)),
                   "NMI": float(normalized_mutual_info_score(truth, predictions)),
                   "ARI": float(adjusted_rand_score(truth, predictions))}
    else:
        predictions = model.fit(x_train).predict(x_scored)
        metrics = cluster_metrics(truth, predictions)
    seconds = time.perf_counter() - start

    return {"metrics": metrics, "n": len(train), "n_scored": len(scored), "k": k, "pca_dims": pca_dims,
            "labels_used_in_training": baseline.supervised, "seconds": seconds,
            "split": "test" if test is not None else train_split, "train_split": train_split}
