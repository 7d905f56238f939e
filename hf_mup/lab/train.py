"""The lab's one training loop: a model, its `Recipe`, and batches; LM pretraining (`hf_mup.lab.lm.train_lm`) and
fine-tuning (`hf_mup.lab.tasks.finetune`) both run it. The optimizer and the schedule come from the recipe only.

Usage:
    result = train(model, recipe, batches)        # batches: an iterator of the model's keyword inputs (with labels)
    result["train_loss"], result["diverged"]
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .recipe import Recipe


def train(model: nn.Module, recipe: Recipe, batches: Iterator[dict[str, torch.Tensor]],
          evaluate: Callable[[], float] | None = None, eval_every: int = 0, progress: bool = False,
          desc: str = "", on_eval: Callable[[int, float], bool] | None = None) -> dict[str, Any]:
    """Train `model` for `recipe.steps` steps on `batches` with the recipe's optimizer, schedule and clipping; never
    raises on divergence.

    `evaluate` (a validation loss) runs every `eval_every` steps (0: only at the end). A non-finite train or
    validation loss stops training: `diverged` is True. `on_eval(step, loss)` sees each validation loss and stops
    training by returning True (a pruned search trial, `hf_mup.lab.search`): `stopped` is True. Returns the per-step
    `train_loss`, `val_steps`, `val_loss`, `diverged`, `stopped`, `steps_run`, `seconds`.
    """
    from tqdm.auto import tqdm

    from ..optim import check_optimizer

    model.train()
    optimizer = recipe.build_optimizer(model)
    check_optimizer(model, optimizer)  # no-op for a stock (SP) model
    scheduler = recipe.build_scheduler(optimizer)
    train_losses: list[float] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    diverged = stopped = False
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        loss = model(**next(batches)).loss
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        optimizer.step()
        scheduler.step()
        train_losses.append(value)
        done = step + 1
        if evaluate is not None and ((eval_every and done % eval_every == 0) or done == recipe.steps):
            v = evaluate()
            model.train()
            val_steps.append(done)
            val_losses.append(v)
            if not math.isfinite(v):
                diverged = True
                break
            if on_eval is not None and on_eval(done, v):
                stopped = True
                break
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    return {"train_loss": train_losses, "val_steps": val_steps, "val_loss": val_losses, "diverged": diverged,
            "stopped": stopped, "steps_run": len(train_losses), "seconds": time.perf_counter() - start}
