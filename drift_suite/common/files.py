"""Files written whole or not at all, and the one-line reason a write failed.

Baselines, caches, results and run manifests are shared files that a killed process must never leave half
written: every writer goes through :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save

TMP_SUFFIX = ".tmp"
"""Suffix of :func:`atomic_write_bytes`' temporary files (hidden, ``.<name>.<random>.tmp``)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Without it a power cut after the rename can leave the new name on an empty file.
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600: baselines and caches are shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_failure(exc: OSError) -> str:
    """Why a write failed, in a few words for a one-line message: "disk full" or the OS's reason."""
    return "disk full" if exc.errno == errno.ENOSPC else f"{type(exc).__name__}: {exc.strerror or exc}"


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """``tensors`` and string ``metadata`` as the bytes of one safetensors file (never a pickle)."""
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
