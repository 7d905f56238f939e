"""`describe`: a table of what hf_mup decided for every parameter."""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import PretrainedConfig, PreTrainedModel

from .errors import MuPError
from .model import get_plan, unwrap
from .optim import DEFAULT_MUON_ADJUST, scales_eps
from .plan import canonical_name, meta_model, norm_gains
from .rules import Kind

# The config fields of the architecture knobs (Lingle's ablations that live in the transformers config).
ARCH_FIELDS = ("num_attention_heads", "num_key_value_heads", "hidden_act", "activation_function", "attention_bias",
               "mlp_bias", "tie_word_embeddings")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    kind: str
    width_mult: float
    init_std: str  # as decided: the stock HF init std × μP's factor, or the constant it is filled with
    adam_lr_mult: float
    sgd_lr_mult: float
    trainable: bool = True  # False: a fixed norm gain (`trainable_norm_gains=False`)
    adam_eps_mult: float = 1.0  # μP's factor on Adam's ε (width: 1/m_N, depth: m_L^-α)
    muon_lr_mult: float | None = None  # a hidden matrix's LR factor under Muon ("match_rms_adamw"); None: Adam's


class _RecordInit(TorchFunctionMode):
    """Records the std (or constant) each tensor is initialised with and skips the fill: HF's `_init_weights` runs
    on a meta-device twin, unchanged (no patching of transformers), and nothing is allocated."""

    FILLS = {"normal_": "normal", "zero_": "const", "zeros_": "const", "ones_": "const", "fill_": "const",
             "constant_": "const", "uniform_": "uniform", "trunc_normal_": "normal", "xavier_uniform_": "xavier_uniform",
             "xavier_normal_": "xavier_normal", "kaiming_uniform_": "kaiming_uniform", "kaiming_normal_": "kaiming_normal"}

    def __init__(self) -> None:
        super().__init__()
        self.record: dict[int, tuple[str, float]] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Collection[type], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        how = self.FILLS.get(getattr(func, "__name__", ""))
        if how is not None and not args and isinstance(kwargs.get("tensor"), torch.Tensor):
            args = (kwargs.pop("tensor"),)  # torch.nn.init passes the tensor by keyword to modes
        if how is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        name = func.__name__
        if name in ("normal_", "trunc_normal_"):
            value = kwargs.get("std", args[2] if len(args) > 2 else 1.0)
        elif name == "ones_":
            value = 1.0
        elif name in ("fill_", "constant_"):
            value = kwargs.get("val", kwargs.get("value", args[1] if len(args) > 1 else 0.0))
        elif how == "const":
            value = 0.0
        else:
            value = float("nan")
        self.record[id(args[0])] = (how, float(value))
        return args[0]


def parameter_table(model: nn.Module) -> list[ParamInfo]:
    """One `ParamInfo` per parameter of a μP model (a meta-device model works: nothing is allocated)."""
    plan = get_plan(model)
    if plan is None:
        raise MuPError("describe needs a μP model: build it with hf_mup.MuPModel.from_config(...).")
    model = cast(PreTrainedModel, unwrap(model))  # the transformers model that carries the plan
    twin = meta_model(type(model), model.config)  # HF's init, recorded on a data-less copy
    for t in [*twin.modules(), *twin.parameters()]:
        t.__dict__.pop("_is_hf_initialized", None)
    with _RecordInit() as recorder:
        twin.initialize_weights()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
    record = recorder.record
    zeroed = set()
    if plan.mup.zero_init_readout:
        zeroed |= {f"{n}.weight" for n in plan.readouts.keys() - plan.tied_readouts - plan.routers}
    query_params = set()
    if plan.mup.zero_init_query:
        query_params = {id(p) for _, attn in plan.arch.attention_modules(twin) for p, _ in plan.arch.query_slices(attn)}
    fixed = {id(p) for p in norm_gains(twin)} if not plan.mup.trainable_norm_gains else set()
    readout_scale = {f"{n}.weight": s for n, s in plan.readout_init_scale.items()}
    rows = []
    for name, p in twin.named_parameters():
        rule = plan.rules[name]
        how, std = record.get(id(p), ("?", float("nan")))
        if name in zeroed:
            init = "0 (zero readout)"
        elif how == "normal":
            init = f"{std * rule.init_scale * readout_scale.get(name, 1.0):.4g}"
            if id(p) in query_params:
                init += ", query 0" if p.ndim == 2 else ""
        elif how == "const":
            init = f"={std:g}"
        else:
            init = how
        muon = rule.muon_lr_mult(tuple(p.shape), DEFAULT_MUON_ADJUST) if rule.uses_muon(p.ndim) else None
        rows.append(
            ParamInfo(name, tuple(p.shape), rule.kind.value, rule.width_mult, init, rule.lr_mult("adamw"),
                      rule.lr_mult("sgd"), id(p) not in fixed, rule.eps_mult("adamw"), muon)
        )
    shapes = {canonical_name(n): tuple(p.shape) for n, p in model.named_parameters()}
    for name, rule in plan.adapters.items():  # PEFT's init: A Kaiming-uniform (∝ 1/√fan-in), B zero
        init = "PEFT's (∝ 1/√fan-in)" if rule.kind is Kind.DOWN else "PEFT's"
        rows.append(ParamInfo(name, shapes[name], rule.kind.value, rule.width_mult, init, rule.lr_mult("adamw"),
                              rule.lr_mult("sgd"), True, rule.eps_mult("adamw")))
    return rows


def describe(model: nn.Module) -> str:
    """A text table of every parameter: kind, width multiplier, init std, LR multipliers, plus the forward multipliers.

    Usage: `print(hf_mup.describe(model))`
    """
    plan = get_plan(model)
    rows = parameter_table(model)
    assert plan is not None  # (parameter_table refused a stock model)
    eps = scales_eps(plan, "adamw")
    header = ("parameter", "shape", "kind", "width m", "init std", "Adam LR ×", "SGD LR ×", "Muon LR ×") + (
        ("Adam ε ×",) if eps else ())
    cells = [header] + [
        (r.name, "×".join(map(str, r.shape)), r.kind, f"{r.width_mult:g}", r.init_std,
         *((f"{r.adam_lr_mult:g}", f"{r.sgd_lr_mult:g}", "Adam" if r.muon_lr_mult is None else f"{r.muon_lr_mult:g}")
           if r.trainable else ("fixed", "fixed", "fixed")),
         *((f"{r.adam_eps_mult:g}",) if eps else ()))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {k.value: n for k in Kind if (n := sum(r.kind == k.value for r in rows)) or k is not Kind.DOWN}
    mup = plan.mup
    config = cast(PretrainedConfig, unwrap(model).config)  # a transformers model's
    scale = "· √(d_base/d)" if mup.attention_scale == "1/d" else "(1/sqrt(d))"
    lines += [
        "",
        f"base hidden size {mup.base_hidden_size}, head size {plan.head_dim} (base {plan.base_head_dim}); "
        + ", ".join(f"{n} {k}" for k, n in counts.items()),
        "μP settings: " + ", ".join(f"{k}: {v}" for k, v in mup.to_dict().items() if k != "version"),
        "architecture: " + ", ".join(f"{k}: {getattr(config, k)}" for k in ARCH_FIELDS if hasattr(config, k)),
        f"attention scale: stock × {plan.attention_scale_factor:g} (attn_mult {mup.attn_mult:g} {scale})",
        f"input_mult {plan.input_mult:g} on: {', '.join(plan.embeddings) or 'nothing'}"
        + (f" (input_mult {mup.input_mult:g} × √(base / hidden): the model multiplies its embeddings by √hidden)"
           if plan.arch.sqrt_width_embeddings else ""),
        ("Adam ε: × 1/m_N = " + f"{mup.base_hidden_size / config.hidden_size:g}" + " on every tensor with a width "
         "dimension (eps_width_scaling)" if mup.eps_width_scaling else "Adam ε: not scaled with width "
         "(eps_width_scaling=False)"),
        (f"depth: {config.num_hidden_layers} layers, base {mup.base_num_layers} (m_L {plan.depth_mult:g}, α "
         f"{mup.depth_alpha:g}): residual branches × {plan.residual_scale:g} on {len(plan.residuals)} modules "
         f"({', '.join(plan.residuals[:2])}, ...); in-block tensors: Adam LR × m_L^(α-1) = "
         f"{plan.depth_mult ** (mup.depth_alpha - 1):g}, SGD LR × m_L^(2α-1) = "
         f"{plan.depth_mult ** (2 * mup.depth_alpha - 1):g}, Adam ε × m_L^-α = {plan.residual_scale:g}"
         if mup.base_num_layers is not None else "depth: no depth scaling (base_num_layers unset)"),
        *([f"adapters: {len(plan.adapters)} LoRA-family tensors by their μP rules (hf_mup.rules, \"Adapters\"): A "
           "(width → rank) down, B (rank → width) input; mup_param_groups(..., adapters='plain') trains them at η"]
          if plan.adapters else []),
        "Muon (hf_mup.MuonAdamW, adjust_lr_fn 'match_rms_adamw'): hidden matrices at the Muon column's factor, "
        "√(fanout_m/fanin_m) × torch's adjustment at the base shape over this shape's (hf_mup.rules.TensorRule."
        "muon_lr_mult); every other tensor ('Adam') by the Adam column, with Adam's ε",
        "readout input × " + (", ".join(f"{n} {s:g}" + (" (tied)" if n in plan.tied_readouts else "")
                                        for n, s in plan.readouts.items() if n not in plan.routers) or "nothing"),
        *([f"MoE routers and gates (readouts inside the blocks, stock init): input × "
           f"{', '.join(sorted({f'{s:g}' for n, s in plan.readouts.items() if n in plan.routers}))} on "
           f"{len(plan.routers)} modules ({', '.join(sorted(plan.routers)[:2])}, ...)"] if plan.routers else []),
        "description: " + ("derived from the model (hf_mup.architectures.generic); verified model types: "
                           "docs/models.md" if plan.arch.generic else "described by hand (hf_mup/architectures/)"),
    ]
    return "\n".join(lines)
