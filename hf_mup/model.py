"""Turning a stock transformers model into a μP model, in place: no forked modeling files.

What changes on the stock model:
- every attention module's `scaling` (read at each forward and passed to SDPA / flash attention),
- a forward hook multiplying embedding outputs by `input_mult` (only when it is not 1),
- a forward pre-hook multiplying each readout's input by `output_mult / m`,
- the init of hidden weights (σ/√m), the query projection and an untied readout (zero),
- `config.mup`, which `save_pretrained` writes and `MuPModel.from_pretrained` reads back.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from .architectures import Architecture, get_architecture, supported_classes
from .config import MuPConfig
from .errors import MuPError
from .rules import Kind, TensorRule, attention_scale_factor, classify

CONFIG_KEY = "mup"


@dataclass
class MuPPlan:
    """What hf_mup decided for one model: a rule per parameter and the modules that get multipliers."""

    mup: MuPConfig
    arch: Architecture
    head_dim: int
    base_head_dim: int
    rules: dict[str, TensorRule]  # by name in `model.named_parameters()`
    readouts: dict[str, float] = field(default_factory=dict)  # readout module -> scale on its input
    tied_readouts: set[str] = field(default_factory=set)  # readouts whose weight is an input embedding's
    embeddings: list[str] = field(default_factory=list)  # embedding modules whose output gets input_mult

    @property
    def attention_scale_factor(self) -> float:
        return attention_scale_factor(self.mup.attn_mult, self.head_dim, self.base_head_dim)


# ----------------------------------------------------------------------------------------------- base model


def _head_dims(config: PretrainedConfig, mup: MuPConfig) -> tuple[int, int, int]:
    """(head_dim, base_head_dim, base_num_heads), with the errors a user can act on."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads:
        raise MuPError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}.")
    head_dim, base = hidden // heads, mup.base_hidden_size
    base_heads, base_head_dim = mup.base_num_attention_heads, mup.base_head_dim
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
    if base % base_head_dim:
        raise MuPError(
            f"base_hidden_size {base} is not a multiple of the head size {base_head_dim}: the base model cannot "
            f"have a whole number of heads. Choose a base width that is a multiple of {base_head_dim}, or set "
            "base_num_attention_heads / base_head_dim."
        )
    return head_dim, base_head_dim, base // base_head_dim


def _resized_config(config: PretrainedConfig, hidden: int, heads: int, intermediate: int) -> PretrainedConfig:
    arch = get_architecture(config)
    resized = copy.deepcopy(config)
    resized.hidden_size = hidden
    resized.num_attention_heads = heads
    setattr(resized, arch.intermediate_size_attr, intermediate)
    return resized


def base_configs_for(config: PretrainedConfig, mup: MuPConfig) -> tuple[PretrainedConfig, PretrainedConfig]:
    """Configs of the base model (hidden size `mup.base_hidden_size`) and of a 2× wider "delta" model.

    Dimensions that differ between the two are the width dimensions, as in microsoft/mup's `delta` shapes.
    """
    arch = get_architecture(config)
    hidden, base = config.hidden_size, mup.base_hidden_size
    if base > hidden:
        raise MuPError(
            f"base_hidden_size {base} is larger than the model's hidden_size {hidden}; the base is the small proxy "
            f"width the hyperparameters were tuned at: choose base_hidden_size <= {hidden}."
        )
    _, _, base_heads = _head_dims(config, mup)
    intermediate = arch.intermediate_size(config)
    base_intermediate = mup.base_intermediate_size
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
        _resized_config(config, base, base_heads, base_intermediate),
        _resized_config(config, 2 * base, 2 * base_heads, 2 * base_intermediate),
    )


# ------------------------------------------------------------------------------------------------- planning


def _layouts(model: nn.Module) -> dict[int, tuple[int | None, int | None]]:
    """(fan-in dim, fan-out dim) of each parameter, by id, from the module that owns it."""
    layouts: dict[int, tuple[int | None, int | None]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.ndim == 0:
                layout = (None, None)
            elif p.ndim == 1:
                layout = (None, 0)
            elif isinstance(module, nn.Embedding):
                layout = (None, 1)  # a lookup table: (vocab, width), no fan-in
            elif isinstance(module, Conv1D):
                layout = (0, 1)  # GPT-2's Conv1D stores (in, out)
            elif p.ndim == 2:
                layout = (1, 0)  # nn.Linear: (out, in)
            else:
                raise MuPError(f"hf_mup cannot scale the {p.ndim}-d parameter {pname!r} of {type(module).__name__}.")
            # A tied weight is an input embedding first: an Embedding owner decides its layout.
            if id(p) not in layouts or isinstance(module, nn.Embedding):
                layouts[id(p)] = layout
    return layouts


def _meta_model(model_class: type, config: PretrainedConfig) -> nn.Module:
    # fork_rng: planning must not change what the seed gives the real model.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return model_class(config)


def make_plan(model: PreTrainedModel, mup: MuPConfig) -> MuPPlan:
    """Classify every parameter of `model` by comparing shapes with the base and delta models (meta device)."""
    arch = get_architecture(model.config)
    cls_name = type(model).__name__
    if cls_name not in arch.model_classes:
        raise MuPError(f"hf_mup does not support {cls_name}. Supported classes: {', '.join(supported_classes())}.")
    head_dim, base_head_dim, _ = _head_dims(model.config, mup)
    base, delta = (_meta_model(type(model), c) for c in base_configs_for(model.config, mup))
    base_params, delta_params = dict(base.named_parameters()), dict(delta.named_parameters())
    layouts = _layouts(model)

    def rule(name: str, p: torch.Tensor, layout) -> TensorRule:
        fan_in, fan_out = layout
        if fan_out is None:
            return TensorRule(Kind.SCALAR)
        return classify(tuple(p.shape), tuple(base_params[name].shape), tuple(delta_params[name].shape), fan_in, fan_out)

    plan = MuPPlan(mup, arch, head_dim, base_head_dim, {n: rule(n, p, layouts[id(p)]) for n, p in model.named_parameters()})
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and plan.rules[f"{name}.weight"].kind is Kind.INPUT:
            plan.embeddings.append(name)
        elif isinstance(module, nn.Linear):
            # Judge the Linear from its own (out, in) view: a tied weight is listed under its embedding's name.
            as_linear = classify(
                tuple(module.weight.shape), tuple(base.get_submodule(name).weight.shape),
                tuple(delta.get_submodule(name).weight.shape), 1, 0,
            )
            if as_linear.kind is Kind.READOUT:
                plan.readouts[name] = mup.output_mult / as_linear.fanin_mult
                if id(module.weight) in embedding_ids:
                    plan.tied_readouts.add(name)
    return plan


# ---------------------------------------------------------------------------------------- forward multipliers


class ScaleInput:
    """Forward pre-hook: the readout reads `scale` × its input (its bias stays unscaled)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.scale, *args[1:])


class ScaleOutput:
    """Forward hook: an embedding's output times `scale`."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * self.scale


def remove_hooks(model: nn.Module) -> None:
    """Remove every hook hf_mup added (and only those)."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, (ScaleInput, ScaleOutput))]:
                del hooks[key]


def stock_attention_scaling(module: nn.Module) -> float:
    """The scale the stock module was built with, remembered the first time hf_mup touches it."""
    if not hasattr(module, "mup_stock_scaling"):
        module.mup_stock_scaling = module.scaling
    return module.mup_stock_scaling


def apply_forward(model: PreTrainedModel, plan: MuPPlan) -> None:
    """Set the μP attention scale and the multiplier hooks; idempotent."""
    remove_hooks(model)
    for _, attn in plan.arch.attention_modules(model):
        attn.scaling = stock_attention_scaling(attn) * plan.attention_scale_factor
    if plan.mup.input_mult != 1.0:
        for name in plan.embeddings:
            model.get_submodule(name).register_forward_hook(ScaleOutput(plan.mup.input_mult))
    for name, scale in plan.readouts.items():
        if scale != 1.0:
            model.get_submodule(name).register_forward_pre_hook(ScaleInput(scale))
    model._mup_plan = plan


@torch.no_grad()
def apply_init(model: PreTrainedModel, plan: MuPPlan) -> None:
    """Rescale a freshly HF-initialised model to the μP init (σ/√m on hidden weights, zero-inits)."""
    for name, p in model.named_parameters():
        scale = plan.rules[name].init_scale
        if scale != 1.0:
            p.mul_(scale)
    if plan.mup.zero_init_readout:
        for name in plan.readouts.keys() - plan.tied_readouts:
            model.get_submodule(name).weight.zero_()
    if plan.mup.zero_init_query:
        for _, attn in plan.arch.attention_modules(model):
            for param, index in plan.arch.query_slices(attn):
                param[index] = 0.0


def _reinitialize(model: PreTrainedModel) -> None:
    """Run the model's own HF init again, as on a freshly built model."""
    for t in [*model.modules(), *model.parameters(), *model.buffers()]:
        if hasattr(t, "_is_hf_initialized"):
            del t._is_hf_initialized
    model.init_weights()


# --------------------------------------------------------------------------------------------- public API


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / accelerate / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


# Segments that wrappers (FSDP, activation checkpointing, torch.compile) insert into parameter names.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter's name in the bare transformers model, whatever wrappers it went through."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def get_plan(model: nn.Module) -> MuPPlan | None:
    """The μP plan of a converted model; None for a stock one. Raises if μP settings were not applied."""
    model = unwrap(model)
    plan = getattr(model, "_mup_plan", None)
    if plan is None and getattr(getattr(model, "config", None), CONFIG_KEY, None):
        raise MuPError(
            "This model's config has μP settings (config.mup) but μP is not applied to it: it was probably loaded "
            "with transformers' from_pretrained. Load it with hf_mup.MuPModel.from_pretrained(path)."
        )
    return plan


def is_mup(model: nn.Module) -> bool:
    return get_plan(model) is not None


def _as_mup_config(config: PretrainedConfig, base_hidden_size: int | None, options: dict[str, Any]) -> MuPConfig:
    if base_hidden_size is None:
        stored = getattr(config, CONFIG_KEY, None)
        if not stored:
            raise MuPError("Give base_hidden_size=<the proxy's width>, e.g. MuPModel.from_config(config, base_hidden_size=256).")
        return MuPConfig.from_dict({**stored, **options})
    return MuPConfig(base_hidden_size=base_hidden_size, **options)


def convert(model: PreTrainedModel, mup: MuPConfig | None = None, *, reinit: bool = True, **options: Any) -> PreTrainedModel:
    """Convert a stock transformers model to μP in place (re-initialising it) and return it.

    Usage: `model = hf_mup.convert(GPT2LMHeadModel(config), hf_mup.MuPConfig(base_hidden_size=256))`
    """
    if mup is None:
        mup = _as_mup_config(model.config, options.pop("base_hidden_size", None), options)
    elif options:
        mup = mup.replace(**options)
    plan = make_plan(model, mup)
    if reinit:
        _reinitialize(model)
        apply_init(model, plan)
    apply_forward(model, plan)
    setattr(model.config, CONFIG_KEY, mup.to_dict())
    return model


def _model_class(config: PretrainedConfig, model_class: type | str | None) -> type:
    arch = get_architecture(config)
    if model_class is None:
        archs = getattr(config, "architectures", None) or [arch.model_classes[0]]
        model_class = archs[0]
    if isinstance(model_class, str):
        if model_class not in arch.model_classes:
            raise MuPError(f"hf_mup does not support {model_class}. Supported classes: {', '.join(supported_classes())}.")
        model_class = getattr(transformers, model_class)
    return model_class


class MuPModel:
    """Builds and loads μP models; what it returns are the stock transformers classes, converted in place.

    Usage: `model = hf_mup.MuPModel.from_config(GPT2Config(n_embd=1024, n_head=16), base_hidden_size=256)`
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Use MuPModel.from_config(...) or MuPModel.from_pretrained(...).")

    @staticmethod
    def from_config(
        config: PretrainedConfig,
        base_hidden_size: int | None = None,
        model_class: type | str | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """A freshly initialised μP model of `config`'s architecture.

        `model_class` defaults to `config.architectures[0]`, else the causal LM (GPT-2) / masked LM (BERT).
        `kwargs` are `MuPConfig` fields (`output_mult=8.0`, `zero_init_query=False`, ...); the others go to
        transformers' `_from_config` (`dtype=torch.bfloat16`, `attn_implementation="flash_attention_2"`, ...).
        """
        config = copy.deepcopy(config)
        mup_fields = {f.name for f in dataclasses.fields(MuPConfig)}
        mup = _as_mup_config(config, base_hidden_size, {k: v for k, v in kwargs.items() if k in mup_fields})
        cls = _model_class(config, model_class)
        base_configs_for(config, mup)  # fail on a bad base before allocating a big model
        model = cls._from_config(config, **{k: v for k, v in kwargs.items() if k not in mup_fields})
        plan = make_plan(model, mup)
        apply_init(model, plan)
        apply_forward(model, plan)
        setattr(model.config, CONFIG_KEY, mup.to_dict())
        return model

    @staticmethod
    def from_pretrained(path: str, model_class: type | str | None = None, **kwargs: Any) -> PreTrainedModel:
        """Load a μP checkpoint saved with `save_pretrained`; μP is re-applied from its `config.mup`.

        Usage: `model = hf_mup.MuPModel.from_pretrained("ckpt")`
        """
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
        stored = getattr(config, CONFIG_KEY, None)
        if not stored:
            raise MuPError(
                f"The checkpoint {path!r} has no μP settings (config.mup): it was saved from a stock model. "
                "Load it with transformers' from_pretrained, or build a μP model with "
                "hf_mup.MuPModel.from_config(config, base_hidden_size=...)."
            )
        cls = _model_class(config, model_class)
        model = cls.from_pretrained(path, config=config, **kwargs)
        apply_forward(model, make_plan(model, MuPConfig.from_dict(stored)))
        return model
