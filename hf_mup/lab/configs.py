"""Where the command line's configs come from: a config.json, a checkpoint folder, or (online) a Hub name.

Usage: `config = load_config("gpt2-config.json")`
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import MuPError

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def load_config(path: str):
    """A transformers config from a config.json file, a checkpoint folder or (online) a Hub name.

    Every failure is a `MuPError` naming `path`: no such file or folder, not a config, the Hub unreachable.
    """
    from transformers import AutoConfig

    if os.path.isfile(path):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise MuPError(f"{path} is not a readable JSON file ({e}).") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise MuPError(f"{path} has no model_type; it is not a transformers config.json.")
        try:
            return AutoConfig.for_model(data.pop("model_type"), **data)
        except (TypeError, ValueError) as e:
            raise MuPError(f"{path} is not a valid transformers config: {first_line(e)}") from None
    if not os.path.isdir(path) and (path.endswith(".json") or not HUB_NAME.fullmatch(path)):
        raise MuPError(f"{path}: no such file or folder (expected a config.json, a checkpoint folder or a Hub "
                       "model name).")
    if not os.path.isdir(path) and "/" not in path and not _in_hub_cache(path):
        # A bare name (my_ckpt) that is no folder here: a typo'd local path, far likelier than a legacy Hub name. Say
        # so at once instead of retrying the Hub for half a minute.
        raise MuPError(f"{path}: no such file or folder here (expected a config.json or a checkpoint folder; a Hub "
                       "model is named owner/name, e.g. openai-community/gpt2).")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        where = "the folder" if os.path.isdir(path) else "a local folder or a Hub model (offline?)"
        raise MuPError(f"cannot load a config from {path!r} as {where}: {first_line(e)}") from None


def _in_hub_cache(name: str) -> bool:
    """Whether the Hub cache here holds `name`'s config.json (a legacy Hub name such as gpt2, downloaded before)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False


def first_line(e: BaseException) -> str:
    """An exception's first non-empty line (its type's name if none): a library's reason, without its traceback."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
