"""Where a baseline or a result was made: the git commit (and whether the tree had changes) of the project.

Recorded beside the library versions, so a result can be traced to the code and config that produced it.
No git, or not a git work tree, is no error: the provenance is then ``None``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 10.0


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                                timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_provenance(directory: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git work tree holding ``directory`` (default: the cwd), or None.

    ``dirty`` counts changes to tracked files only: the reports, caches and baselines a run writes are often
    untracked, and would otherwise mark every CI checkout dirty.
    """
    if shutil.which("git") is None:
        return None
    folder = Path(directory) if directory is not None else Path.cwd()
    commit = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit or not commit.strip():
        return None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": bool(status.strip()) if status is not None else None}
