"""Choose the number of clusters K without labels (`--k auto`, issue 7).

The cluster head for each K is k-means on the L2-normalised shared embedding — on a CPU this is the
affordable stand-in for training a clustering head per K, and the embedding stage runs once. Each K
is scored with three label-free criteria:

- `silhouette` (higher is better), cosine, on a random sample of at most `sample` points;
- `davies_bouldin` (lower is better);
- `stability` (higher is better): k-means fitted on two random halves of the data, each model then
  labels every point, and the two labellings are compared by ARI (Lange et al. 2004, "Stability-based
  validation of clustering solutions"). A K that matches real structure is found again from other
  data; a K that splits or merges true groups is split or merged differently each time.

Rule: every criterion ranks the Ks (1 = best); the K with the lowest mean rank wins, ties going to
the smaller K. Ranks, not raw values, because the three live on unrelated scales and no single one
is reliable alone (silhouette favours small K on real images, stability also rewards K = 2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score

from labelless.errors import UserError

CRITERIA = {"silhouette": True, "davies_bouldin": False, "stability": True}  # name → higher is better
RULE = ("lowest mean rank over silhouette (higher better), Davies-Bouldin (lower better) and "
        "stability ARI (higher better); ties go to the smaller K")


@dataclass
class KScore:
    k: int
    silhouette: float
    davies_bouldin: float
    stability: float
    mean_rank: float = 0.0


def parse_k_range(text: str) -> range:
    """'2..30' → range(2, 31), inclusive as written."""
    low, sep, high = text.partition("..")
    try:
        first, last = int(low), int(high)
    except ValueError:
        first = last = 0
    if not sep or first < 2 or last < first:
        raise UserError(f"--k-range must be LOW..HIGH with 2 ≤ LOW ≤ HIGH, e.g. 2..30, got '{text}'")
    return range(first, last + 1)


def select_k(embeddings: np.ndarray, k_range: range | list[int], seed: int = 0,
             sample: int = 2000) -> tuple[int, list[KScore]]:
    """The chosen K and every K's scores (see the module doc for the criteria and the rule)."""
    features = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    ks = [k for k in k_range if 2 <= k < len(features) // 2]
    if not ks:
        raise UserError(f"no K in the range fits {len(features)} images (need 2 ≤ K < N/2)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    scored = order[:sample]
    scores = []
    for k in ks:
        labels = _kmeans(k, seed).fit_predict(features)
        if len(np.unique(labels[scored])) < 2:  # silhouette is undefined for one cluster
            silhouette = -1.0
        else:
            silhouette = float(silhouette_score(features[scored], labels[scored], metric="cosine"))
        first, second = (_kmeans(k, seed + 1 + i).fit(features[half]).predict(features) for i, half in enumerate(halves))
        scores.append(KScore(k, silhouette, float(davies_bouldin_score(features, labels)),
                             float(adjusted_rand_score(first, second))))
    _rank(scores)
    best = min(scores, key=lambda s: (s.mean_rank, s.k))
    return best.k, scores


def scores_table(scores: list[KScore]) -> list[dict]:
    """Rows for printing or JSON."""
    return [{key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(s).items()}
            for s in scores]


def format_scores(scores: list[KScore], chosen: int) -> str:
    """A small text table, the chosen K marked with '*'."""
    lines = ["    K  silhouette  davies_bouldin  stability  mean_rank"]
    lines += [f"{'*' if s.k == chosen else ' '}{s.k:4d}  {s.silhouette:10.4f}  {s.davies_bouldin:14.4f}  "
              f"{s.stability:9.4f}  {s.mean_rank:9.2f}" for s in scores]
    return "\n".join(lines)


def second_opinion(scores: list[KScore], chosen: int) -> str | None:
    """A line for the user when silhouette and stability agree on one K and the rule chose another: over
    a wide range Davies-Bouldin keeps improving with K and its rank can outvote both (three well separated
    groups of images, range 2..30: both picked 3, the rule 22). The rule is kept: on the MNIST subsets of
    benchmarks/k_recovery.py no alternative tried (highest silhouette; this agreement overriding the mean
    rank; products and thresholds of the criteria) did better across pixel spaces."""
    best = {name: min(scores, key=lambda s: (-getattr(s, name), s.k)).k for name in ("silhouette", "stability")}
    if best["silhouette"] != best["stability"] or best["silhouette"] == chosen:
        return None
    return (f"K = {best['silhouette']} has both the highest silhouette and the highest stability; the mean rank "
            f"chose {chosen}. If {best['silhouette']} groups fit your images, pass --k {best['silhouette']}")


def _kmeans(k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=3, random_state=seed)


def _rank(scores: list[KScore]) -> None:
    ranks = np.zeros(len(scores))
    for name, higher_is_better in CRITERIA.items():
        values = np.array([getattr(s, name) for s in scores])
        ranks += _ranks(-values if higher_is_better else values)
    for score, rank in zip(scores, ranks / len(CRITERIA)):
        score.mean_rank = float(rank)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 = smallest; ties share their mean rank."""
    from scipy.stats import rankdata

    return rankdata(values)
