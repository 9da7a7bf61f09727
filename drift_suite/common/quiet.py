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

KNOWN_MESSAGES = (
    # Raised once per scripted method while TRL / transformers import, from wherever the method lives.
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
    # transformers 5 renamed the attribute that TRL and PEFT still read, once per save.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)
"""Dependency warnings ignored by message, whichever module they are attributed to."""

QUIET_LOGGERS = {"bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",)}
"""Log messages dropped, by logger: bitsandbytes' import-time probe for its optional ``kernels`` package, which
warns on every CPU machine whenever PEFT or TRL import it, about kernels drift_suite never uses. Only these
messages: anything else the logger says still shows."""


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Ignore deprecation warnings raised inside :data:`NOISY_DEPENDENCIES` and :data:`KNOWN_MESSAGES`; drop
    :data:`QUIET_LOGGERS`' messages. Everything is restored on exit."""
    filters = [(logging.getLogger(name), _DropMessages(starts)) for name, starts in QUIET_LOGGERS.items()]
    with warnings.catch_warnings():
        for package in NOISY_DEPENDENCIES:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=rf"{package}(\.|$)")
        for message, category in KNOWN_MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, log_filter in filters:
            logger.addFilter(log_filter)
        try:
            yield
        finally:
            for logger, log_filter in filters:
                logger.removeFilter(log_filter)
