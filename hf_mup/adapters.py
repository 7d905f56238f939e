"""μP rules for PEFT's adapter tensors (LoRA, rsLoRA, DoRA), read off the stock layer each adapter wraps (the rules
and why: `hf_mup.rules`, "Adapters").

Usage: `hf_mup.get_plan(peft_model).adapters` maps each adapter tensor's name to its `TensorRule`;
`hf_mup.mup_param_groups(peft_model, lr)` trains them by it (`adapters="plain"`: every adapter tensor at the plain
LR, for comparison).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn
from transformers.pytorch_utils import Conv1D

from .rules import Kind, TensorRule

ADAPTER_RULES = ("mup", "plain")  # how `mup_param_groups` trains adapter tensors: by their μP rule, or at the plain LR
# A LoRA-family tensor's name in the bare model: `<layer>.<part>.<adapter name>[.weight]`.
_LORA = re.compile(r"^(?P<layer>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                   r"\.[^.]+(?:\.weight)?$")
# Parts on the layer's input side (A: fan-in → rank) and output side (B, DoRA's magnitude: → fan-out); an embedding's
# A is looked up by token, not summed over its input: no fan-in.
_INPUT_SIDE, _LOOKUP = ("lora_A",), ("lora_embedding_A",)


def stock_layer(module: nn.Module) -> nn.Module:
    """The stock layer inside a PEFT wrapper (a tuner layer's `base_layer`, a `modules_to_save` wrapper's
    `original_module`), or the module itself."""
    for attr in ("base_layer", "original_module"):
        inner = module._modules.get(attr)
        if inner is not None:
            return inner
    return module


def other_inits(model: nn.Module) -> dict[str, object]:
    """The `init_lora_weights` of each adapter of a PEFT model that inits A otherwise than PEFT's default (True:
    Kaiming, ∝ 1/√fan-in; False: random B too, for tests): "gaussian", the SVD-based inits, ..."""
    configs = getattr(model, "peft_config", None) or {}
    inits = {name: getattr(config, "init_lora_weights", True) for name, config in configs.items()}
    return {name: init for name, init in inits.items() if init is not True and init is not False}


def features(module: nn.Module) -> tuple[int, int] | None:
    """(input features, output features) of a layer an adapter can wrap; None for other modules."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return None


def adapter_rules(names: list[str], modules: Mapping[str, nn.Module], base: nn.Module,
                  delta: nn.Module) -> dict[str, TensorRule]:
    """The width rule of each LoRA-family tensor among `names` (canonical parameter names the stock model lacks),
    from the wrapped layer's features in the model (`modules`: by canonical name, a wrapper where there is one), the
    base and the wider delta model; other tensors get none.

    A width dimension is one that differs between base and delta, as for the stock tensors (`rules.classify`).
    """
    rules = {}
    for name in names:
        match = _LORA.match(name)
        layer = match and modules.get(match["layer"])
        if match is None or layer is None:
            continue
        try:
            sizes = [features(stock_layer(m)) for m in (layer, base.get_submodule(match["layer"]),
                                                         delta.get_submodule(match["layer"]))]
        except AttributeError:  # the wrapped layer is not in the stock model
            continue
        if any(s is None for s in sizes):
            continue
        side = 0 if match["part"] in _INPUT_SIDE else 1
        (size, base_size, delta_size) = (s[side] for s in sizes)  # type: ignore[index]  # (None ruled out above)
        grows = base_size != delta_size and match["part"] not in _LOOKUP
        if not grows:
            rules[name] = TensorRule(Kind.SCALAR)
        elif side == 0:
            rules[name] = TensorRule(Kind.DOWN, fanin_mult=size / base_size)
        else:
            rules[name] = TensorRule(Kind.INPUT, fanout_mult=size / base_size)
    return rules

