"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a sign-based optimizer.

Usage: `opt = hf_mup.Lion(hf_mup.mup_param_groups(model, lr=3e-4, weight_decay=0.1, optimizer="lion"))`

Every entry of Lion's update is ±1 (or 0), so, like Adam's, its size does not depend on the gradient's scale: μP's
Adam-like rule applies (hidden weights at η/m, the other tensors at η; `hf_mup.optimizer_family` says "adamw").
Lingle (2024) found that μTransfer of the learning rate fails with Lion: tune it at the target width, or prefer AdamW.
Lion's usual learning rate is 3-10x smaller than AdamW's and its weight decay 3-10x larger.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from .stepped import GroupwiseOptimizer


class Lion(GroupwiseOptimizer):
    """Lion, with decoupled weight decay (as AdamW) and per-group `lr`, `betas` and `weight_decay`.

    Per step, for each parameter p with gradient g and momentum m (zero at first):
        p ← p·(1 − lr·weight_decay) − lr·sign(β1·m + (1 − β1)·g)
        m ← β2·m + (1 − β2)·g
    Parameters without a gradient are skipped. Extra group keys (μP's `lr_mult`, `mup_kind`, ...) are kept as they are.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"Invalid betas: {betas}; each must be in [0, 1]")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    def update_group(self, group: dict[str, Any]) -> None:
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Lion does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg = state["exp_avg"]
            if wd != 0:
                p.mul_(1.0 - lr * wd)
            update = exp_avg.mul(beta1).add_(p.grad, alpha=1.0 - beta1).sign_()
            p.add_(update, alpha=-lr)
            exp_avg.mul_(beta2).add_(p.grad, alpha=1.0 - beta2)
