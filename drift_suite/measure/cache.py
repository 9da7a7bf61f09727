"""Content-addressed cache of per-conversation measurements, so nothing is measured twice.

The key covers everything that changes the numbers: the weights' digest, the persona and question sets,
the design, the generation settings, the dtype and the package version. Entries are safetensors files
(tensors + string metadata): safe to load, never pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open

from ..common.files import atomic_write_bytes, safetensors_bytes, write_failure

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".drift_cache")


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hex key for a JSON-able description of a measurement."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


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
