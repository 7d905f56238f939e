"""`fold`: bake every μP multiplier into the weights, leaving a stock transformers model with the same logits."""
from __future__ import annotations

from typing import cast

from transformers import PreTrainedModel

from .apply import PLAN_ATTR, WATCH_ATTR, fold_entries, remove_hooks, scale_parameters
from .errors import MuPError
from .model import CONFIG_KEY, get_plan, unwrap


def fold(model: PreTrainedModel) -> PreTrainedModel:
    """Fold μP into the weights, in place, and return the now stock model (no hooks, no `config.mup`).

    Usage: `plain = hf_mup.fold(model)` (deep-copy first to keep the μP model); `hf_mup.convert(plain, ...)` undoes it.

    The attention scale moves into the query projection, `input_mult` into the embedding tables, and the readout
    multiplier into the readout weight, or, for a readout tied to the input embedding, into the norm that feeds it
    (so the folded model's `last_hidden_state` is scaled, its logits are not). These are the weights a μP model's
    `state_dict()` and `save_pretrained` hold already: `fold` is for a model object without μP.
    """
    plan = get_plan(model)
    if plan is None:
        raise MuPError("fold needs a μP model; this one has no μP settings.")
    model = cast(PreTrainedModel, unwrap(model))  # the transformers model that carries the plan
    scale_parameters(model, fold_entries(model, plan))
    for name in plan.attention:
        attn = model.get_submodule(name)
        attn.scaling = attn.mup_stock_scaling
        del attn.mup_stock_scaling
    remove_hooks(model)
    del model.__dict__[PLAN_ATTR]
    model.__dict__.pop(WATCH_ATTR, None)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model
