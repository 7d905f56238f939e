"""The pipeline's presets, written one way: a `Preset` per run size (proxy and target shapes, the search, pretraining
and fine-tuning budgets) and the baselines' published hyperparameters as `Recipe` fields.

Usage:
    preset = BERT_PRESETS["tiny"]
    preset.proxy_recipe(vocab_size=2048)      # what the search's trials start from
    preset.baseline_recipe(vocab_size=2048)   # the standard-parametrization row, as published
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .recipe import Recipe


@dataclass(frozen=True)
class Shape:
    width: int
    layers: int
    head_dim: int = 64


@dataclass(frozen=True)
class Preset:
    """Everything a pipeline run depends on; stored with the study, so a study of another recipe is refused."""

    name: str
    arch: str  # "bert" (masked LM, fine-tuned on sentence tasks) or "gpt2" (causal LM, no fine-tuning)
    proxy: Shape
    target: Shape
    seq_len: int
    vocab_size: int
    search_trials: int
    search_steps: int
    search_batch: int
    pretrain_steps: int
    pretrain_batch: int
    baseline: dict  # the standard-parametrization row: its name and `Recipe` fields (lr, betas, weight_decay, ...)
    finetune_lrs: tuple[float, ...] = ()
    finetune_seeds: int = 2
    finetune_epochs: int = 2
    finetune_examples: int | None = None  # per task, for CPU-sized runs
    finetune_batch: int = 32
    tasks: tuple[str, ...] = ()
    log2_lr_range: tuple[float, float] = (-12.0, -4.0)
    eval_blocks: int = 64
    train_chars: int | None = None
    hardware: str = ""
    sp_grid_lrs: tuple[float, ...] = ()  # a small LR grid at full width in SP: the regret of μTransfer is measured on it

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self, which: Shape, vocab_size: int) -> dict[str, Any]:
        """The `Recipe` shape fields of the proxy or the target."""
        return {"arch": self.arch, "width": which.width, "layers": which.layers, "head_dim": which.head_dim,
                "seq_len": self.seq_len, "vocab_size": vocab_size}

    def proxy_recipe(self, vocab_size: int) -> Recipe:
        """What the search's trials start from: μP at the proxy's shape (its width is the base width), the search's
        steps and batch, AdamW with the `Recipe` defaults (β = (0.9, 0.95), warmup 10%, cosine to 10%, clip 1)."""
        return Recipe(**self.shape(self.proxy, vocab_size), base_width=self.proxy.width, steps=self.search_steps,
                      batch_size=self.search_batch)

    def plan(self) -> dict:
        """Shapes, parameter counts, tokens, FLOPs and steps per stage of a pipeline run, without training."""
        p = self
        proxy_n = param_count(p.arch, p.proxy, p.vocab_size, p.seq_len)
        target_n = param_count(p.arch, p.target, p.vocab_size, p.seq_len)
        search_tokens = p.search_trials * p.search_steps * p.search_batch * p.seq_len
        pre_tokens = float(p.pretrain_steps * p.pretrain_batch * p.seq_len)
        return {
            "preset": p.name, "arch": p.arch, "hardware": p.hardware,
            "proxy": {**asdict(p.proxy), "params": proxy_n},
            "target": {**asdict(p.target), "params": target_n},
            "search": {"trials": p.search_trials, "steps_per_trial": p.search_steps, "tokens": search_tokens,
                       "flops": 6 * proxy_n * search_tokens},
            "pretrain": {"rows": 2 + len(p.sp_grid_lrs), "steps": p.pretrain_steps, "batch": p.pretrain_batch,
                         "tokens": pre_tokens, "flops_per_row": 6 * target_n * pre_tokens},
            "finetune": {"tasks": list(p.tasks), "lrs": list(p.finetune_lrs), "seeds": p.finetune_seeds,
                         "runs": 2 * len(p.tasks) * len(p.finetune_lrs) * p.finetune_seeds},
            "search_fraction_of_pretraining": (6 * proxy_n * search_tokens) / (6 * target_n * pre_tokens),
        }

    def baseline_recipe(self, vocab_size: int) -> Recipe:
        """The standard-parametrization row at the target's shape, with the baseline's published settings."""
        settings = {k: v for k, v in self.baseline.items() if k != "name"}
        return Recipe(**self.shape(self.target, vocab_size), parametrization="sp", base_width=None,
                      steps=self.pretrain_steps, batch_size=self.pretrain_batch, **settings)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        """The inverse of `to_dict` (e.g. of a run's `preset.json`)."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        baseline = {k: tuple(v) if isinstance(v, list) else v for k, v in d["baseline"].items()}
        return cls(**{**fields, "proxy": Shape(**d["proxy"]), "target": Shape(**d["target"]), "baseline": baseline})


BERT_SPECIAL_TOKENS = ("[MASK]", "[CLS]", "[SEP]", "[PAD]")  # BERT's tokens, for fine-tuning's sentence pairs

# Megatron-LM's BERT example (Tensor Programs V's Table 6 baseline): Adam lr 1e-4 decaying linearly to 1e-5, 1% warmup,
# weight decay 0.01, not on LayerNorm weights and biases (Megatron-LM's param groups exclude them), gradient
# clipping 1.0, init std 0.02, β = (0.9, 0.999).
MEGATRON_BERT = {"name": "megatron", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.01, "warmup_frac": 0.01,
                 "final_lr_frac": 0.1, "schedule": "linear", "clip": 1.0, "initializer_range": 0.02,
                 "decay_norms_and_biases": False}

# GPT-3 paper, Table 2.1, GPT-3 Small (125M, GPT-2 small's shape): Adam lr 6e-4, β = (0.9, 0.95), weight decay 0.1,
# cosine decay to 10%, gradient clipping 1.0, init std 0.02 (GPT-2). The paper does not say which tensors decay; the
# committed gpt2_* results decayed every tensor, which decay_norms_and_biases keeps.
GPT3_SMALL = {"name": "published", "lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "warmup_frac": 0.01,
              "final_lr_frac": 0.1, "schedule": "cosine", "clip": 1.0, "initializer_range": 0.02,
              "decay_norms_and_biases": True}

GPT2_PRESETS = {
    "tiny": Preset("tiny", "gpt2", proxy=Shape(64, 2, 16), target=Shape(512, 2, 16), seq_len=64, vocab_size=2048,
                   search_trials=16, search_steps=150, search_batch=16, pretrain_steps=300, pretrain_batch=16,
                   baseline=GPT3_SMALL, eval_blocks=128, sp_grid_lrs=(2**-12, 2**-10, 2**-8),
                   hardware="2 CPU cores, under an hour (a narrower target than 'hour')"),
    # About the largest this 2-core machine runs in an hour: a 16× wider target than the proxy (measured ~70 min). (With
    # a width-768 target and an SP grid of 2^-12..2^-8 it took 28 minutes; the SP optimum sat at the grid's low edge.)
    "hour": Preset("hour", "gpt2", proxy=Shape(64, 2, 16), target=Shape(1024, 2, 16), seq_len=64, vocab_size=2048,
                   search_trials=24, search_steps=150, search_batch=16, pretrain_steps=300, pretrain_batch=16,
                   baseline=GPT3_SMALL, eval_blocks=128, sp_grid_lrs=(2**-14, 2**-12, 2**-10, 2**-8),
                   hardware="2 CPU cores, about 70 minutes"),
    "small": Preset("small", "gpt2", proxy=Shape(256, 12, 64), target=Shape(768, 12, 64), seq_len=1024,
                    vocab_size=50257, search_trials=200, search_steps=5000, search_batch=64, pretrain_steps=100_000,
                    pretrain_batch=512, baseline=GPT3_SMALL, eval_blocks=1024,
                    sp_grid_lrs=(2**-12, 2**-11, 2**-10, 2**-9), hardware="8× A100 80GB, about 2 days"),
}

BERT_PRESETS = {
    # CPU-sized: all stages on 2 cores in minutes. Proxy shrunk in width and depth, as Tensor Programs V did.
    "tiny": Preset("tiny", "bert", proxy=Shape(64, 2, 16), target=Shape(256, 4, 16), seq_len=64, vocab_size=2048,
                   search_trials=12, search_steps=120, search_batch=16, pretrain_steps=400, pretrain_batch=16,
                   baseline=MEGATRON_BERT, finetune_lrs=(1e-4, 3e-4, 1e-3), finetune_seeds=2, finetune_epochs=2,
                   finetune_examples=1600, finetune_batch=16, tasks=("polarity", "nsp"), eval_blocks=64, train_chars=None,
                   hardware="2 CPU cores, about 20 minutes"),
    # The real shapes (Tensor Programs V: a 13M-parameter proxy, 10 layers of width 256, for both targets).
    "base": Preset("base", "bert", proxy=Shape(256, 10, 32), target=Shape(768, 12, 64), seq_len=128,
                   vocab_size=30522, search_trials=256, search_steps=5000, search_batch=256,
                   pretrain_steps=1_000_000, pretrain_batch=256, baseline=MEGATRON_BERT,
                   finetune_lrs=(1e-5, 2e-5, 3e-5, 5e-5), finetune_seeds=3, finetune_epochs=3,
                   tasks=("mnli", "qqp", "sst2"), eval_blocks=2048, hardware="8× A100 80GB, about 4 days"),
    "large": Preset("large", "bert", proxy=Shape(256, 10, 32), target=Shape(1024, 24, 64), seq_len=128,
                    vocab_size=30522, search_trials=256, search_steps=5000, search_batch=256,
                    pretrain_steps=1_000_000, pretrain_batch=256, baseline=MEGATRON_BERT,
                    finetune_lrs=(1e-5, 2e-5, 3e-5, 5e-5), finetune_seeds=3, finetune_epochs=3,
                    tasks=("mnli", "qqp", "sst2"), eval_blocks=2048, hardware="16× A100 80GB, about 6 days"),
}


def param_count(arch: str, shape: Shape, vocab_size: int, seq_len: int) -> int:
    """Parameters of the model of `shape`, counted on the meta device (nothing allocated)."""
    from .recipe import lm_config, model_class

    config = lm_config(arch, shape.width, shape.layers, shape.head_dim, seq_len, vocab_size)
    with torch.device("meta"):
        model = model_class(config).from_config(config)
    return sum(p.numel() for p in model.parameters())
