"""What hf_mup must know of an architecture beyond parameter shapes: one small `Architecture` per model type."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import torch
from torch import nn

# An index into a tensor (`t[index]`): a slice of its first dimension, one slice per dimension, or the rows as a tensor
# of indices (a fused projection whose query rows interleave with keys and values, per head).
Index: TypeAlias = slice | tuple[slice, ...] | torch.Tensor
# (parameter, index) pairs: `param[index]` is the query projection's part of that parameter.
QuerySlices: TypeAlias = list[tuple[nn.Parameter, Index]]


@dataclass(frozen=True)
class Architecture:
    """The architecture-specific facts hf_mup needs.

    - `model_classes`: the transformers classes supported, the first one the default for `from_config`.
    - `intermediate_size`: reads the MLP width from a config; `intermediate_size_attr` is where to write it.
    - `attention_classes`: class names of attention modules, whose `scaling` hf_mup sets.
    - `query_slices`: the query projection inside an attention module (zero-init and folding of the scale).
    - `query_fold_slices`: where `fold` puts the attention scale, when not in `query_slices` (a norm after the
      query projection, as Qwen3's `q_norm`, would undo a scale on the projection).
    - `query_key`: the query and key projections of an attention module's input (for coordinate checks).
    - `tied_readout_norms`: per model class, the norm whose output only a tied readout reads; `fold` puts the
      readout multiplier there, since the tied weight is shared with the input embedding.
    - `embeddings_feed_norm`: the embeddings are summed straight into a norm (BERT), so `input_mult` cancels out.
    - `kv_heads_attr`: the config field of the key/value head count (grouped-query attention), if any.
    - `head_dim_attr`: the config field of an explicit head size (else hidden size / heads), if any.
    Depth scaling (`MuPConfig.base_num_layers`, CompleteP):
    - `blocks`: the name of the list of transformer blocks (`h.0.`, `layers.0.`, ...): a tensor under it is "in a block".
    - `residual_outputs`: inside a block, the modules whose output is a residual branch's (added to the stream).
    - `depth_scaled_init`: inside a block, the weights whose stock init std is ∝ 1/√layers (GPT-2's c_proj).
    - `pre_norm`: the blocks normalise their inputs (CompleteP's derivation); post-norm models (BERT) get a warning.
    Model-specific multipliers:
    - `sqrt_width_embeddings`: the model multiplies its token embeddings by √hidden (Gemma): μP divides that by
      √(hidden / base hidden), so the embeddings' output does not grow with width.
    - `extra_width_fields`: config fields besides the MLP width that grow with width (MoE experts' widths).
    - `generic`: derived from the model (`hf_mup.architectures.generic`), not described by hand.
    """

    model_type: str
    model_classes: tuple[str, ...]
    intermediate_size: Callable[[object], int]
    intermediate_size_attr: str
    attention_classes: tuple[str, ...]
    query_slices: Callable[[nn.Module], QuerySlices]
    query_key: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    tied_readout_norms: dict[str, str] = field(default_factory=dict)
    embeddings_feed_norm: bool = False
    query_fold_slices: Callable[[nn.Module], QuerySlices] | None = None
    kv_heads_attr: str | None = None
    head_dim_attr: str | None = None
    blocks: str = "layers"
    residual_outputs: tuple[str, ...] = ()
    depth_scaled_init: tuple[str, ...] = ()
    pre_norm: bool = True
    sqrt_width_embeddings: bool = False
    extra_width_fields: tuple[str, ...] = ()
    generic: bool = False
    is_attention_module: Callable[[nn.Module], bool] | None = None

    def is_attention(self, module: nn.Module) -> bool:
        """True for the attention classes and their subclasses (for a generic description: `is_attention_module`)."""
        if self.is_attention_module is not None:
            return self.is_attention_module(module)
        return any(c.__name__ in self.attention_classes for c in type(module).__mro__)

    def block_relative(self, name: str) -> str | None:
        """The part of a parameter or module name after its block (`h.3.attn.c_proj` -> `attn.c_proj`); None when the
        name is not inside a block. `blocks` may list alternatives (`layers|h`)."""
        match = re.search(rf"(?:^|\.)(?:{self.blocks})\.\d+\.(.+)$", name)
        return match.group(1) if match else None

    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if self.is_attention(m)]
