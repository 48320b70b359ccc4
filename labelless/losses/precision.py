"""Losses whose values bf16 would visibly round (τ = 0.1 logits, probabilities near 1, thresholds):
`float32_under_autocast` runs one in float32 even inside the trainer's bf16 autocast on the GPU."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

Fn = TypeVar("Fn", bound=Callable)


def _float32(value):
    return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value


def float32_under_autocast(fn: Fn) -> Fn:
    """`fn` with autocast switched off (for the device of its first tensor argument, which it must
    have) and its floating tensor arguments cast to float32; integer tensors (indices) and other
    arguments pass unchanged. Gradients reach the caller's tensors in their own dtype."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*map(_float32, args), **{name: _float32(value) for name, value in kwargs.items()})
    return wrapper  # type: ignore[return-value]
