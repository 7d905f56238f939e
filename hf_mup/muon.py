"""Muon for the hidden matrices and AdamW for the rest, in one optimizer, as Muon is used (Jordan et al. 2024;
Moonlight, Liu et al. 2025): one `param_groups` list, one state, one `state_dict`, so the Trainer, its schedulers,
checkpoints and accelerate see one ordinary torch optimizer.

Usage: `opt = hf_mup.mup_optimizer(model, hf_mup.MuonAdamW, lr=2e-3, weight_decay=0.1)`

Each group says which update it takes (`use_muon`, set by `hf_mup.mup_param_groups(..., optimizer="muon")`): Muon
groups run torch.optim.Muon's update (its `_single_tensor_muon`: momentum, Newton-Schulz orthogonalisation,
`adjust_lr_fn`, decoupled decay lr·wd; bit for bit in bfloat16, tested), the others torch's AdamW (its functional
`adam` with decoupled decay, the same kernels as torch.optim.AdamW). The default `adjust_lr_fn` is Moonlight's
"match_rms_adamw" (the update's RMS matched to AdamW's), so one learning rate serves both parts; μP's factor
(`hf_mup.rules.TensorRule.muon_lr_mult`) makes it transfer across width.

`ns_dtype`: torch runs Newton-Schulz in bfloat16 (the default here too); CPUs without bfloat16 matrix units emulate
it many times slower than float32, so on such a CPU give `ns_dtype=torch.float32` (the same iteration, in float32).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.optimizer import ParamsT

try:  # torch.optim.Muon's constants (its module is private)
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS
    from torch.optim._muon import EPS as NS_EPS
except ImportError as e:  # pragma: no cover - torch < 2.9 has no Muon
    raise ImportError("hf_mup.MuonAdamW needs torch.optim.Muon (torch 2.9 or later)") from e

from .rules import MUON_ADJUST, muon_adjust
from .stepped import GroupwiseOptimizer


class MuonAdamW(GroupwiseOptimizer):
    """torch.optim.Muon on the groups with `use_muon`, torch.optim.AdamW on the others.

    Keys of a Muon group: `lr`, `weight_decay`, `momentum`, `nesterov`, `ns_coefficients`, `ns_steps`, `ns_eps`
    (Newton-Schulz's ε, torch's `eps`), `adjust_lr_fn`; of an AdamW group: `lr`, `betas`, `eps`, `weight_decay`,
    `amsgrad`, `maximize`, `foreach`, `fused`. Group keys override these defaults; others (μP's `lr_mult`,
    `mup_kind`, ...) are kept. Muon groups must hold 2-D tensors only (torch.optim.Muon's condition).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                 ns_steps: int = DEFAULT_NS_STEPS, ns_eps: float = NS_EPS, adjust_lr_fn: str | None = "match_rms_adamw",
                 amsgrad: bool = False, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, ns_dtype: torch.dtype = torch.bfloat16) -> None:
        if not lr >= 0.0 or not weight_decay >= 0.0 or not eps >= 0.0 or not momentum >= 0.0:
            raise ValueError(f"Invalid lr {lr}, weight_decay {weight_decay}, eps {eps} or momentum {momentum}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas}; each must be in [0, 1)")
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "eps": eps, "momentum": momentum,
                    "nesterov": nesterov, "ns_coefficients": tuple(ns_coefficients), "ns_steps": ns_steps,
                    "ns_eps": ns_eps, "adjust_lr_fn": adjust_lr_fn, "amsgrad": amsgrad, "maximize": maximize,
                    "foreach": foreach, "fused": fused, "ns_dtype": ns_dtype, "use_muon": False}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["use_muon"]:
            if any(p.ndim != 2 for p in group["params"]):
                shapes = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                raise ValueError(f"Muon updates 2-D tensors only; a use_muon group holds tensors of shape {shapes[:3]}")
            if group["adjust_lr_fn"] not in (None, *MUON_ADJUST):
                raise ValueError(f"adjust_lr_fn {group['adjust_lr_fn']!r}: use one of {MUON_ADJUST}")
            if group["maximize"]:
                raise ValueError("maximize=True: Muon's update has no maximize (torch.optim.Muon's neither)")

    def update_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params if p.grad is not None]  # (the same list, typed for the checker)
        if any(g.is_sparse or torch.is_complex(p) for p, g in zip(params, grads)):
            raise RuntimeError("MuonAdamW does not support sparse gradients or complex parameters")
        if group["use_muon"]:
            self._muon_step(group, params, grads)
        else:
            self._adamw_step(group, params, grads)

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        bufs = []
        for p, grad in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        lr, momentum = float(group["lr"]), group["momentum"]
        for p, grad, buf in zip(params, grads, bufs):  # torch's _single_tensor_muon, with Newton-Schulz in ns_dtype
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["ns_eps"],
                                   group["ns_dtype"])
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr * muon_adjust(tuple(p.shape), group["adjust_lr_fn"]))

    def _adamw_step(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if not state:  # as torch.optim.Adam's _init_group (not capturable): the step count on the CPU
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if group["fused"]
                                 else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
             amsgrad=group["amsgrad"], has_complex=False, beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
             foreach=group["foreach"], capturable=False, differentiable=False, fused=group["fused"],
             grad_scale=None, found_inf=None, decoupled_weight_decay=True)


def newton_schulz(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation (its quintic Newton-Schulz iteration) computed in `dtype`. Out of place:
    torch's normalises its bfloat16 copy in place, which is the momentum buffer itself for bfloat16 parameters
    without Nesterov."""
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(grad.dtype)
