"""μP optimizer parameter groups, and the check that an optimizer has them."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import MuPError
from .model import canonical_name, get_plan, unwrap
from .rules import ADAM_LIKE, OPTIMIZERS, SGD_LIKE, weight_decay_for_group

NoDecay = Callable[[str], bool] | Sequence[str] | None


def _norm_param_names(model: nn.Module) -> set[str]:
    return {
        f"{mname}.{pname}" if mname else pname
        for mname, module in model.named_modules()
        if "Norm" in type(module).__name__
        for pname, _ in module.named_parameters(recurse=False)
    }


def _no_decay_predicate(model: nn.Module, no_decay: NoDecay) -> Callable[[str], bool]:
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
    optimizer: str = "adamw",
    weight_decay_mode: str = "width_independent",
    no_decay: NoDecay = None,
) -> list[dict]:
    """Parameter groups for `torch.optim.*` with μP's per-tensor learning rates and weight decay.

    Usage: `torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=3e-3, weight_decay=0.1))`

    Each group carries `lr_mult` (its LR over `lr`), `mup_kind` and `mup_optimizer`, so that schedulers
    (which scale each group's LR relatively), logs and `check_optimizer` can see them.
    `optimizer`: "adamw" / "adam" (Adam-like rules) or "sgd". `weight_decay_mode`: "width_independent"
    (lr·wd the same at every width, microsoft/mup's default), "coupled" (plain) or "independent" (the decay per
    step is `weight_decay`, whatever the LR). `no_decay`: parameter names (substrings) or a predicate on the name;
    by default biases and norm weights.
    """
    if optimizer not in OPTIMIZERS:
        raise MuPError(f"No μP learning-rate rule for optimizer {optimizer!r}; use one of {OPTIMIZERS}.")
    plan = get_plan(model)
    if plan is None:
        raise MuPError(
            "mup_param_groups needs a μP model: build it with hf_mup.MuPModel.from_config(config, base_hidden_size=...) "
            "or hf_mup.convert(model, ...)."
        )
    model = unwrap(model)
    skip_decay = _no_decay_predicate(model, no_decay)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = canonical_name(name)
        rule = plan.rules[name]
        lr_mult = rule.lr_mult(optimizer)
        decays = weight_decay != 0 and not skip_decay(name)
        key = (rule.kind.value, lr_mult, decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * lr_mult,
                "weight_decay": weight_decay_for_group(weight_decay, lr, lr_mult, weight_decay_mode) if decays else 0.0,
                "lr_mult": lr_mult,
                "mup_kind": rule.kind.value,
                "mup_optimizer": optimizer,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def _optimizer_family(optimizer: torch.optim.Optimizer) -> str | None:
    if isinstance(optimizer, torch.optim.SGD):
        return SGD_LIKE[0]
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return ADAM_LIKE[0]
    return None


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise `MuPError` unless every trainable parameter of a μP model is in a group with its μP learning rate.

    Catches the commonest silent μP failure: `torch.optim.AdamW(model.parameters())`. Does nothing for a stock model.
    """
    plan = get_plan(model)
    if plan is None:
        return
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    family = _optimizer_family(optimizer)
    for name, p in unwrap(model).named_parameters():
        group = group_of.get(id(p))
        if group is None or not p.requires_grad:
            continue
        name = canonical_name(name)
        if "lr_mult" not in group:
            raise MuPError(
                f"The optimizer {type(optimizer).__name__} has no μP parameter groups (parameter {name!r} is in a "
                "plain group), so every tensor would train at the same LR. Build it as "
                f"torch.optim.{type(optimizer).__name__}(hf_mup.mup_param_groups(model, lr=...))."
            )
        rules_for = group.get("mup_optimizer", family)
        if family is not None and (rules_for in ADAM_LIKE) != (family in ADAM_LIKE):
            raise MuPError(
                f"The parameter groups were made for {rules_for!r} but the optimizer is {type(optimizer).__name__}: "
                f"pass optimizer={family!r} to hf_mup.mup_param_groups."
            )
        expected = plan.rules[name].lr_mult(rules_for)
        if not math.isclose(group["lr_mult"], expected, rel_tol=1e-6):
            raise MuPError(
                f"Parameter {name!r} is in a group with lr_mult {group['lr_mult']:g}, but μP needs {expected:g}; "
                "build the groups with hf_mup.mup_param_groups(model, ...) for this model."
            )
