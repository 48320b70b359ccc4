"""A memory bank of L2-normalised instance embeddings (Wu et al. 2018, "Unsupervised feature learning
via non-parametric instance discrimination"), as Super-AND uses it (Han et al. 2020, §3):

    p_i^j = exp(m_j·v_i/τ) / Σ_k exp(m_k·v_i/τ)        (Eq. 1, over all N entries)
    m_i ← normalise(μ·m_i + (1 − μ)·v_i),  μ = 0.5       (after each step)

The bank is N×D: at CIFAR scale (50,000×128 floats, 25 MB) every step's logits are one full-bank
matrix product, cheaper on a GPU than the NCE approximation the early papers needed.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.chunks import fill_by_chunks
from labelless.losses.clustering import entropy

DEFAULT_CHUNK = 1024  # bank rows per block of the N×N memory-against-memory pass


class MemoryBank(nn.Module):
    """N×D unit vectors, one per training sample, in a buffer (so they are checkpointed).

    The size is only known once the data is (the constructor of a method does not see it): the bank
    starts empty, `reset(n)` fills it with random unit vectors, and loading a checkpoint resizes it.
    """

    def __init__(self, dim: int = 128, momentum: float = 0.5) -> None:
        super().__init__()
        self.dim, self.momentum = dim, momentum
        self.register_buffer("memory", torch.empty(0, dim))

    def __len__(self) -> int:
        return len(self.memory)

    @torch.no_grad()
    def reset(self, n: int) -> None:
        """Random unit vectors (the released code draws uniform entries of about unit norm). Under DDP
        rank 0's draw is broadcast, because every rank updates its own copy with the same gathered rows."""
        memory = F.normalize(torch.randn(n, self.dim, device=self.memory.device), dim=1)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(memory, 0)
        self.memory = memory

    def logits(self, embeddings: Tensor, temperature: float) -> Tensor:
        """embeddings·Mᵀ/τ, M×N in float32 (bf16 would round the τ = 0.1 logits by up to 0.04).
        The bank is a constant to autograd: gradients reach the embeddings only."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return embeddings.float() @ self.memory.t() / temperature

    @torch.no_grad()
    def gram(self) -> Tensor:
        """MᵀM (D×D, float32). The relationship vectors r = E·Mᵀ (B×N, Super-AND Eq. 2) have the dot
        products r_i·r_j = e_iᵀ·MᵀM·e_j, so a loss of their normalised dot products (the augmentation
        loss, `isif_loss(..., metric=MᵀM)`) needs O(N·D²) a step instead of O(B²·N) forward and backward."""
        with torch.autocast(self.memory.device.type, enabled=False):
            memory = self.memory.float()
            return memory.t() @ memory

    @torch.no_grad()
    def update(self, indices: Tensor, embeddings: Tensor) -> None:
        """m_i ← normalise(μ·m_i + (1 − μ)·v_i) for each row i of `indices` (one embedding per index).

        Out of place: the old bank may still be held by autograd for the step's backward pass."""
        mixed = self.momentum * self.memory[indices] + (1 - self.momentum) * embeddings.float()
        self.memory = self.memory.index_copy(0, indices, F.normalize(mixed, dim=1))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "memory")
        if saved is not None and saved.shape != self.memory.shape:
            self.memory = torch.empty(saved.shape, dtype=self.memory.dtype, device=self.memory.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@torch.no_grad()
def bank_entropy(memory: Tensor, temperature: float, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """H(x_i) = −Σ_j p_i^j log p_i^j of softmax(m_i·Mᵀ/τ), memory against memory, self included
    (Super-AND Eq. 9, as its code computes it): N entropies, chunked over rows so that memory is
    O(chunk·N). Low entropy marks an isolated sample with few close neighbours."""
    bank = memory.float()
    return fill_by_chunks(torch.empty(len(bank), device=bank.device), chunk_size,
                          lambda start, stop: entropy((bank[start:stop] @ bank.t() / temperature).softmax(1)))
