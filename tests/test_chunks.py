"""labelless/chunks.py: a chunked pass fills every row of its output once, the last chunk partial."""
from __future__ import annotations

import torch

from labelless.chunks import fill_by_chunks


def test_every_row_is_filled_once_in_chunks_of_at_most_the_size():
    calls = []

    def rows(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        return torch.arange(start, stop) * 10

    out = torch.full((7,), -1, dtype=torch.long)
    assert fill_by_chunks(out, 3, rows) is out
    assert calls == [(0, 3), (3, 6), (6, 7)]
    assert out.tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert fill_by_chunks(torch.empty(0), 3, rows).numel() == 0 and len(calls) == 3  # no rows, no call
