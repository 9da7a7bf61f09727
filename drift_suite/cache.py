"""Content-addressed cache of per-conversation measurements, so nothing is measured twice.

The key covers everything that changes the numbers: the weights' digest, the persona and question sets,
the design, the generation settings, the dtype and the package version. Entries are safetensors files
(tensors + string metadata): safe to load, never pickles.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save
from safetensors import safe_open

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".drift_cache")
TMP_SUFFIX = ".tmp"
"""Suffix of :func:`atomic_write_bytes`' temporary files (hidden, ``.<name>.<random>.tmp``)."""


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hex key for a JSON-able description of a measurement."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


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
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def load(cache_dir: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """The cached tensors and metadata for ``key``, or None (a corrupt entry counts as a miss)."""
    path = cache_dir / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except Exception:  # a truncated or foreign file: measure again and overwrite it
        return None


def store(cache_dir: Path, key: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path | None:
    """Cache an entry; a failed write (disk full, read-only dir) is a warning, never a failed measurement."""
    path = cache_dir / f"{key}.safetensors"
    try:
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
    except OSError as exc:
        log.warning("measurement cache %s not written (%s); continuing without it", path, write_failure(exc))
        return None
    return path


def discard(cache_dir: Path, key: str) -> None:
    """Remove an entry if present (entries superseded by a larger one)."""
    try:
        (cache_dir / f"{key}.safetensors").unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache keeps its stale entries; they are only ever misses or correct hits
