"""An `Architecture` derived from the model's own structure, for the transformers models no short file describes.

Most text models share one shape: input embeddings, attention modules holding a query projection and reading their
`scaling` at each forward, projections, norms, a readout. What varies is named here once: the query projection's
names (and the row layout of the fused q/k/v projections that need one), the config fields that grow with width,
and the per-family facts no structure shows (`FAMILIES`: Gemma's √hidden embeddings and (1 + w) norms).

The planner (`hf_mup.plan`) then works from shapes as for the hand-described families, and refuses what it cannot
decide (`hf_mup.plan.check_decidable`). `hf-mup zoo` (`hf_mup.lab.zoo`) verifies each model type numerically.
"""
from __future__ import annotations

import functools
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MuPError
from .base import Architecture, QuerySlices

# What `hf-mup zoo` found (written by it as verified.json beside zoo.json, copied here): the model types that passed
# every check, and those that converted but failed one (refused below).
VERIFIED_FILE = Path(__file__).with_name("verified.json")

# Names of a separate query projection inside an attention module.
QUERY_PROJECTIONS = ("q_proj", "query", "q_lin", "Wq", "query_proj", "q")
# Norms applied to the queries after their projection (QK-norm): the attention factor is folded into them.
QUERY_NORMS = ("q_norm", "q_layernorm", "query_norm", "query_layernorm", "q_layer_norm")
# Norms shared by queries and keys: a factor folded into one would scale both (refused where the factor is not 1).
SHARED_QK_NORMS = ("qk_norm", "qk_layernorm")
# Config fields that are MLP or expert widths: they grow with width like the hidden size.
WIDTH_FIELDS = ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size",
                "expert_intermediate_size", "d_ff", "ffn_hidden_size", "dim_ff", "dff",
                "word_embed_proj_dim")  # (OPT's: the width of its input/output projections, the hidden size's)


def _heads_and_size(attn: Any) -> tuple[int, int]:
    """(query heads, head size) of an attention module, from its attributes or its config."""
    config: Any = getattr(attn, "config", None)
    heads = next((getattr(o, a) for o in (attn, config) for a in ("num_heads", "n_heads", "num_attention_heads")
                  if isinstance(getattr(o, a, None), int)), None)
    if heads is None:
        raise MuPError(f"hf_mup cannot read the head count of {type(attn).__name__}.")
    size = next((o.head_dim for o in (attn, config) if isinstance(getattr(o, "head_dim", None), int)), None)
    hidden = getattr(attn, "hidden_size", None) or getattr(config, "hidden_size", 0)
    return heads, size or hidden // heads


def _fused_first(child: str) -> Any:
    """Fused q/k/v rows laid out [queries | keys | values] (Phi-3's `qkv_proj`, MPT's and ModernBERT's `Wqkv`): the
    queries are the first heads × head size rows."""
    def rows(attn: Any) -> slice:
        heads, size = _heads_and_size(attn)
        return slice(0, heads * size)
    return child, rows


def _fused_per_head(child: str) -> Any:
    """Fused q/k/v rows laid out per head, [q_h | k_h | v_h] for each head h (GPT-NeoX, Persimmon, BLOOM)."""
    def rows(attn: Any) -> torch.Tensor:
        return _per_head_rows(*_heads_and_size(attn))
    return child, rows


def _per_head_rows(heads: int, d: int, group: int = 3, queries: int = 1) -> torch.Tensor:
    """Query rows of a fused projection laid out in groups of `group` head-sized blocks, the first `queries` of
    each group queries."""
    return (torch.arange(heads // queries)[:, None] * group * d + torch.arange(queries * d)).flatten()


def _falcon(attn: Any) -> torch.Tensor | slice:
    """Falcon's fused `query_key_value`: per key/value group [q … q | k | v] (new decoder architecture), [q | k | v]
    with one key/value head (multi-query), else per head [q_h | k_h | v_h]."""
    heads, d = attn.num_heads, attn.head_dim
    if attn.new_decoder_architecture:
        per_group = heads // attn.num_kv_heads
        return _per_head_rows(heads, d, per_group + 2, per_group)
    return slice(0, heads * d) if attn.multi_query else _per_head_rows(heads, d)


def _gpt_bigcode(attn: Any) -> torch.Tensor | slice:
    """GPT-BigCode's fused `c_attn`: [q | k | v] with one key/value head (multi-query), else per head."""
    return slice(0, attn.embed_dim) if attn.multi_query else _per_head_rows(attn.num_heads, attn.head_dim)


# model_type -> (fused projection's name, its query rows): where the query projection is fused with keys and values.
FUSED_QUERY = {"phi3": _fused_first("qkv_proj"), "gpt_neox": _fused_per_head("query_key_value"),
               "persimmon": _fused_per_head("query_key_value"), "bloom": _fused_per_head("query_key_value"),
               "mpt": _fused_first("Wqkv"), "modernbert": _fused_first("Wqkv"),
               "modernbert-decoder": _fused_first("Wqkv"), "falcon": ("query_key_value", _falcon),
               "gpt_bigcode": ("c_attn", _gpt_bigcode)}
# model_type -> settings of the Architecture that the model's structure does not show.
FAMILIES: dict[str, dict[str, Any]] = {
    # Gemma and CTRL multiply token embeddings by √hidden in their forward (Gemma's (1 + w) norms are found by
    # `norm_offset`).
    "gemma": {"sqrt_width_embeddings": True},
    "gemma2": {"sqrt_width_embeddings": True},
    "gemma3_text": {"sqrt_width_embeddings": True},
    "vaultgemma": {"sqrt_width_embeddings": True},
    "ctrl": {"sqrt_width_embeddings": True},  # (`inputs_embeds *= np.sqrt(d_model)`, token types too)
}
# A norm's forward computing (1 + w)·x̂: Gemma's `1.0 + self.weight`, Nemotron's `self.weight + 1.0`.
_ONE_PLUS_WEIGHT = re.compile(r"\b1(?:\.0)?\s*\+\s*self\.weight\b|\bself\.weight\s*\+\s*1(?:\.0)?\b")


_OFFSETS: dict[type, float] = {}  # by norm class


def norm_offset(norm: nn.Module) -> float:
    """1 for a norm whose gain acts as (1 + w) (read from its forward), else 0: folding a factor s into it sets
    1 + w' = s·(1 + w)."""
    cls = type(norm)
    if cls not in _OFFSETS:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _OFFSETS[cls] = 1.0 if _ONE_PLUS_WEIGHT.search(source) else 0.0
    return _OFFSETS[cls]


def _query_projection(attn: nn.Module, model_type: str) -> tuple[Any, Any] | None:
    """(the projection computing the queries, the index of its query rows or None for all) of an attention module."""
    if model_type in FUSED_QUERY:
        child, rows = FUSED_QUERY[model_type]
        proj = attn._modules.get(child)
        return None if proj is None else (proj, rows(attn))
    for name in QUERY_PROJECTIONS:
        proj = attn._modules.get(name)
        if isinstance(getattr(proj, "base_layer", proj), nn.Linear):
            return proj, None
    return None


def is_attention_module(model_type: str, module: nn.Module) -> bool:
    """An attention module: named so, and holding a query projection hf_mup can find."""
    name = type(module).__name__.lower()
    return "attention" in name and _query_projection(module, model_type) is not None


def is_router(name: str, module: nn.Module, config: Any) -> bool:
    """An MoE router or gate: a module named so (`mlp.gate`, `shared_expert_gate`, `router`, `router.layer`) whose
    weight maps the width to the number of experts (or to 1, a gate's value)."""
    parts = name.lower().split(".")
    named = any("router" in p or "gating" in p or p == "gate" or p.endswith("_gate") for p in parts) \
        or "Router" in type(module).__name__
    weight = getattr(module, "weight", None)
    if not named or not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        return False
    experts = {getattr(config, f, None) for f in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")}
    return weight.shape[0] in ({1} | {e for e in experts if isinstance(e, int)})


def reaches_scaling(module: nn.Module) -> bool:
    """Whether the module's forward reads a float `scaling` that hf_mup can set (else its scale is hard-coded)."""
    return isinstance(getattr(module, "scaling", None), float)


def _slices(proj: Any, rows: Any) -> QuerySlices:
    proj = getattr(proj, "base_layer", proj)  # a transformers Linear (or one inside an adapter wrapper)
    weight, bias = proj.weight, proj.bias
    index = slice(None) if rows is None else rows
    return [(weight, index)] + ([(bias, index)] if bias is not None else [])


def _query_slices(model_type: str, attn: nn.Module) -> QuerySlices:
    found = _query_projection(attn, model_type)
    return [] if found is None else _slices(*found)


def _query_fold_slices(model_type: str, attn: nn.Module) -> QuerySlices:
    if any(isinstance(attn._modules.get(name), nn.Module) for name in SHARED_QK_NORMS):
        return []  # nowhere to fold the factor into the queries alone
    for name in QUERY_NORMS:  # a norm after the projection would undo a factor folded into it
        norm = attn._modules.get(name)
        if norm is not None:
            return [(p, slice(None)) for p in norm.parameters(recurse=False)]
    return _query_slices(model_type, attn)


def _field(name: str, config: Any) -> int:
    return int(getattr(config, name))


def _model_classes(model_type: str) -> tuple[str, ...]:
    from transformers.models.auto import modeling_auto as auto

    names: list[str] = []
    for mapping in (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                    auto.MODEL_MAPPING_NAMES, auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES):
        found = mapping.get(model_type)
        for name in (found,) if isinstance(found, str) else found or ():
            if name not in names:
                names.append(name)
    return tuple(names)


@functools.cache
def describe(model_type: str, width_fields: tuple[str, ...], kv_heads_attr: str | None,
             head_dim_attr: str | None) -> Architecture:
    """The generic `Architecture` of a model type; `width_fields`: its config's MLP/expert width fields present."""
    return Architecture(
        model_type=model_type,
        model_classes=_model_classes(model_type),
        intermediate_size=functools.partial(_field, width_fields[0] if width_fields else "hidden_size"),
        intermediate_size_attr=width_fields[0] if width_fields else "",
        extra_width_fields=width_fields[1:],
        attention_classes=(),
        is_attention_module=functools.partial(is_attention_module, model_type),
        query_slices=functools.partial(_query_slices, model_type),
        query_fold_slices=functools.partial(_query_fold_slices, model_type),
        query_key=None,
        kv_heads_attr=kv_heads_attr,
        head_dim_attr=head_dim_attr,
        blocks="layers|layer|h|blocks",
        generic=True,
        **FAMILIES.get(model_type, {}),
    )


# model_type -> its MLP width fields, where their names are not among WIDTH_FIELDS.
FAMILY_WIDTH_FIELDS = {"distilbert": ("hidden_dim",)}


def generic_architecture(config: Any) -> Architecture | str:
    """The generic description of `config`'s model type, or why there is none."""
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder (hf_mup converts decoders and encoders)"
    if not _model_classes(config.model_type):
        return "transformers has no causal-LM, masked-LM or base model class for it"
    if not isinstance(getattr(config, "num_attention_heads", None), int):
        return "it has no attention heads (num_attention_heads): hf_mup describes transformers with attention"
    names = FAMILY_WIDTH_FIELDS.get(config.model_type, WIDTH_FIELDS)
    # No field: the modeling code derives the MLP width from the hidden size (BLOOM's 4×), which resizing scales
    # already; a fixed width that no field names would show up as a tensor check_decidable refuses.
    fields = tuple(f for f in names if isinstance(getattr(config, f, None), int))
    try:
        getattr(config, "head_dim", None)
    except (AttributeError, RuntimeError):  # (transformers' per-layer attributes raise on the global one)
        return "its attention shape varies per layer (per-layer configs): hf_mup describes one shape for all layers"
    kv = "num_key_value_heads" if isinstance(getattr(config, "num_key_value_heads", None), int) else None
    head_dim = "head_dim" if isinstance(vars(config).get("head_dim"), int) else None  # (not a derived property)
    check_verified(config.model_type)
    return describe(config.model_type, fields, kv, head_dim)


@functools.cache
def verified() -> dict[str, Any]:
    """`verified.json`: {"transformers": version, "verified": [model types], "failing": {model type: why}}."""
    data: dict[str, Any] = json.loads(VERIFIED_FILE.read_text())
    return data


CHECKING: list[bool] = []  # non-empty while `hf-mup zoo` checks models (it checks what it has not verified)


def check_verified(model_type: str, converted: bool = False) -> None:
    """Refuse a model type `hf-mup zoo` found failing a check; once it is `converted`, warn (once) if the walk has not
    checked it."""
    if CHECKING:
        return
    found = verified()
    if model_type in found["failing"]:
        raise MuPError(f"hf_mup's checks fail on model_type {model_type!r} (transformers {found['transformers']}): "
                       f"{found['failing'][model_type]}. It is refused rather than trained with wrong multipliers.")
    if converted and model_type not in found["verified"]:
        warnings.warn(f"hf_mup: model_type {model_type!r} is converted from its structure but was not verified "
                      f"(`hf-mup zoo` checked transformers {found['transformers']}): run `hf-mup zoo --only "
                      f"{model_type}` to check it here.", stacklevel=4)
