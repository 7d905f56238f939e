"""The architectures hf_mup supports. Adding one is a short file with an `Architecture` and a line here."""
from __future__ import annotations

from ..errors import MuPError
from .base import Architecture
from .bert import BERT
from .generic import generic_architecture
from .gpt2 import GPT2
from .llama import LLAMA_FAMILY
from .roberta import ROBERTA

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (GPT2, BERT, ROBERTA, *LLAMA_FAMILY)}


def supported_classes() -> list[str]:
    return [cls for arch in ARCHITECTURES.values() for cls in arch.model_classes]


def get_architecture(config: object) -> Architecture:
    """The `Architecture` for a transformers config: described by hand (`ARCHITECTURES`), else derived from the model
    (`generic`, whose planning refuses what it cannot decide); a `MuPError` where neither applies."""
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    arch = generic_architecture(config) if model_type else "the config has no model_type"
    if isinstance(arch, str):
        raise MuPError(
            f"hf_mup cannot describe model_type {model_type!r}: {arch}. Described by hand: "
            + ", ".join(ARCHITECTURES) + "; the models verified in μP are listed in the docs (Supported models). "
            "Adding one is a short file in hf_mup/architectures/."
        )
    return arch


__all__ = ["ARCHITECTURES", "Architecture", "get_architecture", "supported_classes"]
