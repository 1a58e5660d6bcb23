"""Where the repo keeps things: its root, the cache, figures, and the shared data folder.

Paths never depend on the working directory: they are resolved from this file's location
(the repo is installed editable), so notebooks run from `notebooks/`, tests and papermill
all find the same folders. `LOUDFACTS_CACHE` moves the cache elsewhere.
"""

from __future__ import annotations

import os
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


def figures_dir() -> Path:
    path = Path(os.environ.get("LOUDFACTS_FIGURES", REPO_ROOT / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path
