"""Optional dependencies ("extras"): check them before any work, and name the `pip install` line that brings them.

Usage:
    require("sweep", "optuna", "sqlalchemy", what="hf-mup sweep")   # MissingExtra (a MuPError) if one is missing

The extras (setup.cfg): [train] accelerate, datasets, tqdm (MuPTrainer, recipes/); [sweep] optuna, sqlalchemy,
matplotlib, tqdm (hf-mup sweep / transfer, coord-check's plot, the demo); [postgres] psycopg; [compress] torchao.
"""
from __future__ import annotations

import importlib.util
import sys

from .errors import MuPError

# What each extra brings (import names), for the message: which extra a missing module belongs to.
EXTRAS = {
    "train": ("accelerate", "datasets", "tqdm"),
    "sweep": ("optuna", "sqlalchemy", "matplotlib", "tqdm"),
    "postgres": ("psycopg",),
    "compress": ("torchao",),
}


class MissingExtra(MuPError, ImportError):
    """An optional dependency is not installed; the message names the `pip install 'hf_mup[extra]'` line."""


def installed(module: str) -> bool:
    """Whether `module` (a top-level import name) can be imported, without importing it."""
    top = module.split(".")[0]
    if top in sys.modules:
        return sys.modules[top] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require(extras: str | tuple[str, ...], *modules: str, what: str = "this") -> None:
    """Raise `MissingExtra` naming `what`, the missing modules and `pip install 'hf_mup[extras]'` when any of
    `modules` is not installed. `extras`: one name ("sweep") or several (("train", "sweep"))."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        names = (extras,) if isinstance(extras, str) else tuple(extras)
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'hf_mup[{','.join(names)}]'"
        )
