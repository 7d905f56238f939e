"""Train a μP GPT-2 on WikiText-2 with `hf_mup.MuPTrainer`.

Usage:
    python recipes/gpt2_wikitext.py --preset tiny --output_dir out/tiny            # minutes on a CPU, offline
    accelerate launch recipes/gpt2_wikitext.py --preset gpt2-small --output_dir out/small \\
        --dataset_name wikitext --dataset_config wikitext-2-raw-v1 --tokenizer_name gpt2 --bf16

Presets (any TrainingArguments flag, e.g. --learning_rate, overrides them):
- `tiny`: width 128, 2 layers, base width 64; WikiText-2 shipped with hf_mup, a local BPE tokenizer.
- `gpt2-proxy`: the width-256 proxy of GPT-2 small/medium (12 layers, head size 64) to tune on (`hf-mup sweep`).
- `gpt2-small` (768 × 12 layers) and `gpt2-medium` (1024 × 24): the targets, base width 256, sized for GPUs.
  Copy the proxy's best learning rate and multipliers unchanged (`--hparams` reads what `hf-mup transfer` writes).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import chain

# hf_mup first: importing it filters the noise torchao prints when transformers imports it (CUDA kernels that fail to
# load on a CPU-only torch, torch's _pytree Enum deprecation), which must be in place before that import.
import hf_mup  # isort: skip
from hf_mup.errors import MuPError  # isort: skip
from hf_mup.extras import require  # isort: skip
from hf_mup.logs import quiet_progress_bars  # isort: skip

import torch
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    GPT2Config,
    HfArgumentParser,
    TrainingArguments,
)

from hf_mup.lab import data


def _gpu_preset(width: int, layers: int, max_steps: int, batch: int) -> dict:
    return {
        "model": {"n_embd": width, "n_head": width // 64, "n_layer": layers, "n_positions": 1024},
        "mup": {"base_hidden_size": 256},
        "train": {"learning_rate": 2**-8, "max_steps": max_steps, "per_device_train_batch_size": batch,
                  "warmup_steps": max_steps // 10, "lr_scheduler_type": "cosine", "eval_steps": max_steps // 20,
                  "logging_steps": 50, "save_steps": max_steps // 10},
        "block_size": 1024,
    }


PRESETS = {
    # model: GPT2Config fields; mup: MuPConfig fields; train: TrainingArguments defaults.
    "tiny": {
        "model": {"n_embd": 128, "n_head": 8, "n_layer": 2, "n_positions": 64},
        "mup": {"base_hidden_size": 64, "output_mult": 8.0},
        "train": {"learning_rate": 2**-7, "max_steps": 150, "per_device_train_batch_size": 16, "warmup_steps": 15,
                  "lr_scheduler_type": "cosine", "eval_steps": 50, "logging_steps": 10, "save_steps": 50},
        "block_size": 64,
    },
    # GPU sizes: sequences of 1024, head size 64, base width 256; only the shape and the budget differ.
    "gpt2-proxy": _gpu_preset(256, 12, max_steps=5000, batch=32),
    "gpt2-small": _gpu_preset(768, 12, max_steps=20000, batch=32),
    "gpt2-medium": _gpu_preset(1024, 24, max_steps=40000, batch=16),
}


# TrainingArguments flags that --hparams' recipe decides (its optimizer and schedule go to the Trainer whole).
RECIPE_OWNS = ("--optim", "--lr_scheduler_type", "--lr_scheduler_kwargs", "--warmup_steps", "--warmup_ratio")


@dataclass
class RecipeArguments:
    preset: str = field(default="tiny", metadata={"help": f"one of {', '.join(PRESETS)}"})
    dataset_name: str | None = field(default=None, metadata={"help": "a Hub dataset (online); default: local files"})
    dataset_config: str | None = field(default=None, metadata={"help": "e.g. wikitext-2-raw-v1"})
    train_file: str | None = field(default=None, metadata={"help": "local text; default: WikiText-2 valid.txt"})
    validation_file: str | None = field(default=None, metadata={"help": "local text; default: WikiText-2 test.txt"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "a Hub tokenizer; default: BPE trained locally"})
    vocab_size: int = field(default=4096, metadata={"help": "size of the locally trained BPE"})
    block_size: int | None = field(default=None, metadata={"help": "sequence length (default: the preset's)"})
    max_eval_blocks: int = field(default=256, metadata={"help": "evaluate on at most this many sequences"})
    hparams: str | None = field(default=None, metadata={"help": "JSON from `hf-mup transfer`: the target's recipe"})
    output_mult: float | None = None
    input_mult: float | None = None
    attn_mult: float | None = None
    base_hidden_size: int | None = None
    mup_weight_decay_mode: str | None = field(default=None, metadata={
        "help": "width_independent (default), coupled or independent; with --hparams: the recipe's"})
    weight_decay_timescale: float | None = field(default=None, metadata={
        "help": "AdamW's decay as a timescale, a fraction of training (λ = 1/(lr·τ·max_steps), every μP group "
                "alike); instead of --weight_decay; with --hparams: replaces the recipe's decay"})
    warmup_tokens: int | None = field(default=None, metadata={
        "help": "warmup in tokens: warmup_steps = tokens / (global batch × block size), so it stays put when the "
                "batch changes (not with --hparams, whose recipe sets its warmup)"})
    resume: bool = field(default=False, metadata={"help": "resume from the last checkpoint in output_dir"})


def parse_args(argv: list[str]) -> tuple[RecipeArguments, TrainingArguments]:
    """The recipe's and the Trainer's arguments: the preset's values, then --hparams (a transferred `Recipe`), become
    defaults that explicit flags override. With --hparams, `recipe.transferred` is the recipe the run trains with:
    its optimizer, schedule and weight-decay mode, with the flags' LR, β, ε, weight decay, clipping and steps."""
    from hf_mup.lab.transfer import Transferred

    parser = HfArgumentParser((RecipeArguments, TrainingArguments))
    known, _ = parser.parse_known_args(argv)
    preset = PRESETS[known.preset]
    transferred = Transferred.load(known.hparams).recipe if known.hparams else None
    from_recipe = {}
    if transferred is not None:
        r = transferred
        if r.arch != "gpt2":
            raise MuPError(f"{known.hparams} holds a {r.arch} recipe; this recipe trains GPT-2: transfer from a GPT-2 "
                           "study.")
        # The transferred optimizer and schedule are passed to the Trainer: its flags for them would do nothing.
        ignored = [a.split("=")[0] for a in argv if a.split("=")[0] in (*RECIPE_OWNS, "--warmup_tokens")]
        if ignored:
            raise MuPError(f"{', '.join(ignored)} with --hparams: the transferred recipe sets the optimizer and "
                           f"schedule ({r.optimizer}, {r.schedule} after {r.warmup_frac:g} of the steps, down to "
                           f"{r.final_lr_frac:g} of the LR); edit the recipe in {known.hparams} instead.")
        from_recipe = {"learning_rate": r.lr, "adam_beta1": r.betas[0], "adam_beta2": r.betas[1],
                       "adam_epsilon": r.eps, "weight_decay": r.weight_decay, "max_grad_norm": r.clip}
    parser.set_defaults(**{"output_dir": "gpt2_wikitext_out", "eval_strategy": "steps", "report_to": "none",
                           # progress bars on a terminal only (the Trainer then prints its logs as lines); pinned
                           # memory only where there is an accelerator to copy to
                           "disable_tqdm": not quiet_progress_bars(), "dataloader_pin_memory": _accelerator(),
                           **preset["train"], **from_recipe})
    recipe, training = parser.parse_args_into_dataclasses(argv)
    if recipe.warmup_tokens is not None:
        block = recipe.block_size or preset["block_size"]
        tokens_per_step = (training.per_device_train_batch_size * training.gradient_accumulation_steps
                           * training.world_size * block)
        training.warmup_steps = max(1, math.ceil(recipe.warmup_tokens / tokens_per_step))
    recipe.mup_defaults = dict(preset["mup"])
    recipe.init_overrides = {}
    recipe.config_overrides = {}
    recipe.transferred = None
    if transferred is not None:
        decay = ({"weight_decay": 0.0, "weight_decay_timescale": recipe.weight_decay_timescale}
                 if recipe.weight_decay_timescale is not None else {"weight_decay": training.weight_decay})
        r = transferred.replace(lr=training.learning_rate, betas=(training.adam_beta1, training.adam_beta2),
                                eps=training.adam_epsilon, clip=training.max_grad_norm, steps=training.max_steps,
                                weight_decay_mode=recipe.mup_weight_decay_mode or transferred.weight_decay_mode,
                                **decay)
        recipe.transferred = r
        recipe.mup_defaults = r.mup_settings()  # exactly the proxy's (a multiplier it did not set stays at 1)
        recipe.config_overrides = dict(r.config)  # config fields the proxy trained with (e.g. its activation)
        recipe.init_overrides = {"initializer_range": r.initializer_range}  # the proxy's tuned init scale
        target = {"n_embd": r.width, "n_layer": r.layers, "n_head": r.width // r.head_dim}
        shape = {k: v for k, v in target.items() if v != preset["model"][k]}
        if shape:
            print(f"note: {known.hparams} was transferred to a target with "
                  + ", ".join(f"{k} {v}" for k, v in shape.items()) + f"; training --preset {known.preset}'s shape "
                  + ", ".join(f"{k} {preset['model'][k]}" for k in shape) + " (pick the preset of that target)",
                  file=sys.stderr)
    return recipe, training


def _accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def load_text(recipe: RecipeArguments):
    from datasets import load_dataset

    if recipe.dataset_name:
        raw = load_dataset(recipe.dataset_name, recipe.dataset_config)
        return raw["train"], raw["validation"]
    folder = data.wikitext_dir()
    files = {"train": recipe.train_file or str(folder / "valid.txt"),
             "validation": recipe.validation_file or str(folder / "test.txt")}
    raw = load_dataset("text", data_files=files)
    return raw["train"], raw["validation"]


def tokenizer_for(recipe: RecipeArguments, train_text):
    if recipe.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer_name)
    else:
        path = recipe.train_file or str(data.wikitext_dir() / "valid.txt")
        tokenizer = data.train_tokenizer([path], vocab_size=recipe.vocab_size)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def blocks(dataset, tokenizer, block_size: int, training: TrainingArguments):
    """run_clm's recipe: tokenize, concatenate, cut into blocks of `block_size`."""

    def group(examples):
        ids = list(chain.from_iterable(examples["input_ids"]))
        n = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, n, block_size)]}

    with training.main_process_first(desc="tokenizing"):
        tokenized = dataset.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=dataset.column_names)
        tokenized = tokenized.remove_columns([c for c in tokenized.column_names if c != "input_ids"])
        return tokenized.map(group, batched=True)


def main(argv: list[str] | None = None) -> dict:
    try:  # before any work: the Trainer needs accelerate, the text loading datasets
        require("train", "accelerate", "datasets", what="recipes/gpt2_wikitext.py")
    except MuPError as e:
        sys.exit(f"gpt2_wikitext: error: {e}")
    try:  # a bad --hparams is named before any work
        recipe, training = parse_args(sys.argv[1:] if argv is None else argv)
    except MuPError as e:
        sys.exit(f"gpt2_wikitext: error: {e}")
    preset = PRESETS[recipe.preset]
    block_size = recipe.block_size or preset["block_size"]
    train_text, val_text = load_text(recipe)
    tokenizer = tokenizer_for(recipe, train_text)
    train_ds = blocks(train_text, tokenizer, block_size, training)
    val_ds = blocks(val_text, tokenizer, block_size, training)
    val_ds = val_ds.select(range(min(len(val_ds), recipe.max_eval_blocks)))

    proxy_fields = {k: v for k, v in recipe.config_overrides.items() if not k.endswith("_token_id")}
    fields = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **proxy_fields,
              **preset["model"], "n_positions": max(block_size, preset["model"]["n_positions"]), **recipe.init_overrides}
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **fields)
    overrides = {k: getattr(recipe, k) for k in ("output_mult", "input_mult", "attn_mult", "base_hidden_size")
                 if getattr(recipe, k) is not None}
    model = hf_mup.MuPModel.from_config(config, **{**recipe.mup_defaults, **overrides})
    model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's name matches no loss: the one transformers falls back to, unwarned

    optimizers = (None, None)
    if recipe.transferred is not None:  # the transferred recipe's optimizer (AdamW or Lion) and schedule
        optimizer = recipe.transferred.build_optimizer(model)
        optimizers = (optimizer, recipe.transferred.build_scheduler(optimizer))
    trainer = hf_mup.MuPTrainer(
        model=model,
        args=training,
        optimizers=optimizers,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        mup_weight_decay_mode=recipe.mup_weight_decay_mode or "width_independent",
        mup_weight_decay_timescale=None if recipe.transferred is not None else recipe.weight_decay_timescale,
    )
    last = None
    if recipe.resume and os.path.isdir(training.output_dir):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training.output_dir)
    trainer.train(resume_from_checkpoint=last)
    metrics = trainer.evaluate()
    trainer.save_model()
    if trainer.is_world_process_zero():
        with open(os.path.join(training.output_dir, "final_metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"eval loss {metrics['eval_loss']:.4f}; μP model saved to {training.output_dir} "
              f"(load it with hf_mup.MuPModel.from_pretrained)")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Under `accelerate launch` / torchrun: wait for every rank, then destroy the process group before exit. A
        # rank whose interpreter exits with the group alive may destroy gloo's / NCCL's threads while they are still
        # joinable ("terminate called without an active exception", SIGABRT) and fail the whole launch.
        trainer.accelerator.wait_for_everyone()
        trainer.end()
    return metrics


if __name__ == "__main__":
    main()
