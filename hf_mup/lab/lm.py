"""The small LMs of the coordinate check, sweeps and demo: one config factory (`lm_config`, GPT-2 / BERT), one
builder of (model, optimizer groups) for μP / SP (`build_lm`), and one short training loop (AdamW, warmup + cosine,
clipping) for causal LMs (GPT-2) and masked LMs (BERT), used by sweeps, the demo and benchmarks.

Usage:
    model = hf_mup.MuPModel.from_config(gpt2_config(128), base_hidden_size=64, output_mult=8.0)
    result = train_lm(model, hf_mup.mup_param_groups(model, lr=2**-7), train_blocks, val_blocks, steps=150)
    result["final_train_loss"], result["final_val_loss"], result["diverged"]
    # a BERT masked LM on raw bytes: vocabulary 256 + 1, the last id is [MASK]
    model, groups = build_lm(lm_config("bert", 128, vocab_size=257), "mup", lr=2**-8, base_width=64)
    result = train_lm(model, groups, train_blocks, val_blocks, steps=150, mask_id=256)
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torch import nn

ARCHS = ("gpt2", "bert", "llama")
TASKS = ("causal_lm", "masked_lm")
DECAYS = ("cosine", "linear")
OPTIMIZERS = ("adamw", "lion")
# transformers' DataCollatorForLanguageModeling defaults: 15% of the positions are targets; of those 80% are
# replaced by [MASK], 10% by a random token and 10% left unchanged.
MLM_PROBABILITY, MASK_REPLACE_PROB, RANDOM_REPLACE_PROB = 0.15, 0.8, 0.1
EVAL_MASK_SEED = 1234  # validation masks are drawn from this seed at every evaluation: the same masks each time
# "mup_global_lr" is a deliberately broken setup: a μP model trained with one LR for every tensor
# (`torch.optim.AdamW(model.parameters())`), which a coordinate check must catch.
PARAMETRIZATIONS = ("mup", "sp", "mup_global_lr")


def lm_config(arch: str, width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048,
              **kw):
    """A small GPT-2, BERT or Llama config of hidden size `width`: fixed head size (heads = width / head_dim), MLP 4×,
    dropout 0, positions = `seq_len`. `kw`: more config fields (e.g. `initializer_range`, `eos_token_id`).

    Usage: `config = lm_config("bert", 256, layers=2, head_dim=16, seq_len=32, vocab_size=512)`
    """
    from transformers import BertConfig, GPT2Config, LlamaConfig

    from ..errors import MuPError

    if width <= 0 or width % head_dim:
        raise MuPError(f"width {width} is not a positive multiple of the head size {head_dim}.")
    if arch == "gpt2":
        kw = {"bos_token_id": 0, "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **kw}
        return GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers,
                          n_head=width // head_dim, **kw)
    if arch == "bert":
        kw = {"pad_token_id": 0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **kw}
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, hidden_size=width,
                          num_hidden_layers=layers, num_attention_heads=width // head_dim,
                          intermediate_size=4 * width, **kw)
    if arch == "llama":  # pre-norm RMSNorm, SwiGLU MLP, rotary positions, untied lm_head, no biases
        kw = {"bos_token_id": 0, "eos_token_id": 0, "num_key_value_heads": width // head_dim, **kw}
        return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, hidden_size=width,
                           num_hidden_layers=layers, num_attention_heads=width // head_dim, head_dim=head_dim,
                           intermediate_size=4 * width, **kw)
    raise MuPError(f"arch {arch!r} is not supported here; use one of {', '.join(ARCHS)}.")


def gpt2_config(width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048, **kw):
    """`lm_config("gpt2", ...)`. Usage: `config = gpt2_config(256, layers=2, head_dim=16, seq_len=64, vocab_size=256)`"""
    return lm_config("gpt2", width, layers, head_dim, seq_len, vocab_size, **kw)


def build_lm(config, parametrization: str, lr: float, base_width: int | None = None, seed: int = 0,
             device: str | torch.device = "cpu", optimizer: str = "adamw", weight_decay: float = 0.0,
             weight_decay_mode: str = "width_independent", **mup_options) -> tuple[nn.Module, list[dict]]:
    """(model, optimizer parameter groups) of the LM of `config` (GPT-2: causal LM, BERT: masked LM), seeded by `seed`.

    Usage: `model, groups = build_lm(gpt2_config(512), "mup", lr=2**-8, base_width=64, output_mult=8.0)`

    `parametrization`: "sp" the stock model, one LR; "mup" via `MuPModel` (`mup_options`: `MuPConfig` fields) with
    `mup_param_groups` for `optimizer` ("adamw", "adam", "lion" or "sgd") with `weight_decay` in
    `weight_decay_mode`; "mup_global_lr" the μP model with one LR for every tensor (deliberately broken, for the
    coordinate check). Pass the groups to `torch.optim.*`.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from ..errors import MuPError
    from ..model import MuPModel
    from ..optim import mup_param_groups

    if parametrization not in PARAMETRIZATIONS:
        raise MuPError(f"unknown parametrization {parametrization!r}; use one of {', '.join(PARAMETRIZATIONS)}.")
    torch.manual_seed(seed)  # the init seed
    if parametrization == "sp":
        auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
        model = auto.from_config(config).to(device)
    else:
        model = MuPModel.from_config(config, base_hidden_size=base_width, **mup_options).to(device)
    if parametrization == "mup":
        groups = mup_param_groups(model, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                                  weight_decay_mode=weight_decay_mode)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr,
                   # "mup_global_lr" is broken on purpose: hf_mup's first-step check would refuse it
                   **({"mup_unchecked": True} if parametrization == "mup_global_lr" else {})}]
    if config.model_type != "bert":
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's name matches no loss; this is the one it falls back to
    return model, groups


def lr_lambda(steps: int, warmup_frac: float = 0.1, final_lr_frac: float = 0.1, decay: str = "cosine"):
    """Linear warmup, then cosine (or `decay="linear"`) decay to `final_lr_frac`: a factor on each group's own LR
    (μP groups stay relative)."""
    from ..errors import MuPError

    if decay not in DECAYS:
        raise MuPError(f"unknown decay {decay!r}: use {' or '.join(DECAYS)}.")
    warmup = max(1, round(warmup_frac * steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if decay == "cosine" else 1.0 - t
        return final_lr_frac + (1 - final_lr_frac) * shape

    return f


def lm_task(config) -> str:
    """"masked_lm" for a BERT config (unless it is a decoder), else "causal_lm": the task `train_lm` trains."""
    return "masked_lm" if config.model_type == "bert" and not getattr(config, "is_decoder", False) else "causal_lm"


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
        self.vocab_size = model.config.vocab_size
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


def train_lm(
    model: nn.Module,
    param_groups: Iterable,
    train_blocks: torch.Tensor,
    val_blocks: torch.Tensor | None,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_frac: float = 0.1,
    final_lr_frac: float = 0.1,
    clip: float = 1.0,
    seed: int = 0,
    eval_every: int = 0,
    progress: bool = False,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    desc: str = "",
    task: str | None = None,
    mask_id: int | None = None,
    special_ids: Iterable[int] = (),
    optimizer: str = "adamw",
    decay: str = "cosine",
) -> dict:
    """Train a causal or masked LM with AdamW (or `optimizer="lion"`) on random batches of `train_blocks`, warmup then
    `decay` ("cosine" or "linear") to `final_lr_frac`; never raises on divergence.

    Usage: `r = train_lm(model, hf_mup.mup_param_groups(model, lr=2**-7), train, val, steps=150)`

    `task`: "causal_lm" or "masked_lm" (default: `lm_task(model.config)`, masked LM for BERT). A masked LM trains on
    `mask_tokens` (15% targets, 80/10/10) drawn from `seed`, with `mask_id` (default: the last id of the
    vocabulary) and `special_ids` never chosen as targets; it is validated on fixed masks (`evaluate`).

    `param_groups`: μP groups (each carries its own LR) or plain parameters (trained at `lr`). The batch order
    depends on `seed` only. Validation every `eval_every` steps (0: only at the end). A non-finite train or
    validation loss stops training: `diverged` is True and the final losses are +inf.
    Returns per-step `train_loss`, `val_steps`/`val_loss`, `final_train_loss` (mean of the last 10% of steps),
    `final_val_loss`, `diverged`, `steps_run`, `tokens` (every position, the forward's), `n_params`, `seconds`,
    `task`. Losses are nats per predicted token (masked LM: per target).
    """
    from tqdm.auto import tqdm

    from ..errors import MuPError
    from ..lion import Lion
    from ..optim import check_optimizer

    if optimizer not in OPTIMIZERS:
        raise MuPError(f"unknown optimizer {optimizer!r}: use {' or '.join(OPTIMIZERS)}.")
    model.train()
    if optimizer == "lion":
        opt = Lion(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay)
    check_optimizer(model, opt)  # no-op for a stock (SP) model
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup_frac, final_lr_frac, decay))
    order = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(train_blocks), generator=order), 0
    batch = _Batches(model, task, mask_id, special_ids, torch.Generator().manual_seed(seed + 1))  # masks: own stream
    masking = {"task": batch.task, "mask_id": batch.mask_id, "special_ids": batch.special_ids}
    train_losses: list[float] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    diverged = False
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(train_blocks), generator=order), 0
        x, labels, _ = batch(train_blocks[perm[pos : pos + batch_size]])
        pos += batch_size
        loss = model(input_ids=x, labels=labels).loss
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        train_losses.append(value)
        done = step + 1
        if val_blocks is not None and ((eval_every and done % eval_every == 0) or done == steps):
            v = evaluate(model, val_blocks, **masking)
            val_steps.append(done)
            val_losses.append(v)
            if not math.isfinite(v):
                diverged = True
                break
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    tail = train_losses[-max(1, steps // 10) :]
    return {
        "train_loss": train_losses,
        "val_steps": val_steps,
        "val_loss": val_losses,
        "final_train_loss": math.inf if diverged or not tail else sum(tail) / len(tail),
        "final_val_loss": math.inf if diverged else (val_losses[-1] if val_losses else None),
        "diverged": diverged,
        "steps_run": len(train_losses),
        "tokens": len(train_losses) * batch_size * train_blocks.shape[1],
        "n_params": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
        "task": batch.task,
    }
