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
          desc: str = "", on_eval: Callable[[int, float], bool] | None = None, resume: dict[str, Any] | None = None,
          until: int | None = None) -> dict[str, Any]:
    """Train `model` for `recipe.steps` steps on `batches` with the recipe's optimizer, schedule and clipping; never
    raises on divergence.

    `until`: pause after that step (validated there) and return the run's `state` (model, optimizer, schedule, RNG
    and step); `resume` such a state to go on exactly where it paused (`batches` starts from the beginning: its first
    draws are replayed, so the batch stream must depend on its seed only). Successive halving's rungs
    (`hf_mup.lab.halving`) are made so.

    `evaluate` (a validation loss) runs every `eval_every` steps (0: only at the end). A non-finite train or
    validation loss stops training: `diverged` is True. `on_eval(step, loss)` sees each validation loss and stops
    training by returning True (a pruned search trial, `hf_mup.lab.search`): `stopped` is True. Returns this call's
    per-step `train_loss`, `val_steps`, `val_loss`, `diverged`, `stopped`, `steps_run`, `seconds` (and `state`).
    """
    from tqdm.auto import tqdm

    from ..optim import check_optimizer

    model.train()
    optimizer = recipe.build_optimizer(model)
    check_optimizer(model, optimizer)  # no-op for a stock (SP) model
    scheduler = recipe.build_scheduler(optimizer)
    first, stop = 0, recipe.steps if until is None else until
    if resume is not None:
        first = _load_state(resume, model, optimizer, scheduler, batches)
    if not first <= stop <= recipe.steps:
        raise ValueError(f"train: pause at step {stop} of {recipe.steps}, resumed at {first}")
    train_losses: list[float] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    diverged = stopped = False
    start = time.perf_counter()
    bar = tqdm(range(first, stop), initial=first, total=stop, desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True)
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
        if evaluate is not None and ((eval_every and done % eval_every == 0) or done == stop):
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
    out = {"train_loss": train_losses, "val_steps": val_steps, "val_loss": val_losses, "diverged": diverged,
           "stopped": stopped, "steps_run": len(train_losses), "seconds": time.perf_counter() - start}
    if stop < recipe.steps and not (diverged or stopped):
        out["state"] = _state(stop, model, optimizer, scheduler)
    return out


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers by name, as they are (unlike a μP model's state_dict(): see `_state`)."""
    return [*model.named_parameters(), *model.named_buffers()]


def _state(step: int, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """What resuming at `step` needs, on the CPU (a checkpoint's contents)."""
    # the tensors as they are: a μP model's state_dict() folds its multipliers into the weights, and unfolding them
    # on load rounds the last bit, which a long run with a high LR turns into a different run
    state = {"step": step, "model": {k: v.detach().cpu().clone() for k, v in _tensors(model)},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _load_state(state: dict[str, Any], model: nn.Module, optimizer, scheduler, batches: Iterator) -> int:
    with torch.no_grad():  # as `_state` saved them (not through load_state_dict, which unfolds μP's weights)
        for k, v in _tensors(model):
            v.copy_(state["model"][k])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for _ in range(state["step"]):  # the batches it had trained on, drawn again and dropped
        next(batches)
    return int(state["step"])
