"""GPT-2: fused q/k/v in `c_attn` (a Conv1D, weight stored (in, out)); the query is its first third."""
from typing import Any, cast

import torch

from .base import Architecture, QuerySlices

# `attn` and `config` are transformers modules and configs whose attributes are set per model class: typed `Any`.


def _query_slices(attn: Any) -> QuerySlices:
    if attn.is_cross_attention:  # queries come from their own projection
        return [(attn.q_attn.weight, slice(None)), (attn.q_attn.bias, slice(None))]
    d = attn.embed_dim
    return [(attn.c_attn.weight, (slice(None), slice(0, d))), (attn.c_attn.bias, slice(0, d))]


def _query_key(attn: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # `.forward`: no hooks fire, so a coordinate check does not record the projection twice.
    q, k, _ = attn.c_attn.forward(hidden).split(attn.embed_dim, dim=-1)
    return q, k


def _intermediate_size(config: Any) -> int:
    return cast(int, config.n_inner if config.n_inner is not None else 4 * config.hidden_size)


GPT2 = Architecture(
    model_type="gpt2",
    model_classes=("GPT2LMHeadModel", "GPT2Model", "GPT2ForSequenceClassification"),
    intermediate_size=_intermediate_size,
    intermediate_size_attr="n_inner",
    attention_classes=("GPT2Attention",),
    query_slices=_query_slices,
    query_key=_query_key,
    tied_readout_norms={"GPT2LMHeadModel": "transformer.ln_f"},
    blocks="h",
    residual_outputs=("attn.c_proj", "crossattention.c_proj", "mlp.c_proj"),
    depth_scaled_init=("attn.c_proj.weight", "crossattention.c_proj.weight", "mlp.c_proj.weight"),  # σ/√(2·n_layer)
)
