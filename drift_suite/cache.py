"""Content-addressed cache of per-conversation measurements, so nothing is measured twice.

The key covers everything that changes the numbers: the weights' digest, the persona and question sets,
the design, the generation settings, the dtype and the package version. Entries are safetensors files
(tensors + string metadata): safe to load, never pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save
from safetensors import safe_open

DEFAULT_CACHE_DIR = Path(".drift_cache")


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hex key for a JSON-able description of a measurement."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600: baselines and caches are shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def store(cache_dir: Path, key: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    path = cache_dir / f"{key}.safetensors"
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
    return path
