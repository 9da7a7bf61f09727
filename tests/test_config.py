"""Settings: defaults, [tool.drift_suite] in pyproject, overrides, and rejected typos."""

from __future__ import annotations

import pytest

from drift_suite.gate.config import load_config, resolve_layers
from drift_suite.common.errors import DriftSuiteError


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


def test_sides_from_pyproject_inline_table_and_options(tmp_path):
    from drift_suite.gate.config import Sides, config_from_options

    assert load_config(tmp_path).sides == Sides() == Sides("both", "both")
    (tmp_path / "pyproject.toml").write_text('[tool.drift_suite]\nsides = { projection = "toward_roles", accessibility = "more" }\n')
    assert load_config(tmp_path).sides == Sides(projection="toward_roles", accessibility="more")
    # an option overrides the families it names and keeps the others
    assert config_from_options(tmp_path, sides="projection=toward_assistant").sides == Sides("toward_assistant", "more")
    assert config_from_options(tmp_path, sides=" accessibility = less , projection=both").sides == Sides("both", "less")
    (tmp_path / "pyproject.toml").write_text('[tool.drift_suite.sides]\naccessibility = "less"\n')
    assert load_config(tmp_path).sides == Sides(accessibility="less")
    assert Sides("toward_roles", "more").to_option() == "projection=toward_roles,accessibility=more"
    assert Sides("toward_roles").describe() == (
        "projection fails toward_roles (toward_assistant only warns), accessibility fails both ways; rotation always fails")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("rotation=more", "rotation has no side"),
        ("persona=more", "unknown family 'persona'"),
        ("projection=toward_role", "projection = 'toward_role' is not a side; choose one of both, toward_assistant, toward_roles"),
        ("accessibility=toward_roles", "accessibility = 'toward_roles' is not a side; choose one of both, more, less"),
        ("projection", "expected FAMILY=SIDE pairs"),
    ],
)
def test_bad_sides_are_one_line_usage_errors(tmp_path, spec, message):
    from drift_suite.gate.config import config_from_options
    from drift_suite.common.errors import EXIT_USAGE, ConfigError

    with pytest.raises(ConfigError, match=message) as raised:
        config_from_options(tmp_path, sides=spec)
    assert raised.value.exit_code == EXIT_USAGE and "\n" not in str(raised.value)
    family, _, side = spec.partition("=")
    (tmp_path / "pyproject.toml").write_text(f'[tool.drift_suite]\nsides = {{ {family} = "{side}" }}\n' if side else
                                             f'[tool.drift_suite]\nsides = "{spec}"\n')
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path)
