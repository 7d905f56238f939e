"""The architectures hf_mup supports. Adding one is a short file with an `Architecture` and a line here."""
from __future__ import annotations

from ..errors import MuPError
from .base import Architecture
from .bert import BERT
from .gpt2 import GPT2
from .llama import LLAMA_FAMILY
from .roberta import ROBERTA

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (GPT2, BERT, ROBERTA, *LLAMA_FAMILY)}


def supported_classes() -> list[str]:
    return [cls for arch in ARCHITECTURES.values() for cls in arch.model_classes]


def get_architecture(config: object) -> Architecture:
    """The `Architecture` for a transformers config, or a `MuPError` listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise MuPError(
            f"hf_mup does not support model_type {model_type!r}. Supported: "
            + ", ".join(f"{t} ({', '.join(a.model_classes)})" for t, a in ARCHITECTURES.items())
            + ". Adding one is a short file in hf_mup/architectures/."
        )
    return ARCHITECTURES[model_type]


__all__ = ["ARCHITECTURES", "Architecture", "get_architecture", "supported_classes"]
