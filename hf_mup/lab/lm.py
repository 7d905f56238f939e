"""The small LMs of the coordinate check, sweeps and demo (their configs: `hf_mup.lab.recipe.lm_config`): the
masked-LM rule (`mask_tokens`), LM batches and validation loss, and `train_lm`, which trains a causal LM (GPT-2,
Llama) or a masked LM (BERT) as a `Recipe` says, with the lab's one loop (`hf_mup.lab.train`).

Usage:
    recipe = Recipe(arch="gpt2", width=128, base_width=64, mup={"output_mult": 8.0}, lr=2**-7, steps=150)
    result = train_lm(recipe.build_model(), recipe, train_blocks, val_blocks)
    result["final_train_loss"], result["final_val_loss"], result["diverged"]
    # a BERT masked LM on raw bytes: vocabulary 256 + 1, the last id is [MASK]
    bert = recipe.replace(arch="bert", vocab_size=257, mup={"output_mult": 1.0})
    result = train_lm(bert.build_model(), bert, train_blocks, val_blocks, mask_id=256)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .recipe import ARCHS, PARAMETRIZATIONS, Recipe, gpt2_config, lm_config, lm_task  # noqa: F401 (lm.lm_config)

TASKS = ("causal_lm", "masked_lm")
# transformers' DataCollatorForLanguageModeling defaults: 15% of the positions are targets; of those 80% are
# replaced by [MASK], 10% by a random token and 10% left unchanged.
MLM_PROBABILITY, MASK_REPLACE_PROB, RANDOM_REPLACE_PROB = 0.15, 0.8, 0.1
EVAL_MASK_SEED = 1234  # validation masks are drawn from this seed at every evaluation: the same masks each time


def build_lm(config, parametrization: str, lr: float, base_width: int | None = None, seed: int = 0,
             device: str | torch.device = "cpu", optimizer: str = "adamw", weight_decay: float = 0.0,
             weight_decay_mode: str = "width_independent", **mup_options) -> tuple[nn.Module, list[dict]]:
    """(model, optimizer parameter groups) of the LM of any `config` (the coordinate check's: GPT-2, BERT, Llama
    configs, other optimizers), seeded by `seed`. Runs that train take a `Recipe` instead (`Recipe.build_model`).

    Usage: `model, groups = build_lm(gpt2_config(512), "mup", lr=2**-8, base_width=64, output_mult=8.0)`

    `parametrization`: "sp" the stock model, one LR; "mup" via `MuPModel` (`mup_options`: `MuPConfig` fields) with
    `mup_param_groups` for `optimizer` ("adamw", "adam", "lion" or "sgd") with `weight_decay` in
    `weight_decay_mode`; "mup_global_lr" the μP model with one LR for every tensor (deliberately broken, for the
    coordinate check). Pass the groups to `torch.optim.*`.
    """
    from ..errors import MuPError
    from .recipe import build_model, param_groups

    if parametrization not in PARAMETRIZATIONS:
        raise MuPError(f"unknown parametrization {parametrization!r}; use one of {', '.join(PARAMETRIZATIONS)}.")
    model = build_model(config, parametrization, base_width, mup_options, seed, device)
    return model, param_groups(model, parametrization, lr, optimizer, weight_decay, weight_decay_mode)


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, generator: torch.Generator,
                special_ids: Iterable[int] = (),
                mlm_probability: float = MLM_PROBABILITY) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of a masked-LM batch, by `DataCollatorForLanguageModeling.torch_mask_tokens`'s rule and
    draws: each position is a target with probability `mlm_probability` (never `mask_id` nor `special_ids`); a target
    becomes `mask_id` with probability 0.8, a uniform random id below `vocab_size` with 0.1, else stays. Labels are
    the original ids at targets and -100 elsewhere. `ids` is not modified; CPU tensors (`generator` is a CPU one).

    Usage: `x, labels = mask_tokens(blocks, mask_id=256, vocab_size=257, generator=torch.Generator().manual_seed(0))`
    """
    inputs, labels = ids.clone(), ids.clone()
    probability = torch.full(ids.shape, mlm_probability)
    probability.masked_fill_(torch.isin(ids, torch.tensor([mask_id, *special_ids], dtype=ids.dtype)), 0.0)
    targets = torch.bernoulli(probability, generator=generator).bool()
    labels[~targets] = -100
    replaced = torch.bernoulli(torch.full(ids.shape, MASK_REPLACE_PROB), generator=generator).bool() & targets
    inputs[replaced] = mask_id
    random_prob = RANDOM_REPLACE_PROB / (1 - MASK_REPLACE_PROB)  # of the targets not replaced by the mask
    randomized = torch.bernoulli(torch.full(ids.shape, random_prob), generator=generator).bool() & targets & ~replaced
    random_ids = torch.randint(vocab_size, ids.shape, dtype=ids.dtype, generator=generator)
    inputs[randomized] = random_ids[randomized]
    return inputs, labels


class _Batches:
    """(input_ids, labels, predicted tokens) of a batch of blocks for `task`, on the model's device: a causal LM gets
    the block twice (the model shifts), a masked LM `mask_tokens` drawn from `generator` (redrawn in the rare case
    of no target at all, which would make the loss NaN)."""

    def __init__(self, model: nn.Module, task: str | None, mask_id: int | None, special_ids: Iterable[int],
                 generator: torch.Generator):
        from ..errors import MuPError

        self.task = task or lm_task(model.config)
        if self.task not in TASKS:
            raise MuPError(f"task {self.task!r}: use one of {', '.join(TASKS)}.")
        self.device = next(model.parameters()).device
        config: Any = model.config  # a transformers model's
        self.vocab_size: int = config.vocab_size
        self.mask_id = self.vocab_size - 1 if mask_id is None else int(mask_id)
        self.special_ids = tuple(int(i) for i in special_ids)
        self.generator = generator

    def __call__(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.task == "causal_lm":
            x = block.to(self.device)
            return x, x, x.numel() - len(x)
        has_candidates = bool((~torch.isin(block, torch.tensor([self.mask_id, *self.special_ids]))).any())
        while True:
            x, labels = mask_tokens(block, self.mask_id, self.vocab_size, self.generator, self.special_ids)
            n = int((labels != -100).sum())
            if n or not has_candidates:
                return x.to(self.device), labels.to(self.device), n


@torch.no_grad()
def evaluate(model: nn.Module, blocks: torch.Tensor, batch_size: int = 64, task: str | None = None,
             mask_id: int | None = None, special_ids: Iterable[int] = (), seed: int = EVAL_MASK_SEED) -> float:
    """Mean loss (nats per predicted token) over `blocks` (n, seq_len): next-token loss of a causal LM, or masked-LM
    loss on masks drawn from `seed` (the same masks at every call). `task`, `mask_id`, `special_ids`: as `train_lm`."""
    was_training = model.training
    model.eval()
    batch = _Batches(model, task, mask_id, special_ids, torch.Generator().manual_seed(seed))
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x, labels, n = batch(blocks[i : i + batch_size])
        if n:
            total += model(input_ids=x, labels=labels).loss.item() * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def lm_batches(model: nn.Module, blocks: torch.Tensor, batch_size: int, seed: int = 0, task: str | None = None,
               mask_id: int | None = None, special_ids: Iterable[int] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """Endless LM batches of `blocks`: random batches (a new permutation each pass, drawn from `seed`), a causal LM's
    blocks as their own labels, a masked LM's masked by `mask_tokens` from its own stream (`seed` + 1)."""
    order = torch.Generator().manual_seed(seed)
    batch = _Batches(model, task, mask_id, special_ids, torch.Generator().manual_seed(seed + 1))
    perm, pos = torch.randperm(len(blocks), generator=order), 0
    while True:
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(blocks), generator=order), 0
        x, labels, _ = batch(blocks[perm[pos : pos + batch_size]])
        pos += batch_size
        yield {"input_ids": x, "labels": labels}


def train_lm(model: nn.Module, recipe: Recipe, train_blocks: torch.Tensor, val_blocks: torch.Tensor | None,
             eval_every: int = 0, progress: bool = False, desc: str = "", task: str | None = None,
             mask_id: int | None = None, special_ids: Iterable[int] = (),
             on_eval: Callable[[int, float], bool] | None = None, resume: dict | None = None,
             until: int | None = None) -> dict:
    """Train a causal or masked LM as `recipe` says (the loop: `hf_mup.lab.train.train`) on random batches of
    `train_blocks`; never raises on divergence.

    Usage: `r = train_lm(recipe.build_model(), recipe, train, val)`

    `task`: "causal_lm" or "masked_lm" (default: `lm_task(model.config)`, masked LM for BERT). A masked LM trains on
    `mask_tokens` (15% targets, 80/10/10) drawn from the recipe's seed, with `mask_id` (default: the last id of the
    vocabulary) and `special_ids` never chosen as targets; it is validated on fixed masks (`evaluate`). The batch
    order depends on the seed only. Validation every `eval_every` steps (0: only at the end), each loss passed to
    `on_eval(step, loss)`; `until` and `resume` pause and resume the run (`hf_mup.lab.train.train`).
    Returns the loop's per-step `train_loss`, `val_steps`/`val_loss`, `diverged`, `steps_run`, `seconds`, and
    `final_train_loss` (mean of the last 10% of steps), `final_val_loss` (+inf when diverged), `tokens` (every
    position, the forward's), `n_params`, `task`. Losses are nats per predicted token (masked LM: per target).
    """
    from .train import train

    batches = lm_batches(model, train_blocks, recipe.batch_size, recipe.seed, task, mask_id, special_ids)
    masking = _Batches(model, task, mask_id, special_ids, torch.Generator())
    validate = None
    if val_blocks is not None:
        def validate() -> float:
            return evaluate(model, val_blocks, task=masking.task, mask_id=masking.mask_id,
                            special_ids=masking.special_ids)
    r = train(model, recipe, batches, validate, eval_every, progress, desc, on_eval, resume, until)
    tail = r["train_loss"][-max(1, recipe.steps // 10) :]
    diverged = r["diverged"]
    return {**r,
            "final_train_loss": math.inf if diverged or not tail else sum(tail) / len(tail),
            "final_val_loss": math.inf if diverged else (r["val_loss"][-1] if r["val_loss"] else None),
            "tokens": r["steps_run"] * recipe.batch_size * train_blocks.shape[1],
            "n_params": sum(p.numel() for p in model.parameters()),
            "task": masking.task}
