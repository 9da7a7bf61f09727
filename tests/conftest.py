"""Shared fixtures: tiny in-process models and checkpoint dirs (seconds), and the real demo model (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import TINY_PERSONAS, save_tiny_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    # Tiny models run faster on one thread, and tests stay fast when another process shares the cores.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_personas():
    return TINY_PERSONAS


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny(tiny_checkpoint):
    from drift_suite.measure.models import load_model

    return load_model(tiny_checkpoint)
