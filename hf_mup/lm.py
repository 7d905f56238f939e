"""The small LMs of the coordinate check, sweeps and demo: one config factory (`lm_config`, GPT-2 / BERT), one
builder of (model, optimizer groups) for μP / SP (`build_lm`), and a short causal-LM training loop (AdamW, warmup +
cosine, clipping) used by sweeps, the demo and benchmarks.

Usage:
    model = hf_mup.MuPModel.from_config(gpt2_config(128), base_hidden_size=64, output_mult=8.0)
    result = train_lm(model, hf_mup.mup_param_groups(model, lr=2**-7), train_blocks, val_blocks, steps=150)
    result["final_train_loss"], result["final_val_loss"], result["diverged"]
"""
from __future__ import annotations

import math
import time
from typing import Iterable

import torch
from torch import nn


ARCHS = ("gpt2", "bert")
# "mup_global_lr" is a deliberately broken setup: a μP model trained with one LR for every tensor
# (`torch.optim.AdamW(model.parameters())`), which a coordinate check must catch.
PARAMETRIZATIONS = ("mup", "sp", "mup_global_lr")


def lm_config(arch: str, width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048,
              **kw):
    """A small GPT-2 or BERT config of hidden size `width`: fixed head size (heads = width / head_dim), MLP 4×,
    dropout 0, positions = `seq_len`. `kw`: more config fields (e.g. `initializer_range`, `eos_token_id`).

    Usage: `config = lm_config("bert", 256, layers=2, head_dim=16, seq_len=32, vocab_size=512)`
    """
    from transformers import BertConfig, GPT2Config

    from .errors import MuPError

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
    raise MuPError(f"arch {arch!r} is not supported here; use one of {', '.join(ARCHS)}.")


def gpt2_config(width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048, **kw):
    """`lm_config("gpt2", ...)`. Usage: `config = gpt2_config(256, layers=2, head_dim=16, seq_len=64, vocab_size=256)`"""
    return lm_config("gpt2", width, layers, head_dim, seq_len, vocab_size, **kw)


def build_lm(config, parametrization: str, lr: float, base_width: int | None = None, seed: int = 0,
             device: str | torch.device = "cpu", optimizer: str = "adamw", **mup_options) -> tuple[nn.Module, list[dict]]:
    """(model, optimizer parameter groups) of the LM of `config` (GPT-2: causal LM, BERT: masked LM), seeded by `seed`.

    Usage: `model, groups = build_lm(gpt2_config(512), "mup", lr=2**-8, base_width=64, output_mult=8.0)`

    `parametrization`: "sp" the stock model, one LR; "mup" via `MuPModel` (`mup_options`: `MuPConfig` fields) with
    `mup_param_groups` for `optimizer` ("adamw", "adam" or "sgd"); "mup_global_lr" the μP model with one LR for
    every tensor (deliberately broken, for the coordinate check). Pass the groups to `torch.optim.*`.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from .errors import MuPError
    from .model import MuPModel
    from .optim import mup_param_groups

    if parametrization not in PARAMETRIZATIONS:
        raise MuPError(f"unknown parametrization {parametrization!r}; use one of {', '.join(PARAMETRIZATIONS)}.")
    torch.manual_seed(seed)  # the init seed
    if parametrization == "sp":
        auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
        model = auto.from_config(config).to(device)
    else:
        model = MuPModel.from_config(config, base_hidden_size=base_width, **mup_options).to(device)
    if parametrization == "mup":
        groups = mup_param_groups(model, lr=lr, optimizer=optimizer)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr}]
    if config.model_type != "bert":
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's name matches no loss; this is the one it falls back to
    return model, groups


def lr_lambda(steps: int, warmup_frac: float = 0.1, final_lr_frac: float = 0.1):
    """Linear warmup, then cosine decay to `final_lr_frac`: a factor on each group's own LR (μP groups stay relative)."""
    warmup = max(1, round(warmup_frac * steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@torch.no_grad()
def evaluate(model: nn.Module, blocks: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token loss (nats/token) of a causal LM over `blocks` (n, seq_len)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i : i + batch_size].to(device)
        n = x.numel() - len(x)  # predicted tokens
        total += model(input_ids=x, labels=x).loss.item() * n
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
) -> dict:
    """Train a causal LM with AdamW on random batches of `train_blocks`; never raises on divergence.

    Usage: `r = train_lm(model, hf_mup.mup_param_groups(model, lr=2**-7), train, val, steps=150)`

    `param_groups`: μP groups (each carries its own LR) or plain parameters (trained at `lr`). The batch order
    depends on `seed` only. Validation every `eval_every` steps (0: only at the end). A non-finite train or
    validation loss stops training: `diverged` is True and the final losses are +inf.
    Returns per-step `train_loss`, `val_steps`/`val_loss`, `final_train_loss` (mean of the last 10% of steps),
    `final_val_loss`, `diverged`, `steps_run`, `tokens`, `n_params`, `seconds`.
    """
    from tqdm.auto import tqdm

    from .optim import check_optimizer

    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay)
    check_optimizer(model, opt)  # no-op for a stock (SP) model
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup_frac, final_lr_frac))
    order = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(train_blocks), generator=order), 0
    train_losses: list[float] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    diverged = False
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(train_blocks), generator=order), 0
        x = train_blocks[perm[pos : pos + batch_size]].to(device)
        pos += batch_size
        loss = model(input_ids=x, labels=x).loss
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
            v = evaluate(model, val_blocks)
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
    }
