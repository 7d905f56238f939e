"""Applying a plan to a stock transformers model, in place: init, forward multipliers, folding, and the guards that
keep them right.

What a μP model carries (all of it on the stock modules; no forked modeling code):
- every attention module's `scaling` (read at each forward and passed to SDPA / flash attention),
- a forward hook multiplying embedding outputs by `input_mult` (only when it is not 1),
- a forward pre-hook multiplying each readout's input by `output_mult / m`,
- with depth scaling, a forward hook multiplying each residual branch's output by m_L^-α (CompleteP),
- with `trainable_norm_gains=False`, norm gains that do not require grad,
- on the model itself: the plan (`_mup_plan`), a forward pre-hook that notices module surgery (a replaced head,
  `resize_token_embeddings`) and re-applies the multipliers, and state-dict hooks: `state_dict()` gives the *folded*
  weights — those of the stock model with the same outputs — and `load_state_dict()` unfolds them.
"""
from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import torch
from torch import nn

from .adapters import stock_layer
from .architectures.base import Index
from .architectures.generic import norm_offset, reaches_scaling
from .errors import MuPError
from .plan import MuPPlan, canonical_name, make_plan, norm_gains

PLAN_ATTR = "_mup_plan"
WATCH_ATTR = "_mup_watched"  # what the guard compares before each forward (`_watched`)
# (canonical parameter name, index or None for the whole tensor, factor, offset): the folded weight is
# `(w[index] + offset) * factor - offset` (offset 1: a Gemma norm's gain, which scales by 1 + w; else 0).
FoldEntry = tuple[str, Index | None, float, float]
_P = ParamSpec("_P")
_R = TypeVar("_R")


# ---------------------------------------------------------------------------------------- forward multipliers


class ScaleInput:
    """Forward pre-hook: the readout reads `scale` × its input (its bias stays unscaled)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * self.scale, *args[1:])


class ScaleOutput:
    """Forward hook: an embedding's output times `scale`."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output * self.scale


def stock_attention_scaling(module: nn.Module) -> float:
    """The scale the stock module was built with, remembered the first time hf_mup touches it."""
    if not hasattr(module, "mup_stock_scaling"):
        module.mup_stock_scaling = module.scaling
    return cast(float, module.mup_stock_scaling)  # the attention module's float `scaling`, as it was built


def readout_module(model: nn.Module, name: str) -> nn.Module:
    """The Linear that computes the readout (or residual branch) `name`: the module itself, or the stock layer inside
    an adapter wrapper (an adapter's own path bypasses μP's multipliers)."""
    module = model.get_submodule(name)
    return getattr(module, "base_layer", module)


def adapter_of(model: nn.Module, name: str) -> nn.Module | None:
    """The adapter wrapper (a PEFT tuner layer, which holds the stock layer as `base_layer`) at `name`, or None."""
    module = _child(model, name)
    return module if module is not None and "base_layer" in module._modules else None


def lora_outputs(wrapper: nn.Module, where: str) -> list[nn.Module | nn.Parameter]:
    """The output side of each LoRA adapter in `wrapper` (its `lora_B` modules, `lora_embedding_B` tensors): a factor
    on the wrapped layer's output must be on these too.

    A `MuPError` for adapters whose output is not `base(x) + B(A(x))·s` (DoRA and other LoRA variants, IA3, LoHa,
    ...): μP's factor on `where` cannot be carried into them by scaling B, so they are refused there.
    """
    variants = getattr(wrapper, "lora_variant", None)
    if "lora_A" not in wrapper._modules and "lora_embedding_A" not in wrapper._modules or variants:
        kind = (f"a LoRA variant ({', '.join(sorted({type(v).__name__ for v in variants.values()}))})" if variants
                else f"a {type(wrapper).__name__} adapter")
        raise MuPError(
            f"{kind} wraps {where}, whose output μP scales; hf_mup carries that factor into plain LoRA adapters "
            "only. Use a plain LoraConfig (no use_dora / variants) there, or leave that module out of target_modules."
        )
    return [*getattr(wrapper, "lora_B", {}).values(), *getattr(wrapper, "lora_embedding_B", {}).values()]


def _scaled_outputs(model: nn.Module, plan: MuPPlan) -> dict[str, tuple[Index | None, float]]:
    """Module -> (index of its output features, factor) for every module whose output μP scales by a factor that
    folding puts into its weights: the query projection (attention factor), each residual branch (depth
    multiplier), the embeddings (`input_mult`)."""
    out: dict[str, tuple[Index | None, float]] = {}
    if plan.attention_scale_factor != 1.0:
        out.update({name: (rows, plan.attention_scale_factor) for name, rows in plan.query_outputs.items()})
    if plan.residual_scale != 1.0:
        out.update({name: (None, plan.residual_scale) for name in plan.residuals})
    if plan.input_mult != 1.0:
        out.update({name: (None, plan.input_mult) for name in plan.embeddings})
    return out


def scaled_attention(model: nn.Module, plan: MuPPlan) -> list[str]:
    """The attention modules whose `scaling` μP sets: all of them, but for a generic description those that have
    one (planning refused the others where their factor is not 1)."""
    return [n for n in plan.attention if not plan.arch.generic or reaches_scaling(model.get_submodule(n))]


def apply_forward(model: nn.Module, plan: MuPPlan) -> None:
    """Set the μP attention scale, the multiplier hooks and the model-level guards; idempotent."""
    remove_hooks(model, keep_model_hooks=True)
    for name in scaled_attention(model, plan):
        attn: Any = model.get_submodule(name)  # a transformers attention module: `scaling` is a float attribute
        attn.scaling = stock_attention_scaling(attn) * plan.attention_scale_factor
    if plan.input_mult != 1.0:
        for name in plan.embeddings:
            model.get_submodule(name).register_forward_hook(ScaleOutput(plan.input_mult))
    for name, scale in plan.readouts.items():
        if scale != 1.0:
            readout_module(model, name).register_forward_pre_hook(ScaleInput(scale))
    if plan.residual_scale != 1.0:
        for name in plan.residuals:  # the branch's last projection, bias included, before the residual add
            readout_module(model, name).register_forward_hook(ScaleOutput(plan.residual_scale))
            wrapper = adapter_of(model, name)
            for lora_b in ([] if wrapper is None else lora_outputs(wrapper, repr(name))):
                # the adapter's share of the branch (a projection's LoRA: `lora_B` modules, no embedding tensors)
                cast(nn.Module, lora_b).register_forward_hook(ScaleOutput(plan.residual_scale))
    if not plan.mup.trainable_norm_gains:
        for gain in norm_gains(model):
            gain.requires_grad_(False)  # fixed: no gradient, so no optimizer slot (mup_param_groups skips it)
    model.__dict__[PLAN_ATTR] = plan  # in __dict__: wrappers that forward attributes (PEFT, FSDP1) do not hold it
    model.__dict__.pop(WATCH_ATTR, None)  # the guard takes a new look at the next forward
    if not any(isinstance(h, Guard) for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(Guard())
        model.register_state_dict_post_hook(fold_state_dict)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        model.register_load_state_dict_pre_hook(unfold_state_dict)  # type: ignore[no-untyped-call]  # (idem)
    fold_deepspeed_saves()


_DEEPSPEED_SAVES_FOLDED: list[bool] = []


def fold_deepspeed_saves() -> None:
    """Once DeepSpeed is imported, have its ZeRO-3 consolidated state dict (which skips the model's state-dict
    hooks) folded too (`hf_mup.zero.install`). Run at conversion and by the guard before each forward, so a model
    built before deepspeed was imported is covered by the time it trains and saves: a dict lookup once installed."""
    if not _DEEPSPEED_SAVES_FOLDED and "deepspeed" in sys.modules:
        from .zero import install

        install()
        _DEEPSPEED_SAVES_FOLDED.append(True)


def remove_hooks(model: nn.Module, keep_model_hooks: bool = False) -> None:
    """Remove every hook hf_mup added (and only those)."""
    ours = (ScaleInput, ScaleOutput) if keep_model_hooks else (ScaleInput, ScaleOutput, Guard)
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, ours)]:
                del hooks[key]
    if not keep_model_hooks:
        for hooks in (model._state_dict_hooks, model._load_state_dict_pre_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "hook", h) in (fold_state_dict, unfold_state_dict)]:
                del hooks[key]


# ------------------------------------------------------------------------------------------------------- init


def _gathering(fn: Callable[Concatenate[nn.Module, _P], _R]) -> Callable[Concatenate[nn.Module, _P], _R]:
    """For a function that changes `model`'s parameter values: under DeepSpeed ZeRO-3 it runs on the gathered
    parameters (`hf_mup.zero.gathered`; every rank calls it), elsewhere as it is."""

    @functools.wraps(fn)
    def run(model: nn.Module, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not any(hasattr(p, "ds_id") for p in model.parameters()):
            return fn(model, *args, **kwargs)
        from .zero import gathered

        with gathered(model.parameters()):
            return fn(model, *args, **kwargs)

    return run


@_gathering
@torch.no_grad()
def apply_init(model: nn.Module, plan: MuPPlan, only: Iterable[str] | None = None) -> None:
    """Rescale freshly HF-initialised tensors to the μP init (σ/√m on hidden weights, zero-inits).

    `only`: the canonical names of the fresh tensors (default: all); the others are left alone.
    """
    fresh = None if only is None else set(only)

    def is_fresh(name: str) -> bool:
        return fresh is None or name in fresh

    params = {canonical_name(n): p for n, p in model.named_parameters()}
    for name, p in params.items():
        if name in plan.rules and is_fresh(name) and plan.rules[name].init_scale != 1.0:
            p.mul_(plan.rules[name].init_scale)
    for name, scale in plan.readout_init_scale.items():
        if is_fresh(f"{name}.weight"):
            weight = cast(torch.Tensor, readout_module(model, name).weight)  # a Linear's
            weight.zero_() if plan.mup.zero_init_readout and name not in plan.routers else weight.mul_(scale)
    if plan.mup.zero_init_query:
        names = {id(p): n for n, p in params.items()}
        for name in plan.attention:
            for param, index in plan.arch.query_slices(model.get_submodule(name)):
                if is_fresh(names[id(param)]):
                    param[index] = 0.0


# ----------------------------------------------------------------------------------------------------- folding


def fold_entries(model: nn.Module, plan: MuPPlan) -> list[FoldEntry]:
    """What folding multiplies: the query projection by the attention factor, embedding tables by `input_mult`, an
    untied readout by its multiplier, for a readout tied to the input embedding the norm that feeds it, and each
    residual branch's last projection (weight and bias) by the depth multiplier.

    Folded weights in a stock model give the μP model's outputs (a tied readout's `last_hidden_state` is scaled).
    """
    names = {id(p): canonical_name(n) for n, p in model.named_parameters()}
    entries: list[FoldEntry] = []

    def offset(name: str) -> float:  # a norm gain's offset: (1 + w) norms scale 1 + w (`norm_offset`)
        owner, _, param = name.rpartition(".")
        return norm_offset(model.get_submodule(owner)) if param == "weight" else 0.0

    factor = plan.attention_scale_factor
    if factor != 1.0:
        for name in plan.attention:
            slices = plan.arch.query_fold_slices or plan.arch.query_slices
            entries += [(names[id(p)], index, factor, offset(names[id(p)])) for p, index in
                        slices(model.get_submodule(name))]
    input_mult = plan.input_mult
    if input_mult != 1.0:
        entries += [(f"{name}.weight", None, input_mult, 0.0) for name in plan.embeddings]
    if plan.residual_scale != 1.0:
        for name in plan.residuals:
            entries += [(names[id(p)], None, plan.residual_scale, 0.0)
                        for p in readout_module(model, name).parameters(recurse=False) if id(p) in names]
    for name, (rows, factor) in _scaled_outputs(model, plan).items():
        wrapper = adapter_of(model, name)
        for out in ([] if wrapper is None else lora_outputs(wrapper, repr(name))):
            tensors = out.parameters(recurse=False) if isinstance(out, nn.Module) else [out]
            entries += [(names[id(t)], rows, factor, 0.0) for t in tensors if id(t) in names]
    for name, scale in plan.readouts.items():
        if name not in plan.tied_readouts:
            if scale != 1.0:
                entries.append((f"{name}.weight", None, scale, 0.0))
            continue
        if plan.readout_norm is None:
            raise MuPError(
                f"Cannot fold the tied readout {name!r} of {plan.model_class}: no norm feeding it is known. "
                "Add it to tied_readout_norms in hf_mup/architectures/."
            )
        norm_scale = scale / input_mult  # the shared weight already carries input_mult
        if norm_scale != 1.0:
            norm = model.get_submodule(plan.readout_norm)
            entries += [(f"{plan.readout_norm}.{p}", None, norm_scale, offset(f"{plan.readout_norm}.{p}"))
                        for p, t in norm.named_parameters(recurse=False) if t is not None]
    return entries


def _scaled(tensor: torch.Tensor, index: Index | None, factor: float, offset: float = 0.0) -> torch.Tensor:
    if index is None or tensor.numel() == 0:  # (an empty tensor: a ZeRO-3 partitioned parameter's placeholder)
        return (tensor + offset) * factor - offset if offset else tensor * factor
    out = tensor.clone()
    out[index] = (out[index] + offset) * factor - offset
    return out


@_gathering
@torch.no_grad()
def scale_parameters(model: nn.Module, entries: list[FoldEntry], inverse: bool = False,
                     only: Iterable[str] | None = None) -> None:
    """Fold (or, with `inverse`, unfold) `entries` into the model's parameters in place; `only`: names to touch."""
    params = {canonical_name(n): p for n, p in model.named_parameters()}
    keep = None if only is None else set(only)
    for name, index, factor, offset in entries:
        if name in params and (keep is None or name in keep):
            params[name].copy_(_scaled(params[name], index, 1.0 / factor if inverse else factor, offset))


def _state_dict_keys(model: nn.Module, prefix: str) -> dict[str, list[str]]:
    """Canonical parameter name -> its keys in a state dict of `model`: a tied weight has several, and so has a
    layer with a trained copy (PEFT's modules_to_save: two tensors, one name)."""
    ids = {id(p): canonical_name(n) for n, p in model.named_parameters()}
    keys: dict[str, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        keys.setdefault(ids[id(p)], []).append(prefix + n)
    return keys


def _tied_keys(model: nn.Module, prefix: str) -> list[list[str]]:
    """The keys of each tensor that is in a state dict of `model` under more than one key (a tied weight)."""
    keys: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        keys.setdefault(id(p), []).append(prefix + n)
    return [k for k in keys.values() if len(k) > 1]


def fold_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]) -> None:
    """State-dict post-hook: a μP model's state dict holds its folded (stock-exact) weights."""
    plan = module.__dict__.get(PLAN_ATTR)
    if plan is None:
        return
    keys = _state_dict_keys(module, prefix)
    folded: dict[str, torch.Tensor] = {}
    for name, index, factor, offset in fold_entries(module, plan):
        for key in keys.get(name, ()):
            if key in state_dict:
                folded[key] = _scaled(folded.get(key, state_dict[key]), index, factor, offset)
    for key_list in _tied_keys(module, prefix):  # a tied weight: one tensor under each of its keys
        present = [k for k in key_list if k in folded]
        for k in present[1:]:
            folded[k] = folded[present[0]]
    state_dict.update(folded)


def unfold_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                      strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """Load-state-dict pre-hook: the incoming weights are folded (what `state_dict()` gave): unfold them."""
    plan = module.__dict__.get(PLAN_ATTR)
    if plan is None:
        return
    keys = _state_dict_keys(module, prefix)
    for name, index, factor, offset in fold_entries(module, plan):
        for key in keys.get(name, ()):
            if key in state_dict:
                state_dict[key] = _scaled(state_dict[key], index, 1.0 / factor, offset)


# ------------------------------------------------------------------------------------------------------ guards


def _child(model: nn.Module, name: str) -> nn.Module | None:
    """`model.get_submodule(name)` through `_modules` dicts: a few lookups, no exceptions (run before every forward)."""
    module = model
    for part in name.split("."):
        child = module._modules.get(part)
        if child is None:
            return None
        module = child
    return module


def _has_hook(hooks: Mapping[int, object], hook_type: type[ScaleInput] | type[ScaleOutput], scale: float) -> bool:
    return any(type(h) is hook_type and h.scale == scale for h in hooks.values())


NEW_ADAPTER = "an adapter"  # how diagnose's entries for adapters added since the last sync begin (no warning)


def diagnose(model: nn.Module, plan: MuPPlan, full: bool = True) -> list[str]:
    """What no longer matches the plan: replaced readouts, embeddings or residual branches (their multiplier hook is
    gone), adapters added where μP scales an output (their hooks are not on yet), and with `full` also attention
    scales. [] when μP is in place. Raises a `MuPError` for an adapter that μP's factors cannot reach."""
    problems = []
    for name, scale in plan.readouts.items():
        module = _child(model, name)
        if module is None:
            problems.append(f"the readout {name!r} is gone")
            continue
        if "base_layer" in module._modules:
            kind = "A LoRA adapter" if "lora_A" in module._modules else f"An adapter ({type(module).__name__})"
            raise MuPError(
                f"{kind} wraps the readout {name!r}: its path reads the input without μP's readout "
                "multiplier. Leave the readout out of target_modules (or use modules_to_save)."
            )
        if scale != 1.0 and not _has_hook(module._forward_pre_hooks, ScaleInput, scale):
            problems.append(f"{NEW_ADAPTER}'s trained copy of the readout {name!r} (PEFT's modules_to_save: the "
                            "multiplier goes on its wrapper)" if "original_module" in module._modules else
                            f"the readout {name!r} was replaced (its multiplier {scale:g} is not applied)")
    for name in _scaled_outputs(model, plan):  # refuses an adapter there that is not plain LoRA
        wrapper = adapter_of(model, name)
        if wrapper is not None:
            lora_outputs(wrapper, repr(name))
    if plan.input_mult != 1.0:
        for name in plan.embeddings:
            module = _child(model, name)
            if module is not None and _has_hook(module._forward_hooks, ScaleOutput, plan.input_mult):
                continue
            inner = None if module is None else stock_layer(module)
            if inner is not module and inner is not None and _has_hook(inner._forward_hooks, ScaleOutput, plan.input_mult):
                problems.append(f"{NEW_ADAPTER} on the embedding {name!r} (input_mult goes on the adapter's output too)")
            else:
                problems.append(f"the embedding {name!r} was replaced (input_mult {plan.input_mult:g} is not applied)")
    if plan.residual_scale != 1.0:
        scale = plan.residual_scale
        for name in plan.residuals:
            module = _child(model, name)
            inner = None if module is None else module._modules.get("base_layer") or module
            if inner is None or not _has_hook(inner._forward_hooks, ScaleOutput, scale):
                problems.append(f"the residual branch {name!r} was replaced (its depth multiplier is not applied)")
            elif module is not None and module is not inner and not all(
                    _has_hook(cast(nn.Module, b)._forward_hooks, ScaleOutput, scale)  # a projection's LoRA: modules
                    for b in lora_outputs(module, repr(name))):
                problems.append(f"{NEW_ADAPTER} on the residual branch {name!r} (its output gets the depth multiplier)")
    if full:
        known = plan.rules.keys() | set(plan.extra)
        new = [n for n in (canonical_name(raw) for raw, _ in model.named_parameters()) if n not in known]
        if new:  # an adapter where μP scales nothing (no hook to notice it): its tensors need their rules
            problems.append(f"{NEW_ADAPTER}'s (or a new module's) tensors: {', '.join(new[:3])}, ...")
        expected = plan.attention_scale_factor
        for name in scaled_attention(model, plan):
            attn: Any = model.get_submodule(name)  # a transformers attention module (float `scaling`)
            if getattr(attn, "mup_stock_scaling", None) is None or attn.scaling != attn.mup_stock_scaling * expected:
                problems.append(f"the attention module {name!r} does not have the μP scale")
    return problems


def sync(model: nn.Module, full: bool = True) -> MuPPlan:
    """The model's plan, made true again if surgery changed the model: re-planned and re-applied, with a warning
    (none for adapters, whose hooks are expected to be added here).

    Usage: `plan = sync(model)` (the guard does this before every forward, cheaply; `get_plan` fully).
    """
    plan: MuPPlan = model.__dict__[PLAN_ATTR]
    problems = diagnose(model, plan, full)
    if problems:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plan's own warnings (post-norm depth scaling) came at conversion
            plan = make_plan(model, plan.mup)
        apply_forward(model, plan)
        replaced = [p for p in problems if not p.startswith(NEW_ADAPTER)]
        if replaced:
            warnings.warn(
                "hf_mup: the μP model was changed after conversion (" + "; ".join(replaced) + "). μP's multipliers "
                "are re-applied to the new modules; their initialisation is yours. Rebuild the optimizer with "
                "hf_mup.mup_param_groups(model, ...) if it was built before the change.",
                stacklevel=3,
            )
    return plan


Watched = list[tuple[nn.Module, str, "nn.Module | None", "int | None"]]


def _lora_count(module: nn.Module | None) -> int | None:
    """How many LoRA adapters an adapter wrapper holds (None for a module that is not one)."""
    if module is None or "base_layer" not in module._modules:
        return None
    # lora_B: a ModuleDict, lora_embedding_B: a ParameterDict
    return sum(len(cast(Sized, module._modules.get(k) or ())) for k in ("lora_B", "lora_embedding_B"))


def _watched(model: nn.Module, plan: MuPPlan) -> Watched:
    """(parent, attribute, the module there, its adapter count) for each module μP puts a multiplier on or folds
    through: if none of them was replaced, wrapped or given another adapter, `diagnose(full=False)` has nothing to
    find, so the guard compares these alone (identity and a count: about a microsecond a module)."""
    watched: Watched = []
    for name in {*plan.readouts, *plan.embeddings, *plan.residuals, *_scaled_outputs(model, plan)}:
        parent_name, _, attr = name.rpartition(".")
        parent = _child(model, parent_name) if parent_name else model
        if parent is not None:
            child = parent._modules.get(attr)
            watched.append((parent, attr, child, _lora_count(child)))
    return watched


class Guard:
    """Forward pre-hook on the model: a replaced readout or embedding (`resize_token_embeddings`, a new head) or a
    new adapter gets μP's multiplier before the forward runs, and DeepSpeed's saves are folded once it is imported.
    While the watched modules are the same objects (`_watched`), an identity check each; skipped while
    torch.compile traces."""

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if torch.compiler.is_compiling():
            return
        fold_deepspeed_saves()
        plan = module.__dict__.get(PLAN_ATTR)
        watched = module.__dict__.get(WATCH_ATTR)
        if plan is None or watched is not None and all(
                parent._modules.get(attr) is child and (count is None or _lora_count(child) == count)
                for parent, attr, child, count in watched):
            return
        if diagnose(module, plan, full=False):
            sync(module, full=False)
        plan = module.__dict__[PLAN_ATTR]
        module.__dict__[WATCH_ATTR] = _watched(module, plan)
