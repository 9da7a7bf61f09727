"""Settings: defaults, [tool.drift_suite] in pyproject, overrides, and rejected typos."""

from __future__ import annotations

import pytest

from drift_suite.config import load_config, resolve_layers
from drift_suite.errors import DriftSuiteError


def test_auto_layers_are_the_middle_band():
    assert resolve_layers("auto", 30) == list(range(16, 27))
    assert resolve_layers("auto", 4) == [2, 3]
    assert resolve_layers("auto", 1) == [0]
    assert resolve_layers("3,-1", 30) == [3, 29]
    with pytest.raises(DriftSuiteError, match="0..29"):
        resolve_layers([30], 30)
    with pytest.raises(DriftSuiteError, match="comma-separated"):
        resolve_layers("middle", 30)


def test_pyproject_table_and_overrides(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.drift_suite]\nlayers = [3, 4]\n[tool.drift_suite.thresholds]\nk_sigma = 5.0\n"
        "[tool.drift_suite.generation]\nmax_new_tokens = 20\n"
    )
    config = load_config(tmp_path / "sub", {"thresholds": {"min_angle_deg": 9.0}})
    assert config.layers == (3, 4)
    assert config.thresholds.k_sigma == 5.0 and config.thresholds.min_angle_deg == 9.0
    assert config.generation.max_new_tokens == 20


def test_unknown_keys_are_rejected(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.drift_suite.thresholds]\nk_sigmaa = 5.0\n")
    with pytest.raises(DriftSuiteError, match="k_sigmaa"):
        load_config(tmp_path)
