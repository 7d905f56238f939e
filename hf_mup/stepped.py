"""The base of hf_mup's own optimizers (`hf_mup.Lion`, `hf_mup.MuonAdamW`): torch's `step(closure)` protocol once,
each optimizer's update per parameter group in `update_group`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch


class GroupwiseOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose `step` evaluates the closure (with gradients on), then updates each parameter group
    without autograd: subclasses implement `update_group(group)`."""

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.update_group(group)
        return loss

    def update_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError
