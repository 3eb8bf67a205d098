"""``one_thread``: run torch on one intra-op CPU thread for a while, then restore the count.

Two uses, one reason each. Reproducibility: a parallel CPU reduction splits its sum by thread count, so
its last bits depend on it; baselines generated on one thread are the same bytes whether the run was
serial or under pytest-xdist (where workers get fewer threads each). Speed on small tensors: on a busy
2-core machine two threads contend and spin more than they compute (small SVDs, the report's figures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside; the previous count restored afterwards, also on an exception."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["one_thread"]
