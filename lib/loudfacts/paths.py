"""Where the repo keeps things: its root, the cache, figures, and the shared data folder.

Paths never depend on the working directory: they are resolved from this file's location
(the repo is installed editable), so notebooks run from `notebooks/`, tests and papermill
all find the same folders. `LOUDFACTS_CACHE` moves the cache elsewhere, `LOUDFACTS_RESULTS`
the study's committed rows.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(*parts: str) -> Path:
    return REPO_ROOT.joinpath(*parts)


def cache_dir(*parts: str) -> Path:
    """`data/cache/<parts>` (or `$LOUDFACTS_CACHE/<parts>`), created on demand."""
    root = Path(os.environ.get("LOUDFACTS_CACHE", REPO_ROOT / "data" / "cache"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(*parts: str) -> Path:
    """`results/<parts>` (or `$LOUDFACTS_RESULTS/<parts>`), created on demand: the study's
    per-record rows, committed to git (unlike the cache)."""
    root = Path(os.environ.get("LOUDFACTS_RESULTS", REPO_ROOT / "results"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    path = Path(os.environ.get("LOUDFACTS_FIGURES", REPO_ROOT / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's short commit, with "+uncommitted changes" when `lib/`, `notebooks/`,
    `params/` or `hparams/` differ from it; "unknown" outside a git checkout. Read once per
    process."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lib", "notebooks",
                                "params", "hparams"], cwd=REPO_ROOT, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
