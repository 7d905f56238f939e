"""The Llama family (Llama, Mistral, Qwen2, Qwen3): one shape, described once. Separate `q_proj/k_proj/v_proj/o_proj`
Linears with `num_key_value_heads` key/value heads (grouped-query attention), a gated MLP, RMSNorm, an untied
`lm_head` by default (tied: the final `model.norm` feeds it). Qwen3 normalises each query and key head (`q_norm`,
`k_norm`: vectors of the head size, not width-scaled when the head size is fixed)."""
from typing import Any, cast

import torch

from .base import Architecture, QuerySlices

# `attn` and `config` are transformers modules and configs whose attributes are set per model class: typed `Any`.


def _query_slices(attn: Any) -> QuerySlices:
    q = attn.q_proj
    return [(q.weight, slice(None))] + ([(q.bias, slice(None))] if q.bias is not None else [])


def _query_fold_slices(attn: Any) -> QuerySlices:
    if hasattr(attn, "q_norm"):  # Qwen3: the per-head norm after q_proj would undo a scale folded into it
        return [(attn.q_norm.weight, slice(None))]
    return _query_slices(attn)


def _query_key(attn: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head queries and keys as the attention sees them before rotary positions: (..., heads, head_dim)."""
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    q, k = attn.q_proj.forward(hidden).view(shape), attn.k_proj.forward(hidden).view(shape)  # `.forward`: no hooks
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm.forward(q), attn.k_norm.forward(k)
    return q.flatten(-2), k.flatten(-2)


def _intermediate_size(config: Any) -> int:
    return cast(int, config.intermediate_size)


def llama_like(model_type: str, prefix: str) -> Architecture:
    return Architecture(
        model_type=model_type,
        model_classes=(f"{prefix}ForCausalLM", f"{prefix}Model", f"{prefix}ForSequenceClassification"),
        intermediate_size=_intermediate_size,
        intermediate_size_attr="intermediate_size",
        attention_classes=(f"{prefix}Attention",),
        query_slices=_query_slices,
        query_key=_query_key,
        query_fold_slices=_query_fold_slices,
        tied_readout_norms={f"{prefix}ForCausalLM": "model.norm"},
        kv_heads_attr="num_key_value_heads",
        head_dim_attr="head_dim",
        blocks="layers",
        residual_outputs=("self_attn.o_proj", "mlp.down_proj"),
    )


LLAMA_FAMILY = tuple(llama_like(t, p) for t, p in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"),
                                                     ("qwen3", "Qwen3")))
