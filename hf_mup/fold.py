"""`fold`: bake every μP multiplier into the weights, leaving a stock transformers model with the same logits."""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .architectures import scale_slices
from .errors import MuPError
from .model import CONFIG_KEY, get_plan, remove_hooks, stock_attention_scaling, unwrap


@torch.no_grad()
def fold(model: PreTrainedModel) -> PreTrainedModel:
    """Fold μP into the weights, in place, and return the now stock model (no hooks, no `config.mup`).

    Usage: `plain = hf_mup.fold(model); plain.save_pretrained("out")` (deep-copy first to keep the μP model).

    The attention scale moves into the query projection, `input_mult` into the embedding tables, and the readout
    multiplier into the readout weight, or, for a readout tied to the input embedding, into the norm that feeds it
    (so the folded model's `last_hidden_state` is scaled, its logits are not). `pipeline`, `generate`, exporters
    and quantizers then see an ordinary model.
    """
    plan = get_plan(model)
    if plan is None:
        raise MuPError("fold needs a μP model; this one has no μP settings.")
    model = unwrap(model)
    for _, attn in plan.arch.attention_modules(model):
        stock = stock_attention_scaling(attn)
        scale_slices(plan.arch.query_slices(attn), attn.scaling / stock)
        attn.scaling = stock
        del attn.mup_stock_scaling
    input_mult = plan.mup.input_mult
    for name in plan.embeddings:
        model.get_submodule(name).weight.mul_(input_mult)
    for name, scale in plan.readouts.items():
        if name not in plan.tied_readouts:
            model.get_submodule(name).weight.mul_(scale)
            continue
        norm_path = plan.arch.tied_readout_norms.get(type(model).__name__)
        if norm_path is None:
            raise MuPError(
                f"Cannot fold the tied readout {name!r} of {type(model).__name__}: no norm feeding it is known. "
                "Add it to tied_readout_norms in hf_mup/architectures/."
            )
        norm = model.get_submodule(norm_path)
        norm_scale = scale / input_mult  # the shared weight now also carries input_mult
        norm.weight.mul_(norm_scale)
        if norm.bias is not None:
            norm.bias.mul_(norm_scale)
    remove_hooks(model)
    del model._mup_plan
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model
