"""Repo-root conftest: the drift_suite plugin for a source checkout, and the demo-model fixture.

An installed drift_suite registers its plugin through the ``pytest11`` entry point; a checkout used
without ``pip install`` gets it from here instead (registering it twice would be an error).
"""

from importlib.metadata import entry_points
from pathlib import Path

import pytest

if not any(ep.value == "drift_suite.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["drift_suite.plugin"]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a safetensors dir (written once under demo/; $DRIFT_DEMO_MODEL reuses one)."""
    from drift_suite.common.errors import CheckpointError
    from drift_suite.measure.models import ensure_demo_model

    try:
        return ensure_demo_model(Path(__file__).parent / "demo" / "smollm2-135m-instruct")
    except CheckpointError as exc:
        pytest.skip(str(exc))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu``-marked tests skip cleanly without CUDA (``DRIFT_GPU_BENCH_DEVICE=cpu`` runs them on the CPU)."""
    import os

    import torch

    if torch.cuda.is_available() or os.environ.get("DRIFT_GPU_BENCH_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none available here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
