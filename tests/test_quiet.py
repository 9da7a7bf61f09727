"""Dependencies' deprecation noise is filtered in drift_suite's own runs only, and only theirs."""

from __future__ import annotations

import logging
import warnings

from drift_suite.common.quiet import QUIET_LOGGERS, quiet_dependencies


def _warn_from(module: str) -> None:
    warnings.warn_explicit("old API", DeprecationWarning, filename=f"{module}.py", lineno=1, module=module)


def test_only_dependency_deprecations_are_filtered_and_only_inside():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_dependencies():
            _warn_from("torch.jit._script")
            _warn_from("transformers.modeling_utils")
            _warn_from("torchy_user_module")  # a name that merely starts like a dependency
            _warn_from("test_users_own")
            warnings.warn_explicit("a real problem", UserWarning, filename="torch/x.py", lineno=1, module="torch.x")
        _warn_from("torch.jit._script")  # outside: the user's filters apply again
    assert [(str(w.message), w.filename) for w in seen] == [
        ("old API", "torchy_user_module.py"),
        ("old API", "test_users_own.py"),
        ("a real problem", "torch/x.py"),
        ("old API", "torch.jit._script.py"),
    ]


def test_bitsandbytes_cpu_probe_is_silenced_inside_and_restored():
    name, (start,) = next(iter(QUIET_LOGGERS.items()))
    logger = logging.getLogger(name)
    probe = logging.LogRecord(name, logging.WARNING, "ops.py", 1, start + " from kernels-community", (), None)
    before = list(logger.filters)
    with quiet_dependencies():
        assert not logger.filter(probe)
    assert logger.filters == before and logger.filter(probe)
