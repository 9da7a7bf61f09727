"""Keep dependencies' noise out of drift_suite's own runs (the CLI, the demo, the plugin's measurement).

Only warnings raised from inside named dependency packages are filtered, and only while drift_suite's own
work runs: a user's tests see their warnings as before.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

NOISY_DEPENDENCIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "gguf")
"""Packages whose deprecation notices are about their own internals, which a drift_suite user cannot act on."""


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Ignore DeprecationWarning / FutureWarning / UserWarning raised inside :data:`NOISY_DEPENDENCIES`."""
    with warnings.catch_warnings():
        for package in NOISY_DEPENDENCIES:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=rf"{package}(\.|$)")
        yield
