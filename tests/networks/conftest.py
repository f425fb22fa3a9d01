"""Network tests run single-threaded: their tensors are tiny, and OpenMP threads only add
contention on a loaded machine (up to 100x slower on the shared 2-core CI box)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
