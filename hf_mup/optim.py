"""μP optimizer parameter groups, the check that an optimizer has them, and per-group LR floors for schedulers."""
from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from .adapters import ADAPTER_RULES, other_inits
from .apply import PLAN_ATTR, fold_deepspeed_saves
from .errors import MuPError
from .model import get_plan, unwrap
from .plan import MuPPlan, canonical_name, is_norm, param_shape
from .rules import ADAM_LIKE, MUON, Kind, TensorRule, muon_adjust, optimizer_family, weight_decay_for_group

NoDecay = Callable[[str], bool] | Sequence[str] | None
UNSCALED = "unscaled"  # the group kind of tensors trained at the plain LR: no μP rule, or adapters="plain"
# Above this, "independent" weight decay (a fraction of the weights removed per step) is almost surely a coupled value.
INDEPENDENT_WD_WARN = 1e-2
DEFAULT_EPS = 1e-8  # torch's Adam/AdamW ε: the base ε of depth-scaled groups when none is given
NO_RULE = TensorRule(Kind.SCALAR)  # what a tensor without a μP rule (an adapter's) trains by: every factor 1
MUON_UNDER_ZERO = ("Muon under DeepSpeed ZeRO: ZeRO flattens the parameters into 1-D partitions, and Muon orthogonalises "
                   "whole matrices. Train Muon with DDP or FSDP2 (accelerate launch without DeepSpeed), or use AdamW "
                   "under DeepSpeed.")
DEFAULT_MUON_ADJUST = "match_rms_adamw"  # hf_mup.MuonAdamW's: Muon's update RMS matched to AdamW's, one LR for both
_TORCH_MUON: tuple[type, ...] = (torch.optim.Muon,) if hasattr(torch.optim, "Muon") else ()  # (torch 2.9+)


def _norm_param_names(model: nn.Module) -> set[str]:
    return {
        f"{mname}.{pname}" if mname else pname
        for mname, module in model.named_modules()
        if is_norm(module)
        for pname, _ in module.named_parameters(recurse=False)
    }


def no_decay_predicate(model: nn.Module, no_decay: NoDecay = None) -> Callable[[str], bool]:
    """Which parameter names get no weight decay: `no_decay` (names' substrings, or a predicate on the name) or, by
    default, biases and norm weights (the HF Trainer's rule; Megatron-LM's too).

    Usage: `skip = no_decay_predicate(model); [n for n, _ in model.named_parameters() if skip(n)]`
    """
    if callable(no_decay):
        return no_decay
    if no_decay is not None:
        patterns = tuple(no_decay)
        return lambda name: any(p in name for p in patterns)
    norms = {canonical_name(n) for n in _norm_param_names(model)}  # as the Trainer: no decay on biases, norms
    return lambda name: name in norms or name.endswith("bias")


def mup_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: object = "adamw",
    weight_decay_mode: str = "width_independent",
    no_decay: NoDecay = None,
    eps: float | None = None,
    adapters: str = "mup",
    adjust_lr_fn: str | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for `torch.optim.*` with μP's per-tensor learning rates and weight decay.

    Usage: `torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=3e-3, weight_decay=0.1))`

    Each group carries `lr_mult` (its LR over `lr`), `mup_kind` and `mup_optimizer`, so that schedulers
    (which scale each group's LR relatively), logs and `check_optimizer` can see them.
    `optimizer`: the optimizer's class or name (`torch.optim.Adamax`, "adamw", "sgd", "adamw_torch_fused", ...);
    `hf_mup.rules.optimizer_family` decides which μP rules apply. `weight_decay_mode`: "width_independent"
    (lr·wd the same at every width, microsoft/mup's default), "coupled" (plain) or "independent" (the decay per
    step is `weight_decay`, whatever the LR). `no_decay`: parameter names (substrings) or a predicate on the name;
    by default biases and norm weights. `adapters`: "mup" (PEFT's LoRA, rsLoRA and DoRA tensors by their μP rules,
    `hf_mup.rules`, "Adapters"; their groups carry `mup_adapter`) or "plain" (every adapter tensor at the plain LR,
    `mup_kind` "unscaled": the rule before hf_mup had one, kept for comparison). Trainable tensors with no μP rule
    (other adapters, a head the stock model lacks) get a group of their own at the plain LR, with a warning naming them.
    `eps`: Adam's ε (default 1e-8, torch's). Where μP scales ε (with width, `eps_width_scaling`, and with depth)
    every group of an Adam-like optimizer carries its own `eps` (ε × the tensor's factor, `eps_mult`), which
    overrides the optimizer's: give the optimizer the same `eps=`, or build both with `hf_mup.mup_optimizer`.
    `check_optimizer` (run by hf_mup at every optimizer's first step) refuses an optimizer built with another ε.
    Muon (`optimizer="muon"`, `hf_mup.MuonAdamW` or torch.optim.Muon): the hidden matrices get groups with
    `use_muon: True`, torch's `adjust_lr_fn` (default: the optimizer's own, "match_rms_adamw" for "muon" and
    MuonAdamW, "original" for torch.optim.Muon; another Muon class must say) and μP's Muon factor
    (`hf_mup.rules.TensorRule.muon_lr_mult`); every other tensor Adam's rules, with `use_muon: False`.
    """
    family = optimizer_family(optimizer)
    if family == MUON:
        adjust_lr_fn = adjust_lr_fn or muon_default_adjust(optimizer)
        muon_adjust((1, 1), adjust_lr_fn)  # refuses an adjust_lr_fn hf_mup has no factor for, before any work
    elif adjust_lr_fn is not None:
        raise MuPError(f"adjust_lr_fn={adjust_lr_fn!r} is Muon's: give optimizer='muon' (or hf_mup.MuonAdamW).")
    if adapters not in ADAPTER_RULES:
        raise MuPError(f"adapters={adapters!r}: use 'mup' (adapter tensors by their μP rules) or 'plain' (all at the "
                       "plain LR).")
    plan = get_plan(model)
    if plan is None:
        raise MuPError(
            "mup_param_groups needs a μP model: build it with hf_mup.MuPModel.from_config(config, base_hidden_size=...) "
            "or hf_mup.convert(model, ...)."
        )
    if weight_decay_mode == "independent" and weight_decay > INDEPENDENT_WD_WARN:
        warnings.warn(
            f"weight_decay_mode='independent' removes weight_decay={weight_decay:g} of every weight per step "
            f"({weight_decay:.0%}); independent decay values are usually 1e-5..1e-3. For the usual coupled value "
            "(e.g. 0.1, multiplied by the LR) use weight_decay_mode='width_independent' or 'coupled'.",
            stacklevel=2,
        )
    model_in, model = model, unwrap(model)
    skip_decay = no_decay_predicate(model, no_decay)
    per_group_eps = scales_eps(plan, family)
    groups: dict[tuple[str, bool, float, float, float, bool], dict[str, Any]] = {}
    unscaled: list[str] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = canonical_name(name)
        adapter = name in plan.adapters
        rule = plan.rules.get(name) or (plan.adapters.get(name) if adapters == "mup" else None)
        if rule is None and not adapter:
            unscaled.append(name)
        kind = UNSCALED if rule is None else rule.kind.value
        rule = rule or NO_RULE
        if family == MUON and rule.kind is Kind.HIDDEN and len(param_shape(p)) == 1:
            raise MuPError(f"{name!r} is a hidden matrix seen as a 1-D tensor of {p.numel()} entries: the model was "
                           "flattened (FSDP1, ZeRO), and Muon orthogonalises whole matrices. Build the groups before "
                           "wrapping, or use DDP or FSDP2 (fully_shard keeps each matrix's shape).")
        muon = family == MUON and not adapter and rule.uses_muon(len(param_shape(p)))
        if muon:
            shape = tuple(param_shape(p))
            lr_mult, eps_mult, width_mult = (rule.muon_lr_mult(shape, adjust_lr_fn), 1.0,
                                             rule.muon_width_lr_mult(shape, adjust_lr_fn))
        else:
            lr_mult, eps_mult, width_mult = rule.lr_mult(family), rule.eps_mult(family), rule.width_lr_mult(family)
        decays = weight_decay != 0 and not skip_decay(name)
        group_wd = weight_decay_for_group(weight_decay, lr, lr_mult, weight_decay_mode, width_mult) if decays else 0.0
        key = (kind, adapter, lr_mult, group_wd, eps_mult, muon)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * lr_mult,
                "weight_decay": group_wd,
                "lr_mult": lr_mult,
                "mup_kind": kind,
                "mup_optimizer": family,
            }
            if adapter:
                groups[key]["mup_adapter"] = adapters
            if family == MUON:
                groups[key].update(use_muon=muon, **({"adjust_lr_fn": adjust_lr_fn} if muon else {}))
            if per_group_eps and not muon:
                groups[key].update(eps=(DEFAULT_EPS if eps is None else eps) * eps_mult, eps_mult=eps_mult)
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    odd = other_inits(model_in)
    if adapters == "mup" and plan.adapters and odd:
        warnings.warn(
            f"LoRA adapter(s) {sorted(odd)} use init_lora_weights={sorted(set(map(str, odd.values())))}: μP's adapter "
            "rules assume A's init scales as 1/√fan-in (PEFT's default, init_lora_weights=True); 'gaussian' keeps "
            "std 1/r at every width, and the SVD-based inits are untested with μP.",
            stacklevel=2,
        )
    if unscaled:
        warnings.warn(
            f"{len(unscaled)} trainable tensor(s) have no μP rule (not in the stock model: adapters or a custom head, "
            f"e.g. {unscaled[:3]}); they train at the plain learning rate.",
            stacklevel=2,
        )
    return list(groups.values())


def adapter_rule(plan: MuPPlan, name: str, group: dict[str, Any]) -> TensorRule:
    """The rule an adapter tensor (or another tensor the stock model lacks) trains by in `group`: its μP rule, or
    every factor 1 where it has none or its group chose the plain LR (`mup_param_groups(..., adapters="plain")`)."""
    rule = plan.adapters.get(name)
    return NO_RULE if rule is None or group.get("mup_adapter") == "plain" else rule


def scales_eps(plan: MuPPlan, family: str) -> bool:
    """Whether μP's groups carry their own Adam ε for this plan and optimizer family (a factor ≠ 1 on some tensor)."""
    return family in (ADAM_LIKE, MUON) and any(
        r.eps_mult(family) != 1.0 for r in [*plan.rules.values(), *plan.adapters.values()])


def mup_optimizer(model: nn.Module, optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW, lr: float = 1e-3,
                  weight_decay: float = 0.0, weight_decay_mode: str = "width_independent", no_decay: NoDecay = None,
                  adapters: str = "mup", **optimizer_kwargs: Any) -> torch.optim.Optimizer:
    """A μP optimizer in one call: `mup_param_groups` and the optimizer built from the same LR and ε.

    Usage: `opt = hf_mup.mup_optimizer(model, torch.optim.AdamW, lr=3e-3, weight_decay=0.1, eps=1e-6, betas=(0.9, 0.95))`

    `optimizer_kwargs` go to the optimizer class (`betas`, `eps`, ...); its default LR is η, so schedulers that read
    `optimizer.defaults["lr"]` (absolute end LRs) see the LR every group is relative to.
    """
    eps = optimizer_kwargs.get("eps", default_eps(optimizer))
    groups = mup_param_groups(model, lr, weight_decay, optimizer=optimizer, weight_decay_mode=weight_decay_mode,
                              no_decay=no_decay, eps=eps, adapters=adapters,
                              adjust_lr_fn=optimizer_kwargs.get("adjust_lr_fn"))
    # (a torch.optim class takes `lr`: the base class's __init__, which the annotation gives, does not)
    built = cast(Callable[..., torch.optim.Optimizer], optimizer)(groups, lr=lr, **optimizer_kwargs)
    check_optimizer(model, built)
    return built


def default_adjust(optimizer_cls: type) -> str | None:
    """A Muon class's default `adjust_lr_fn` (torch.optim.Muon's None is "original"; hf_mup.MuonAdamW's is
    "match_rms_adamw"); None for a class without one."""
    try:
        default = inspect.signature(optimizer_cls).parameters["adjust_lr_fn"].default
    except (KeyError, TypeError, ValueError):
        return None
    return default if isinstance(default, str) else "original"


def muon_default_adjust(optimizer: object) -> str:
    """The `adjust_lr_fn` Muon's groups are built for when none is given: "match_rms_adamw" for the name "muon", the
    class's own default for torch.optim.Muon and hf_mup.MuonAdamW; another Muon class must say (its scaling is
    unknown: a wrong guess would scale the hidden LR with width)."""
    if isinstance(optimizer, str) or hasattr(optimizer, "value"):
        return DEFAULT_MUON_ADJUST
    from .muon import MuonAdamW

    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, (MuonAdamW, *_TORCH_MUON)):
        return default_adjust(cls) or DEFAULT_MUON_ADJUST
    raise MuPError(f"{cls.__name__} is a Muon hf_mup does not know: give adjust_lr_fn='original' or 'match_rms_adamw' "
                   "(how it scales each matrix's update; torch.optim.Muon's names), or use hf_mup.MuonAdamW.")


def default_eps(optimizer_cls: type) -> float | None:
    """The optimizer class's own default ε (Adagrad's is 1e-10, Adam's 1e-8), or None."""
    try:
        default = inspect.signature(optimizer_cls).parameters["eps"].default
    except (KeyError, TypeError, ValueError):
        return None
    return default if isinstance(default, float) else None


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, require_all: bool = True) -> None:
    """Raise `MuPError` unless every trainable parameter of a μP model is in a group with its μP learning rate.

    Catches the commonest silent μP failures: `torch.optim.AdamW(model.parameters())`, groups built for another
    model or optimizer, and tensors left out of the optimizer. Also re-checks (and, after module surgery, re-applies)
    the forward multipliers and attention scales (`get_plan`). Does nothing for a stock model; skips groups marked
    `"mup_unchecked": True` (a deliberately non-μP ablation).
    """
    plan = get_plan(model)
    if plan is None:
        return
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    if type(optimizer).__module__.startswith("deepspeed."):  # a ZeRO optimizer: its groups hold flat partitions
        from .zero import param_group_of

        inner = getattr(optimizer, "optimizer", optimizer)  # (torch's inside)
        if any(g.get("use_muon") for g in inner.param_groups) or isinstance(inner, _TORCH_MUON):
            raise MuPError(MUON_UNDER_ZERO)
        fold_deepspeed_saves()
        group_of, optimizer = param_group_of(optimizer), inner
    try:
        family = optimizer_family(optimizer)
    except MuPError:
        family = None  # a class hf_mup does not know: trust the family the groups were built for
    left_out = []
    eps_checks: list[tuple[str, dict[str, Any], float]] = []
    eps_scaled: dict[str, bool] = {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        name = canonical_name(name)
        group = group_of.get(id(p))
        if group is None:
            left_out.append(name)
            continue
        if group.get("mup_unchecked"):  # a deliberately non-μP ablation (the lab's global LR, LoRA+)
            continue
        if "lr_mult" not in group:
            cls = type(optimizer).__name__
            build = ("hf_mup.mup_optimizer(model, hf_mup.MuonAdamW, lr=...) (Muon for the hidden matrices, AdamW for "
                     "the rest: torch.optim.Muon holds 2-D tensors only)" if family == MUON else
                     f"hf_mup.mup_optimizer(model, torch.optim.{cls}, lr=...) (or "
                     f"torch.optim.{cls}(hf_mup.mup_param_groups(model, lr=...)))")
            raise MuPError(
                f"The optimizer {cls} has no μP parameter groups (parameter {name!r} is in a plain group), so every "
                f"tensor would train at the same LR. Build it with {build}; with the transformers Trainer, use "
                "hf_mup.MuPTrainer in its place."
            )
        rules_for = group.get("mup_optimizer", family)
        # a Muon plan's Adam groups may train in an Adam-like optimizer of their own (Muon's beside it)
        adam_half = rules_for == MUON and family == ADAM_LIKE and group.get("use_muon") is False
        if family is not None and rules_for != family and not adam_half:
            raise MuPError(
                f"The parameter groups were made for {rules_for!r} but the optimizer is {type(optimizer).__name__}: "
                f"pass optimizer={family!r} to hf_mup.mup_param_groups."
            )
        rule = plan.rules.get(name) or adapter_rule(plan, name, group)
        assert rules_for is not None  # (lr_mult raised a MuPError for None: no rules for an optimizer "NoneType")
        by_muon = isinstance(optimizer, _TORCH_MUON) or bool(group.get("use_muon"))  # torch's Muon updates all it holds
        if by_muon and not rule.uses_muon(len(param_shape(p))):
            raise MuPError(f"Parameter {name!r} (shape {tuple(param_shape(p))}, {rule.kind.value}) is updated by "
                           "Muon, which μP reserves for hidden matrices: train it with AdamW, as hf_mup.MuonAdamW "
                           "does with hf_mup.mup_param_groups(model, lr, optimizer='muon').")
        adjust = group.get("adjust_lr_fn", optimizer.defaults.get("adjust_lr_fn"))
        expected = rule.muon_lr_mult(tuple(param_shape(p)), adjust) if by_muon else rule.lr_mult(rules_for)
        if not math.isclose(group["lr_mult"], expected, rel_tol=1e-6):
            raise MuPError(
                f"Parameter {name!r} is in a group with lr_mult {group['lr_mult']:g}, but μP needs {expected:g}"
                + (f" for Muon with adjust_lr_fn={adjust!r}" if by_muon else "")
                + "; build the groups with hf_mup.mup_param_groups(model, ...) for this model"
                + (" and optimizer." if by_muon else ".")
            )
        if rules_for not in eps_scaled:
            eps_scaled[rules_for] = scales_eps(plan, rules_for)
        if eps_scaled[rules_for] and not by_muon:
            eps_checks.append((name, group, rule.eps_mult(rules_for)))
    base_eps = {_check_eps(*check) for check in eps_checks}  # after every LR: a wrong LR is the first thing to name
    default_eps = optimizer.defaults.get("eps")
    if base_eps and isinstance(default_eps, float) and not all(math.isclose(e, default_eps, rel_tol=1e-6) for e in base_eps):
        raise MuPError(
            f"The μP groups were built for Adam's ε = {min(base_eps):g} (each group's eps is that × its width and "
            f"depth factor, and overrides the optimizer's), but the optimizer's eps is {default_eps:g}: give both the "
            f"same ε, e.g. hf_mup.mup_optimizer(model, torch.optim.AdamW, lr=..., eps={default_eps:g}) or "
            f"torch.optim.AdamW(hf_mup.mup_param_groups(model, lr, eps={default_eps:g}), eps={default_eps:g})."
        )
    if left_out and require_all:
        raise MuPError(
            f"{len(left_out)} trainable parameter(s) are in no optimizer group, e.g. {left_out[:4]}: they would never "
            "train. Build the optimizer from hf_mup.mup_param_groups(model, ...) after any change to the model, or "
            "freeze them (requires_grad=False)."
        )


def _check_eps(name: str, group: dict[str, Any], eps_mult: float) -> float:
    """The base ε of a group whose ε μP scales (its `eps` over its factor); a `MuPError` if the factor is not μP's."""
    if "eps_mult" not in group or not math.isclose(group["eps_mult"], eps_mult, rel_tol=1e-6):
        raise MuPError(
            f"Parameter {name!r} is in a group without μP's Adam ε factor {eps_mult:g} (1/m_N with eps_width_scaling, "
            "× m_L^-α with depth scaling): build the groups with hf_mup.mup_param_groups(model, ...) for this model."
        )
    base_eps: float = group["eps"] / group["eps_mult"]
    return base_eps


# ------------------------------------------------------------------------------------ the check at the first step

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # the μP models converted in this process
_CHECKED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
_STEP_HOOK: list[RemovableHandle] = []


def watch(model: nn.Module) -> None:
    """Have every optimizer that holds `model`'s parameters checked at its first step (`check_optimizer`, tensors
    left out allowed: they may train in another optimizer). A plain optimizer — a stock `transformers.Trainer`'s,
    `AdamW(model.parameters())` — or groups whose ε disagrees with the optimizer's then raise a `MuPError` before
    the first update, instead of training with one LR or the wrong ε. `convert` calls it; one global
    `torch.optim` step pre-hook, a set lookup per step. Groups marked `"mup_unchecked": True` (a deliberately
    non-μP ablation) are not checked."""
    _WATCHED.add(model)
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_pre_hook(_check_at_first_step))


def _check_at_first_step(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if optimizer in _CHECKED:
        return
    groups = optimizer.param_groups
    if not any(g.get("mup_unchecked") for g in groups):
        held = {id(p) for g in groups for p in g["params"]}
        for model in list(_WATCHED):
            if PLAN_ATTR in model.__dict__ and any(id(p) in held for p in model.parameters()):
                check_optimizer(model, optimizer, require_all=False)
    _CHECKED.add(optimizer)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """η: the learning rate a μP optimizer's groups were built from (a group's initial LR over its lr_mult).

    Usage: `scheduler_min_lr = 0.1 * hf_mup.optim.base_lr(optimizer)`
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)
    etas: list[float] = [g.get("initial_lr", g["lr"]) / g["lr_mult"] for g in optimizer.param_groups if g.get("lr_mult")]
    if not etas:
        raise MuPError("The optimizer has no μP parameter groups: build it from hf_mup.mup_param_groups(model, lr=...).")
    if not all(math.isclose(e, etas[0], rel_tol=1e-6) for e in etas):
        raise MuPError(f"The optimizer's μP groups were built from different learning rates ({min(etas):g} to "
                       f"{max(etas):g}): build all of them with one hf_mup.mup_param_groups(model, lr=...) call.")
    return etas[0]


def mup_min_lrs(optimizer: torch.optim.Optimizer, min_lr: float) -> list[float]:
    """Per-group LR floors for `ReduceLROnPlateau(min_lr=...)` that keep μP's ratios: `min_lr` × each group's lr_mult.

    Usage: `ReduceLROnPlateau(opt, min_lr=hf_mup.mup_min_lrs(opt, 1e-5))` (one floor for all groups would clamp the
    hidden groups, whose LR is η/m, long before the others).
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return [min_lr * g.get("lr_mult", 1.0) for g in optimizer.param_groups]
