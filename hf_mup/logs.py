"""What a run prints: progress bars only on a terminal, so that a log file shows hf_mup's progress and results.

Usage (the command lines and recipes call it first): `quiet_progress_bars()`; `progress_enabled()` is the default of
their progress options. (torchao's CUDA-kernel load failures and torch's _pytree Enum deprecation, printed when
torchao is imported, are filtered in `hf_mup/__init__.py`: import hf_mup before transformers.)
"""
from __future__ import annotations

import os
import sys
from typing import TextIO


def _tty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def progress_enabled() -> bool:
    """True only when both stdout and stderr are terminals: a progress bar written to a file or a pipe is a flood of
    carriage-returned lines."""
    return _tty(sys.stdout) and _tty(sys.stderr)


def quiet_progress_bars() -> bool:
    """Turn off the progress bars of transformers (loading and writing shards), huggingface_hub and datasets (map)
    when not `progress_enabled()`; returns `progress_enabled()`."""
    if progress_enabled():
        return True
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # before datasets reads its config
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
    if "datasets" in sys.modules:  # imported already: its config has read the environment
        try:
            sys.modules["datasets"].disable_progress_bars()
        except AttributeError:
            pass
    return False
