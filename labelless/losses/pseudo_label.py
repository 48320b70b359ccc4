"""Pseudo-label bookkeeping shared by the pseudo-label classification methods (end-to-end
pseudo-labels, DeepCluster): pure functions on label vectors."""
from __future__ import annotations

import torch
from torch import Tensor


def repair_empty_clusters(labels: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Give every empty cluster half of the currently largest cluster's samples, one empty cluster
    at a time (Chen et al. 2020, as the comparison study implements it: "taking the label with the
    most examples, and giving half of these examples to the label with zero examples").

    The half moved is drawn at random (from `generator`, else the global RNG of the CPU). Whenever a
    cluster is empty and N ≥ K, fewer than N clusters are in use, so the largest holds at least two
    samples: with N ≥ K every cluster ends non-empty. With N < K the repair stops when the largest
    cluster has a single sample. Returns a new N-vector; `labels` (N int64, values in 0..K−1) is not
    modified."""
    repaired = labels.clone()
    counts = torch.bincount(repaired, minlength=k).cpu()
    for empty in (counts == 0).nonzero().flatten().tolist():
        largest = int(counts.argmax())
        if counts[largest] < 2:
            break
        members = (repaired == largest).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator).to(members.device)
        moved = members[order[: len(members) // 2]]
        repaired[moved] = empty
        counts[largest] -= len(moved)
        counts[empty] = len(moved)
    return repaired


def inverse_frequency_weights(labels: Tensor, k: int) -> Tensor:
    """K class weights ∝ 1 / cluster size (0 for empty clusters), normalised to mean 1 over the
    non-empty clusters: a weighted loss then gives every cluster the same total weight, which is
    what DeepCluster's uniform sampling over clusters achieves in expectation."""
    counts = torch.bincount(labels, minlength=k).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return weights * (counts > 0).sum() / weights.sum()
