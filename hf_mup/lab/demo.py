"""The offline μTransfer demo: tune on a narrow proxy, copy the hyperparameters to an 8× wider model.

Usage: `python -m hf_mup.lab.demo --out demo_out` (about 3 minutes on 2 idle CPU cores; nothing is downloaded).
Writes `loss_curves.png` and `results.json` (hyperparameters, per-step losses, validation losses, timing).

What it runs. A byte-level BPE (vocab 2048) is trained on WikiText-2 `valid.txt` (354k tokens, the training
set here); validation is the first 128 × 64 = 8192 tokens of `test.txt` (see `hf_mup.lab.data`). Three GPT-2
models, 2 layers, head size 16 (heads grow with width), sequences of 64, dropout 0, tied embeddings:
- μP proxy, width 64 (= μP's base width),
- μP wide, width 512, with the proxy's hyperparameters unchanged,
- SP wide, width 512: the stock transformers model (HF init, 1/√d attention, one LR for all tensors).
All three share everything else: AdamW (β = 0.9, 0.95, no weight decay), peak LR 2^-8, batch 16 × 64 tokens,
200 steps, 20 steps of linear warmup then cosine decay to 0.1 × LR, gradient clipping at 1.0, the same init
seed and the same batches in the same order. μP: `output_mult` 8, zero-init query (hf_mup's default),
per-tensor LRs from `hf_mup.mup_param_groups`.

How the hyperparameters were chosen: on the proxy alone, as μTransfer prescribes (an output_mult × LR grid on the
proxy gave output_mult 8 and LR 2^-8). That grid, the measured losses of each model, SP's own LR sweep at width 512
and the run times are on the docs' results page (docs/results/index.md, "The demo"). `--steps`, `--wide-width`
and `--batch-size` trade time for signal; `--models` runs a subset.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from ..errors import MuPError
from ..extras import require
from ..logs import quiet_progress_bars
from . import data, lm
from .recipe import Recipe

MODELS = ("mup_proxy", "mup_wide", "sp_wide")
LABELS = {
    "mup_proxy": "μP proxy, width {w}",
    "mup_wide": "μP wide, width {w} (proxy's hyperparameters)",
    "sp_wide": "SP wide, width {w} (same LR, stock init)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hf_mup.lab.demo",
        description="Offline μTransfer demo on WikiText-2: a narrow μP proxy, an 8× wider μP model and the wide "
        "standard-parametrization (SP) model, trained with the same hyperparameters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="folder for loss_curves.png and results.json")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per model")
    p.add_argument("--base-width", type=int, default=64, help="width of the μP proxy (and μP's base width)")
    p.add_argument("--wide-width", type=int, default=512, help="width of the wide μP and SP models")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16, help="head size (the number of heads grows with width)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2**-8, help="peak AdamW learning rate (μP: per-tensor rules on top)")
    p.add_argument("--output-mult", type=float, default=8.0, help="μP readout multiplier, tuned on the proxy")
    p.add_argument("--warmup", type=float, default=0.1, help="linear warmup, as a fraction of --steps")
    p.add_argument("--final-lr-frac", type=float, default=0.1, help="cosine decay ends at this fraction of --lr")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--vocab-size", type=int, default=2048, help="byte-level BPE vocabulary trained on the train file")
    p.add_argument("--train-chars", type=int, default=None, help="use only the first N characters of the train file")
    p.add_argument("--eval-every", type=int, default=25, help="validation every N steps (and at the end)")
    p.add_argument("--eval-blocks", type=int, default=128, help="validation sequences taken from test.txt")
    p.add_argument("--seed", type=int, default=0, help="init and data-order seed (the same for all models)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder with valid.txt and test.txt (default: data.wikitext_dir())")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


# ------------------------------------------------------------------------------------------------- models


def recipe(name: str, args: argparse.Namespace) -> Recipe:
    """What one of MODELS trains with: the same settings, batches and init seed for each, at its width."""
    return Recipe(arch="gpt2", width=args.base_width if name == "mup_proxy" else args.wide_width, layers=args.layers,
                  head_dim=args.head_dim, seq_len=args.seq_len, vocab_size=args.vocab_size,
                  parametrization="sp" if name == "sp_wide" else "mup", base_width=args.base_width,
                  mup={"output_mult": args.output_mult}, lr=args.lr, warmup_frac=args.warmup,
                  final_lr_frac=args.final_lr_frac, clip=args.clip, batch_size=args.batch_size, steps=args.steps,
                  seed=args.seed)


def train(name: str, args: argparse.Namespace, train_blocks: torch.Tensor, val_blocks: torch.Tensor) -> dict:
    """Train one model (`hf_mup.lab.lm.train_lm`: the same batches in the same order for every model)."""
    r_ = recipe(name, args)
    width = r_.width
    r = lm.train_lm(r_.build_model(), r_, train_blocks, val_blocks, eval_every=args.eval_every,
                    progress=args.progress, desc=f"{name:9s} w={width:<4d}")
    return {
        "label": LABELS[name].format(w=width),
        "width": width,
        "parametrization": "SP" if name == "sp_wide" else "μP",
        "n_params": r["n_params"],
        "train_loss": r["train_loss"],
        "val_steps": r["val_steps"],
        "val_loss": r["val_loss"],
        "final_val_loss": None if r["diverged"] else r["final_val_loss"],
        "diverged": r["diverged"],
        "train_seconds": round(r["seconds"], 2),
        "ms_per_step": round(1000 * r["seconds"] / max(1, r["steps_run"]), 1),
    }


# ------------------------------------------------------------------------------------------------- output


def smooth(values: list[float | None], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing); stops at the first None."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        if v is None:
            break
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def fmt_lr(lr: float, tex: bool = False) -> str:
    """2^-8 for a power of two (matplotlib's $2^{-8}$ when `tex`), else the number."""
    log2 = math.log2(lr) if lr > 0 else 0.5
    if log2 != int(log2):
        return f"{lr:g}"
    return f"$2^{{{int(log2)}}}$" if tex else f"2^{int(log2)}"


def plot(results: dict, path: Path, args: argparse.Namespace) -> None:
    require("sweep", "matplotlib", what="the demo's plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mup_proxy": "tab:blue", "mup_wide": "tab:green", "sp_wide": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    lows, highs = [], []
    for name, r in results["models"].items():
        tr = smooth(r["train_loss"])
        final = r["final_val_loss"]
        label = f"{r['label']}: final val {final:.3f}" if final is not None else f"{r['label']}: diverged"
        ax.plot(range(1, len(tr) + 1), tr, color=colors[name], lw=1.4, label=label)
        vs = [(s, v) for s, v in zip(r["val_steps"], r["val_loss"]) if v is not None]
        if vs:
            ax.plot(*zip(*vs), "o--", color=colors[name], ms=4, lw=1)
        lows += [v for _, v in vs] + tr[len(tr) // 2 :]
        highs += tr[len(tr) // 5 : len(tr) // 5 + 1]
    ax.plot([], [], color="gray", lw=1.4, label="solid: train loss (EMA-smoothed)")
    ax.plot([], [], "o--", color="gray", ms=4, lw=1, label="dashed, dots: validation loss")
    if lows and highs:
        ax.set_ylim(min(lows) - 0.1, max(max(highs), min(lows) + 0.5) + 0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(
        f"μTransfer on WikiText-2: GPT-2, {args.layers} layers, the same LR {fmt_lr(args.lr, tex=True)} and "
        f"output_mult {args.output_mult:g} for all",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(results: dict) -> str:
    m = results["models"]

    def loss(name):
        return m[name]["final_val_loss"] if name in m else None

    def fmt(name):
        r = m[name]
        return "diverged" if r["final_val_loss"] is None else f"{r['final_val_loss']:.3f}"

    parts = [f"Final validation loss (nats/token on {results['data']['val_tokens']} held-out WikiText-2 test tokens):"]
    parts += [f"{m[n]['label']}: {fmt(n)}" + (";" if i < len(m) - 1 else ".") for i, n in enumerate(m)]
    proxy, wide, sp = loss("mup_proxy"), loss("mup_wide"), loss("sp_wide")
    if proxy is not None and wide is not None:
        factor = f"{m['mup_wide']['width'] / m['mup_proxy']['width']:g}×"
        if wide < proxy:
            parts.append(
                f"Trained with the proxy's hyperparameters unchanged, the {factor} wider μP model beat the proxy by "
                f"{proxy - wide:.3f} nats: wider is better at the same hyperparameters, as μTransfer predicts."
            )
        else:
            parts.append(
                f"The {factor} wider μP model did not beat the proxy ({wide - proxy:+.3f} nats): no transfer seen here."
            )
    if wide is not None and "sp_wide" in m:
        if sp is None:
            parts.append("The stock (SP) wide model diverged at the same learning rate.")
        elif sp > wide:
            worse = " and even worse than the narrow proxy" if proxy is not None and sp > proxy else ""
            parts.append(
                f"The stock (SP) wide model at the same learning rate was {sp - wide:.3f} nats worse than μP{worse}: "
                "under SP the proxy's hyperparameters do not carry over to the wide model."
            )
        else:
            parts.append("The stock (SP) wide model at the same learning rate did as well or better "
                         f"({sp - wide:+.3f} nats).")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; choose from {MODELS}")
    try:  # before any training: the plot at the end needs matplotlib, the training loop tqdm
        require("sweep", "matplotlib", "tqdm", what="the demo (its loss-curve plot)")
    except MuPError as e:
        print(f"python -m hf_mup.lab.demo: error: {e}", file=sys.stderr)
        return 2
    args.progress = quiet_progress_bars() and not args.no_progress  # bars on a terminal only, never in a log
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    folder = Path(args.data_dir) if args.data_dir else data.wikitext_dir()
    train_file, val_file = folder / "valid.txt", folder / "test.txt"
    corpus = data.Corpus(vocab_size=args.vocab_size, train_file=str(train_file), val_file=str(val_file),
                         train_chars=args.train_chars, val_blocks=args.eval_blocks)
    try:
        train_blocks, val_blocks, _ = data.load_corpus(corpus, args.seq_len)
    except MuPError as e:
        print(f"python -m hf_mup.lab.demo: error: {e}", file=sys.stderr)
        return 2
    prep_seconds = time.perf_counter() - t0
    print(
        f"data: {train_blocks.numel()} train tokens ({train_file.name}), {val_blocks.numel()} validation tokens "
        f"({val_file.name}), BPE vocab {args.vocab_size}; torch threads: {torch.get_num_threads()}",
        flush=True,
    )
    print(
        f"same for every model: AdamW, LR {fmt_lr(args.lr)}, batch {args.batch_size}×{args.seq_len} tokens, "
        f"{args.steps} steps (warmup + cosine), grad clip {args.clip:g}; μP: base width {args.base_width}, "
        f"output_mult {args.output_mult:g}",
        flush=True,
    )

    results = {
        "hyperparameters": {k: v for k, v in vars(args).items()
                            if k not in ("out", "no_progress", "progress", "models")},
        "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0); μP: hf_mup.mup_param_groups",
        "schedule": f"linear warmup {args.warmup:g}·steps, cosine to {args.final_lr_frac:g}·lr",
        "data": {
            "train": str(train_file),
            "validation": str(val_file),
            "train_tokens": train_blocks.numel(),
            "val_tokens": val_blocks.numel(),
            "tokenizer": f"byte-level BPE, vocab {args.vocab_size}, trained on {train_file.name}",
        },
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "models": {},
    }
    models: dict[str, dict] = {}
    results["models"] = models
    for name in names:
        r = models[name] = train(name, args, train_blocks, val_blocks)
        loss = "diverged" if r["diverged"] else f"final validation loss {r['final_val_loss']:.3f}"
        print(f"{r['label']}: {loss} ({r['train_seconds']:.0f} s)", flush=True)

    results["prep_seconds"] = round(prep_seconds, 2)
    results["total_seconds"] = round(time.perf_counter() - t0, 2)
    results["summary"] = summary(results)
    json_path, png_path = out / "results.json", out / "loss_curves.png"
    json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    plot(results, png_path, args)
    print(f"\nwrote {png_path} and {json_path} (total {results['total_seconds']:.0f} s)")
    print(results["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
