"""Keep dependencies' noise out of drift_suite's own runs (the CLI, the demo, the plugin's measurement).

Only warnings raised from inside named dependency packages are filtered, and only while drift_suite's own
work runs: a user's tests see their warnings as before.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

NOISY_DEPENDENCIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "gguf")
"""Packages whose deprecation notices are about their own internals, which a drift_suite user cannot act on."""

QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)
"""Loggers that warn at import on a CPU machine about kernels drift_suite never uses (bitsandbytes' probe for
its optional ``kernels`` package: "Failed to load CPU gemm_4bit_forward", whenever PEFT or TRL import it)."""


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Ignore deprecation warnings raised inside :data:`NOISY_DEPENDENCIES`; raise :data:`QUIET_LOGGERS` to ERROR."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for package in NOISY_DEPENDENCIES:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=rf"{package}(\.|$)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
