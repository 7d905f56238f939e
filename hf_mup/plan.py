"""Planning: from a model's parameter shapes to a μP rule per tensor. Nothing here changes a model.

Usage: `plan = make_plan(model, MuPConfig(base_hidden_size=256))` — then `hf_mup.apply` carries it out.

The base model (hidden size `base_hidden_size`) and a 2× wider "delta" model are built on the meta device; a dimension
that differs between the two is a width dimension (as microsoft/mup's `delta` shapes). `rules.classify` turns the
shapes into a `TensorRule`.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import TypeAlias, TypeVar, cast

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

from .adapters import adapter_rules, stock_layer
from .architectures import Architecture, get_architecture, supported_classes
from .architectures.base import Index
from .architectures.generic import check_verified, is_router, reaches_scaling
from .config import MuPConfig
from .errors import MuPError
from .rules import Kind, TensorRule, attention_scale_factor, classify

_M = TypeVar("_M", bound=nn.Module)
# (fan-in dim, fan-out dim) of a parameter; None: it has none (a vector has only a fan-out, a scalar neither).
Layout: TypeAlias = tuple[int | None, int | None]

# Segments that wrappers insert into parameter and module names: FSDP1, activation checkpointing, torch.compile,
# and PEFT's adapter layers (`<layer>.base_layer.weight` is the stock `<layer>.weight`).
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "base_layer.")


# PEFT's `modules_to_save` wrapper (a task head trained beside the adapters): the stock layer as `original_module`,
# a trained copy per adapter as `modules_to_save.<adapter>`; both stand for the stock layer.
_SAVED_COPY = re.compile(r"\.(?:original_module|modules_to_save\.[^.]+)(?=\.|$)")


def canonical_name(name: str) -> str:
    """A parameter's (or module's) name in the bare transformers model, whatever wrappers it went through."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    if "module" in name:
        name = _SAVED_COPY.sub("", name)
    return name.removesuffix(".base_layer")


@dataclass
class MuPPlan:
    """What hf_mup decided for one model: a rule per parameter and the modules that get multipliers.

    Names are relative to the transformers model, without wrapper segments (`canonical_name`).
    """

    mup: MuPConfig
    arch: Architecture
    model_class: str  # the supported transformers class the model is (or subclasses)
    head_dim: int
    base_head_dim: int
    rules: dict[str, TensorRule]  # by name in `model.named_parameters()`
    extra: list[str] = field(default_factory=list)  # parameters the stock model lacks (adapters, new heads)
    adapters: dict[str, TensorRule] = field(default_factory=dict)  # the LoRA-family ones among them: their rules
    readouts: dict[str, float] = field(default_factory=dict)  # readout module -> scale on its input
    tied_readouts: set[str] = field(default_factory=set)  # readouts whose weight is an input embedding's
    embeddings: list[str] = field(default_factory=list)  # embedding modules whose output gets input_mult
    attention: list[str] = field(default_factory=list)  # attention modules whose `scaling` μP sets
    depth_mult: float = 1.0  # m_L = layers / base layers under depth scaling, else 1
    residuals: list[str] = field(default_factory=list)  # modules whose output is a residual branch's (depth scaling)
    # projection module -> the index of its outputs that are queries (None: all), where folding puts the attention
    # factor: an adapter's output on those rows must be folded alike
    query_outputs: dict[str, Index | None] = field(default_factory=dict)
    routers: set[str] = field(default_factory=set)  # MoE routers and gates: readouts inside a block, never zero-init
    readout_norm: str | None = None  # the norm feeding a tied readout, where folding puts its multiplier
    hidden_size: int = 0  # the model's

    @property
    def input_mult(self) -> float:
        """The multiplier on the embeddings' output: `input_mult`, over √(hidden / base) where the model multiplies
        its embeddings by √hidden itself (Gemma), so that their output does not grow with width."""
        correction = (self.mup.base_hidden_size / self.hidden_size) ** 0.5 if self.arch.sqrt_width_embeddings else 1.0
        return self.mup.input_mult * correction

    @property
    def residual_scale(self) -> float:
        """The multiplier on each residual branch's output: m_L^-α (1 without depth scaling)."""
        scale: float = self.depth_mult**-self.mup.depth_alpha  # (float ** float is typed Any: complex if < 0)
        return scale

    @property
    def attention_scale_factor(self) -> float:
        return attention_scale_factor(self.mup.attn_mult, self.head_dim, self.base_head_dim, self.mup.attention_scale)

    @property
    def readout_init_scale(self) -> dict[str, float]:
        """Untied readout -> factor on its stock init: √m for the standard init (effective std ∝ 1/√m under the
        1/m multiplier), 1 for μP's."""
        untied = self.readouts.keys() - self.tied_readouts
        if self.mup.readout_init != "standard":
            return {name: 1.0 for name in untied}
        untied -= self.routers  # a router keeps its stock init (μP's readout init under the 1/m multiplier)
        return {**{name: 1.0 for name in self.routers},
                **{name: self.rules[f"{name}.weight"].fanin_mult ** 0.5 if f"{name}.weight" in self.rules else 1.0
                   for name in untied}}


# ------------------------------------------------------------------------------------------ classes and configs


def supported_class_name(model_class: type, config: PretrainedConfig, arch: Architecture) -> str:
    """The supported transformers class `model_class` is or subclasses (user subclasses work); a `MuPError` else."""
    config_class = getattr(model_class, "config_class", None)
    if config_class is not None and getattr(config_class, "model_type", config.model_type) != config.model_type:
        raise MuPError(
            f"{model_class.__name__} is a {config_class.model_type!r} model but the config is {config.model_type!r}: "
            f"pass a model class of the config's architecture ({', '.join(arch.model_classes)})."
        )
    name = next((c.__name__ for c in model_class.__mro__ if c.__name__ in arch.model_classes), None)
    if name is None:
        classes = arch.model_classes if arch.generic else supported_classes()
        raise MuPError(
            f"hf_mup does not support {model_class.__name__}. Supported classes: {', '.join(classes)}."
        )
    return name


def _head_dims(config: PretrainedConfig, mup: MuPConfig, arch: Architecture) -> tuple[int, int, int]:
    """(head_dim, base_head_dim, base_num_heads), with the errors a user can act on."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    explicit = getattr(config, arch.head_dim_attr, None) if arch.head_dim_attr else None
    if explicit is None and hidden % heads:
        raise MuPError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}.")
    head_dim, base = explicit or hidden // heads, mup.base_hidden_size
    base_heads, base_head_dim = mup.base_num_attention_heads, mup.base_head_dim
    if heads * head_dim != hidden:  # e.g. Qwen3: heads × head size is not the hidden size
        if base_heads is not None or base_head_dim is not None:
            raise MuPError(
                f"The model's heads × head size ({heads} × {head_dim}) is not its hidden size {hidden}: hf_mup scales "
                "such a model with a fixed head size only. Leave base_num_attention_heads and base_head_dim unset."
            )
        if (heads * base) % hidden:
            raise MuPError(
                f"The base model would have {heads} × {base} / {hidden} attention heads, not a whole number: choose "
                f"a base_hidden_size that is a multiple of {hidden // math.gcd(heads, hidden)}."
            )
        return head_dim, head_dim, heads * base // hidden
    if base_heads is None and base_head_dim is None:
        base_head_dim = head_dim  # head size kept fixed: the number of heads scales with width
    if base_heads is not None:
        if base % base_heads:
            raise MuPError(
                f"base_hidden_size {base} is not divisible by base_num_attention_heads {base_heads}; "
                "choose a base width that is a multiple of the base head count."
            )
        if base_head_dim is not None and base_head_dim * base_heads != base:
            raise MuPError(
                f"Mismatched head sizes: base_head_dim {base_head_dim} × base_num_attention_heads {base_heads} "
                f"!= base_hidden_size {base}; give only one of the two."
            )
        base_head_dim = base // base_heads
    assert base_head_dim is not None  # set by one of the two branches above
    if base % base_head_dim:
        raise MuPError(
            f"base_hidden_size {base} is not a multiple of the head size {base_head_dim}: the base model cannot "
            f"have a whole number of heads. Choose a base width that is a multiple of {base_head_dim}, or set "
            "base_num_attention_heads / base_head_dim."
        )
    return head_dim, base_head_dim, base // base_head_dim


def _base_kv_heads(config: PretrainedConfig, mup: MuPConfig, arch: Architecture, base_heads: int) -> tuple[int, int]:
    """(key/value heads of the base model, of the 2× delta model) under grouped-query attention.

    By default the base keeps the model's query/key-value ratio (the key/value heads scale with width like the
    query heads); one key/value head (multi-query) stays one at every width; `base_num_key_value_heads` fixes it.
    """
    heads = config.num_attention_heads
    kv = (getattr(config, arch.kv_heads_attr, None) if arch.kv_heads_attr else None) or heads
    base_kv = mup.base_num_key_value_heads
    if base_kv is None:
        if kv == 1:
            return 1, 1  # multi-query attention stays multi-query
        if (kv * base_heads) % heads:
            raise MuPError(
                f"num_key_value_heads {kv} for {heads} query heads: the base model has {base_heads} query heads and "
                f"cannot keep the ratio {heads // math.gcd(heads, kv)}:{kv // math.gcd(heads, kv)}. Set "
                "base_num_key_value_heads (e.g. 1 for one key/value head at every width), or choose a base width "
                "whose head count keeps the ratio."
            )
        base_kv = kv * base_heads // heads
    if base_heads % base_kv:
        raise MuPError(f"base_num_key_value_heads {base_kv} does not divide the base model's {base_heads} query heads.")
    fixed = base_kv == kv and heads != base_heads
    return base_kv, base_kv if fixed else 2 * base_kv


def _resized_config(config: PretrainedConfig, arch: Architecture, hidden: int, heads: int, intermediate: int,
                    head_dim: int, kv_heads: int) -> PretrainedConfig:
    resized = copy.deepcopy(config)
    resized.hidden_size = hidden
    resized.num_attention_heads = heads
    if arch.intermediate_size_attr:  # (else the code derives the MLP width from the hidden size)
        setattr(resized, arch.intermediate_size_attr, intermediate)
    for name in arch.extra_width_fields:  # (MoE experts' widths) as the MLP's: × the width ratio
        value = getattr(config, name)
        if (value * hidden) % config.hidden_size:
            raise MuPError(f"{name} {value} × {hidden} / {config.hidden_size} is not a whole number: choose a "
                           f"base_hidden_size that divides it.")
        setattr(resized, name, value * hidden // config.hidden_size)
    if arch.head_dim_attr and getattr(config, arch.head_dim_attr, None) is not None:
        setattr(resized, arch.head_dim_attr, head_dim)
    if arch.kv_heads_attr and getattr(config, arch.kv_heads_attr, None) is not None:
        setattr(resized, arch.kv_heads_attr, kv_heads)
    return resized


def base_configs_for(config: PretrainedConfig, mup: MuPConfig,
                     arch: Architecture | None = None) -> tuple[PretrainedConfig, PretrainedConfig]:
    """Configs of the base model (hidden size `mup.base_hidden_size`) and of a 2× wider "delta" model.

    Raises a `MuPError` naming the fix when the base does not fit the model. `arch`: the config's, if known already.
    """
    arch = arch or get_architecture(config)
    hidden, base = config.hidden_size, mup.base_hidden_size
    if base > hidden:
        raise MuPError(
            f"base_hidden_size {base} is larger than the model's hidden_size {hidden}; the base is the small proxy "
            f"width the hyperparameters were tuned at: choose base_hidden_size <= {hidden}."
        )
    _, base_head_dim, base_heads = _head_dims(config, mup, arch)
    base_kv, delta_kv = _base_kv_heads(config, mup, arch, base_heads)
    intermediate = arch.intermediate_size(config)
    base_intermediate = mup.base_intermediate_size
    if base_intermediate is not None and not arch.intermediate_size_attr:
        raise MuPError(f"{config.model_type}'s MLP width follows its hidden size in the modeling code (no config field): "
                       "leave base_intermediate_size unset.")
    if base_intermediate is None:
        if (intermediate * base) % hidden:
            raise MuPError(
                f"The base intermediate size {intermediate} × {base} / {hidden} is not a whole number; "
                "set base_intermediate_size explicitly."
            )
        base_intermediate = intermediate * base // hidden
    if base_intermediate > intermediate:
        raise MuPError(f"base_intermediate_size {base_intermediate} is larger than the model's {intermediate}.")
    return (
        _resized_config(config, arch, base, base_heads, base_intermediate, base_head_dim, base_kv),
        _resized_config(config, arch, 2 * base, 2 * base_heads, 2 * base_intermediate, base_head_dim, delta_kv),
    )


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (LayerNorm, RMSNorm, Qwen3's q/k norms), by class name as transformers names them, and a
    leaf (not `RobertaPreLayerNormLMHead`, a head whose class name says "Norm")."""
    return "Norm" in type(module).__name__ and not module._modules


def norm_gains(model: nn.Module) -> list[nn.Parameter]:
    """The gains (`weight`) of every normalisation layer."""
    return [w for m in model.modules() if is_norm(m) and isinstance(w := getattr(m, "weight", None), nn.Parameter)]


def param_shape(p: torch.Tensor) -> torch.Size:
    """A parameter's real shape, also under DeepSpeed ZeRO-3, whose partitioned parameters are empty tensors with the
    shape in `ds_shape`."""
    ds_shape = getattr(p, "ds_shape", None)
    return p.shape if ds_shape is None else ds_shape


def meta_model(model_class: type[_M], config: PretrainedConfig) -> _M:
    """`model_class(config)` on the meta device: shapes without memory. The RNG is left as it was."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return model_class(config)


# ------------------------------------------------------------------------------------------------- planning


def _layouts(model: nn.Module) -> dict[int, Layout]:
    """(fan-in dim, fan-out dim) of each parameter, by id, from the module that owns it."""
    layouts: dict[int, Layout] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            ndim = len(param_shape(p))
            layout: Layout
            if ndim == 0:
                layout = (None, None)
            elif ndim == 1:
                layout = (None, 0)
            elif isinstance(module, nn.Embedding):
                layout = (None, 1)  # a lookup table: (vocab, width), no fan-in
            elif isinstance(module, Conv1D):
                layout = (0, 1)  # GPT-2's Conv1D stores (in, out)
            elif ndim == 2 and isinstance(getattr(module, "is_transposed", None), bool):
                layout = (None, 1)  # MoE experts' biases, stacked: (experts, out)
            elif ndim == 2:
                layout = (1, 0)  # nn.Linear: (out, in)
            elif ndim == 3 and isinstance(getattr(module, "is_transposed", None), bool):
                # transformers' MoE experts, stacked: (experts, out, in), or (experts, in, out) when transposed
                layout = (1, 2) if module.is_transposed else (2, 1)
            else:
                raise MuPError(f"hf_mup cannot scale the {ndim}-d parameter {pname!r} of {type(module).__name__}.")
            # A tied weight is an input embedding first: an Embedding owner decides its layout.
            if id(p) not in layouts or isinstance(module, nn.Embedding):
                layouts[id(p)] = layout
    return layouts


def _depth_mult(config: PretrainedConfig, mup: MuPConfig, arch: Architecture) -> float:
    """m_L = layers / base layers under depth scaling (1 without), with a warning where CompleteP is not derived."""
    if mup.base_num_layers is None:
        return 1.0
    if not arch.residual_outputs:
        raise MuPError(f"hf_mup has no depth scaling for {arch.model_type}: its residual branches are not described "
                       "(Architecture.residual_outputs). Leave base_num_layers unset.")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise MuPError("scale_attn_by_inverse_layer_idx divides layer l's attention logits by l + 1, which a shallow "
                       "proxy never sees: turn it off with depth scaling (base_num_layers).")
    if not arch.pre_norm and mup.base_num_layers != config.num_hidden_layers:
        warnings.warn(f"Depth scaling (CompleteP) is derived for pre-norm transformers; {arch.model_type} normalises "
                      "after each residual add (post-norm), where its depth transfer is untested.", stacklevel=4)
    mult: float = config.num_hidden_layers / mup.base_num_layers
    return mult


def _query_outputs(model: nn.Module, arch: Architecture, layouts: dict[int, Layout]) -> dict[str, Index | None]:
    """Projection module (canonical name) -> the index of its output features that folding scales by the attention
    factor (None: all of them); empty where folding puts that factor into a norm (Qwen3's q_norm), not a projection."""
    owners = {id(p): canonical_name(mname) for mname, m in model.named_modules()
              for pname, p in m.named_parameters(recurse=False) if pname == "weight"}
    out: dict[str, Index | None] = {}
    for _, attn in arch.attention_modules(model):
        for p, index in (arch.query_fold_slices or arch.query_slices)(attn):
            if id(p) not in owners or len(param_shape(p)) != 2:  # a bias (its weight covers the module), a norm
                continue
            fan_out = layouts[id(p)][1]
            if isinstance(index, torch.Tensor):  # rows as indices (fused per-head q/k/v)
                out[owners[id(p)]] = index
                continue
            index = index if isinstance(index, tuple) else (index,)
            rows = index[fan_out] if fan_out is not None and fan_out < len(index) else slice(None)
            out[owners[id(p)]] = None if rows == slice(None) else rows
    return out


def make_plan(model: nn.Module, mup: MuPConfig, arch: Architecture | None = None) -> MuPPlan:
    """Classify every parameter of `model` by comparing shapes with the base and delta models (meta device).

    Parameters the stock model of this config does not have (adapters a wrapper added, e.g. PEFT's LoRA) get no rule.
    `arch`: the model's `Architecture`, if the caller has looked it up already (it is looked up once per conversion).
    """
    config = cast(PretrainedConfig, model.config)  # a transformers model's
    arch = arch or get_architecture(config)
    class_name = supported_class_name(type(model), config, arch)
    head_dim, base_head_dim, _ = _head_dims(config, mup, arch)
    base, delta = (meta_model(type(model), c) for c in base_configs_for(config, mup, arch))
    base_params, delta_params = dict(base.named_parameters()), dict(delta.named_parameters())
    model_params = {canonical_name(n) for n, _ in model.named_parameters()}
    if (only_base := sorted(base_params.keys() - model_params)) or base_params.keys() != delta_params.keys():
        raise MuPError(
            f"The base model (hidden size {mup.base_hidden_size}) of this {config.model_type} model has other "
            f"tensors than the model ({', '.join((only_base or sorted(base_params.keys() ^ delta_params.keys()))[:4])}"
            "): a config field that should grow with the width stays fixed, so the model changes shape as it "
            "narrows. hf_mup cannot compare their shapes."
        )
    layouts = _layouts(model)
    attention = [canonical_name(n) for n, m in model.named_modules() if arch.is_attention(m)]

    def in_attention(name: str) -> bool:  # a projection inside an attention module is never the network's output
        return any(name.startswith(a + ".") for a in attention)

    depth_mult = _depth_mult(config, mup, arch)
    rules: dict[str, TensorRule] = {}
    extra: list[str] = []
    for raw_name, p in model.named_parameters():
        name = canonical_name(raw_name)
        if name not in base_params:
            extra.append(name)  # an adapter's tensor, or a head the stock model lacks: no μP rule
            continue
        fan_in, fan_out = layouts[id(p)]
        rule = (TensorRule(Kind.SCALAR) if fan_out is None else
                classify(tuple(param_shape(p)), tuple(base_params[name].shape), tuple(delta_params[name].shape),
                         fan_in, fan_out))
        if rule.kind is Kind.READOUT and in_attention(name):
            # A projection inside attention with a fixed fan-out (multi-query k/v: one head at every width) is not
            # the network's output: it gets the hidden rule (σ/√m init, η/m Adam LR), as in Lingle (2024).
            rule = replace(rule, kind=Kind.HIDDEN)
        rules[name] = rule

    def with_width_and_depth(name: str, rule: TensorRule) -> TensorRule:  # Adam's ε and CompleteP's factors
        if mup.eps_width_scaling and rule.kind is not Kind.SCALAR:
            rule = replace(rule, eps_width_mult=config.hidden_size / mup.base_hidden_size)
        in_block = arch.block_relative(name)
        if depth_mult != 1.0 and in_block is not None:
            rule = replace(rule, depth_mult=depth_mult, depth_alpha=mup.depth_alpha,
                           stock_init_depth_power=0.5 if in_block in arch.depth_scaled_init else 0.0)
        return rule

    rules = {name: with_width_and_depth(name, rule) for name, rule in rules.items()}
    adapters: dict[str, TensorRule] = {}
    if extra:  # adapter tensors: their rules from the layers they wrap
        modules: dict[str, nn.Module] = {}
        for raw_name, module in model.named_modules():
            modules.setdefault(canonical_name(raw_name), module)  # (an adapter's wrapper before the layer inside)
        adapters = {name: with_width_and_depth(name, rule)
                    for name, rule in adapter_rules(extra, modules, base, delta).items()}
    plan = MuPPlan(mup, arch, class_name, head_dim, base_head_dim, rules, extra, adapters, depth_mult=depth_mult,
                   hidden_size=config.hidden_size)
    plan.query_outputs = _query_outputs(model, arch, layouts)
    base_modules = dict(base.named_modules())
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    param_names = {id(p): canonical_name(n) for n, p in model.named_parameters()}  # (a tied weight: its first name)
    for raw_name, module in model.named_modules():
        name = canonical_name(raw_name)
        if raw_name != name or name not in base_modules:
            continue  # a wrapper's inner module (listed at the wrapper), or a module the stock model lacks
        if mup.base_num_layers is not None and arch.block_relative(name) in arch.residual_outputs:
            plan.residuals.append(name)
        stock = stock_layer(module)  # the stock layer inside an adapter wrapper
        if isinstance(stock, nn.Embedding) and plan.rules[param_names[id(stock.weight)]].kind is Kind.INPUT:
            plan.embeddings.append(name)
        elif arch.is_attention(module):
            plan.attention.append(name)
        elif isinstance(stock, nn.Linear):
            # Judge the Linear from its own (out, in) view: a tied weight is listed under its embedding's name.
            as_linear = classify(
                tuple(param_shape(stock.weight)),
                tuple(cast(torch.Tensor, base.get_submodule(name).weight).shape),
                tuple(cast(torch.Tensor, delta.get_submodule(name).weight).shape), 1, 0,
            )
            readout_here = arch.block_relative(name) is None or is_router(name, stock, config)  # (in a block: a router)
            if as_linear.kind is Kind.READOUT and not in_attention(name) and readout_here:
                plan.readouts[name] = mup.output_mult / as_linear.fanin_mult
                if id(stock.weight) in embedding_ids:
                    plan.tied_readouts.add(name)
        elif is_router(name, stock, config) and (own := plan.rules.get(f"{name}.weight")) and own.kind is Kind.READOUT:
            plan.readouts[name] = mup.output_mult / own.fanin_mult  # a router module's own weight (Mixtral's)
    plan.routers = {n for n in plan.readouts if is_router(n, getattr(m := model.get_submodule(n), "base_layer", m), config)}
    plan.readout_norm = _readout_norm(model, plan)
    check_decidable(model, plan, config, layouts)
    if arch.generic:
        check_verified(arch.model_type, converted=True)
    return plan


def _readout_norm(model: nn.Module, plan: MuPPlan) -> str | None:
    """The norm whose output only the tied readout reads: described by hand, else the norm outside the blocks and the
    embeddings nearest the readout (in its parent, else further up; of two there, the one registered last before the
    readout): an MLM head's transform norm, a decoder's final norm. None when there is none."""
    if not plan.tied_readouts:
        return None
    if not plan.arch.generic:
        return plan.arch.tied_readout_norms.get(plan.model_class)
    readout = min(plan.tied_readouts)
    order = {canonical_name(n): i for i, (n, _) in enumerate(model.named_modules())}
    path = readout.split(".")[:-1]
    while True:
        prefix = ".".join(path)
        scope = model.get_submodule(prefix)
        found = [canonical_name(".".join(filter(None, (prefix, n)))) for n, m in scope.named_modules()
                 if is_norm(m) and any(True for _ in m.parameters(recurse=False))]
        found = [n for n in found if plan.arch.block_relative(n) is None and "embed" not in n]
        if len(found) > 1:  # (a decoder's final norm and an MLM head's: the head's, registered after it, is last)
            before = [n for n in found if order[n] < order[readout]]
            return max(before, key=order.__getitem__) if before else None
        if found or not path:
            return found[0] if found else None
        path.pop()


def _embed_scale(module: nn.Module) -> float | None:
    """The factor a scaled embedding module (`embed_scale`, as transformers names it) multiplies its output by."""
    scale = getattr(module, "embed_scale", None)
    if isinstance(scale, torch.Tensor):  # (on the meta device its value is unknown: not 1)
        return math.nan if scale.is_meta or scale.numel() != 1 else float(scale)
    return float(scale) if isinstance(scale, (int, float)) else None


def check_decidable(model: nn.Module, plan: MuPPlan, config: PretrainedConfig, layouts: dict[int, Layout]) -> None:
    """Refuse, with the reasons and tensor names, a model whose every tensor's μP rule cannot be decided or whose
    μP multipliers cannot all be applied: no model is converted partly."""
    arch, problems = plan.arch, []
    params = {canonical_name(n): p for n, p in model.named_parameters()}
    for name, rule in plan.rules.items():
        module = name.rpartition(".")[0]
        matrix = layouts[id(params[name])][0] is not None  # (or stacked matrices; else a vector or vectors)
        if matrix and rule.kind is Kind.READOUT and module not in plan.readouts:
            problems.append(f"{name} maps the width to a fixed size but is not a readout hf_mup can scale"
                            + (" (inside a block: is a width field of the config not scaled?)"
                               if arch.block_relative(name) is not None else ""))
        elif matrix and rule.kind is Kind.INPUT and arch.block_relative(name) is not None:
            problems.append(f"{name} maps a fixed size to the width inside a block (a low-rank or per-layer "
                            "projection): no μP rule is derived for it")
    if arch.generic:
        output = getattr(model, "get_output_embeddings", lambda: None)()
        if output is not None and not plan.readouts:
            problems.append(f"no layer maps the width to the outputs ({type(model).__name__}'s output layer is not "
                            "a readout of the width: a projection of its own comes first)")
        factor = plan.attention_scale_factor
        for name, module in model.named_modules():
            name = canonical_name(name)
            if arch.is_attention(module):
                if factor != 1.0 and not reaches_scaling(module):
                    problems.append(f"{name} ({type(module).__name__}) hard-codes its attention scale, which μP's "
                                    f"factor {factor:g} must change: keep the head size fixed and attn_mult=1")
                elif factor != 1.0 and not (arch.query_fold_slices or arch.query_slices)(module):
                    problems.append(f"{name} ({type(module).__name__}) normalises its queries after their "
                                    "projection with a norm that has no gain or is shared with the keys, so μP's "
                                    f"attention factor {factor:g} cannot be folded into a checkpoint: keep the head "
                                    "size fixed and attn_mult=1")
            elif "attention" in type(module).__name__.lower() and (plan.mup.zero_init_query or factor != 1.0) \
                    and any(len(param_shape(p)) >= 2 for p in module.parameters()) \
                    and not any(arch.is_attention(m) for m in module.modules()):  # (not a container of attention)
                problems.append(f"{name} ({type(module).__name__}): hf_mup cannot find its query projection, which "
                                "zero_init_query and the attention factor need: set zero_init_query=False, keep the "
                                "head size fixed and attn_mult=1")
        scaled = [n for n, m in model.named_modules() if _embed_scale(m) not in (None, 1.0)]
        if getattr(config, "scale_embedding", bool(scaled)) and not arch.sqrt_width_embeddings:
            where = ", ".join(scaled) or "config.scale_embedding"
            problems.append(f"the model multiplies its embeddings by a width-dependent factor ({where}) that hf_mup "
                            "has no entry for (see FAMILIES in hf_mup/architectures/generic.py)")
        if plan.tied_readouts and plan.readout_norm is None:
            problems.append(f"the tied readout {', '.join(sorted(plan.tied_readouts))} has no norm before it to carry "
                            "its multiplier when folded: untie it (tie_word_embeddings=False)")
    if problems:
        raise MuPError(f"hf_mup cannot convert {type(model).__name__} ({getattr(config, 'model_type', '?')}) to μP: "
                       + "; ".join(problems) + ".")
