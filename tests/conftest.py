"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the repository (or ``$MONAI_DIFFREG_SHARED``);
it is present for developers and CI but not on users' machines, so tests that need it skip
with a clear reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The ``shared/data`` folder, or None when it is not available."""
    root = Path(os.environ.get("MONAI_DIFFREG_SHARED", REPO_ROOT.parent / "shared"))
    data = root / "data"
    return data if data.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``shared/data``; skips the test when the shared folder is absent."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("real data not available: ../shared/data (or $MONAI_DIFFREG_SHARED/data) not found")
    return data


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Tests use small tensors and run in parallel workers (``pytest -n 2``): one intra-op thread
    each avoids oversubscribing the cores, which slows such tests down by orders of magnitude."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)
    yield
