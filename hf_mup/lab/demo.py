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

How the hyperparameters were chosen: on the proxy alone, as μTransfer prescribes. Final validation loss of the
proxy after 200 steps (seed 0; same settings as above), by output_mult and LR:

    output_mult   2^-9    2^-8    2^-7    2^-6    2^-5
        1         5.181   5.034   5.256   5.258   5.438
        4         4.889   4.810   4.828   4.930   5.287
        8         4.825   4.736   4.790   4.871   5.407
       16         4.878   4.792   4.975   5.319   5.653

so output_mult 8 and LR 2^-8 (seed 1 gives the same LR argmin: 4.782, 4.744, 4.788, 5.152 at 2^-9..2^-6).
MUP.md's 2^-7 was measured on bytes with 150 steps; with this BPE and schedule 2^-8 is the proxy's optimum.

Measured with the defaults (CPU, torch 2.13, transformers 5.23; final validation loss, nats/token):

    seed   μP proxy w64   μP wide w512   SP wide w512 (same LR)
     0        4.736          4.564          5.007
     1        4.744          4.498          5.078

The wide μP model beats the proxy at the proxy's hyperparameters (by 0.17 and 0.25 nats) and SP at that LR
is far behind (0.44 and 0.58 nats worse than μP wide, and worse than the proxy). SP is not merely one grid
step off: its own LR sweep at width 512 (seed 0, 2^-7 .. 2^-13) gave 5.207, 5.007, 4.941, 4.926, 4.861,
5.057, 5.362, an optimum at 2^-11, three steps left of the proxy's (the drift Tensor Programs V describes),
and even there 0.30 nats behind μP wide at the copied LR.
At 2^-7 (seed 0) the picture is the same but weaker: proxy 4.790, μP wide 4.768, SP wide 5.207 (μP wide was
run at 2^-7 and 2^-8 only, not swept further).

Runtime (2 torch threads): 195 s on 2 idle cores (proxy 11 s, each wide model 87 s, about 0.43 s a step with
the validation passes); 8.7 and 14.4 minutes on the same machine while other jobs kept both cores busy (two
threads fighting other processes for the cores slow the small proxy most). Repeated runs give the same losses;
1 and 2 threads agree to within 0.002 nats. `--steps`, `--wide-width` and `--batch-size`
trade time for signal; `--models` runs a subset.
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


def build(name: str, args: argparse.Namespace, eos_id: int):
    """(model, optimizer parameter groups, width) for one of MODELS; the init seed is `args.seed` for each."""
    width = args.base_width if name == "mup_proxy" else args.wide_width
    config = lm.gpt2_config(width, layers=args.layers, head_dim=args.head_dim, seq_len=args.seq_len,
                            vocab_size=args.vocab_size, bos_token_id=eos_id, eos_token_id=eos_id)
    parametrization = "sp" if name == "sp_wide" else "mup"
    model, groups = lm.build_lm(config, parametrization, args.lr, args.base_width, seed=args.seed,
                                output_mult=args.output_mult)
    return model, groups, width


def train(name: str, args: argparse.Namespace, train_blocks: torch.Tensor, val_blocks: torch.Tensor, eos_id: int) -> dict:
    """Train one model (`hf_mup.lab.lm.train_lm`: the same batches in the same order for every model)."""
    model, groups, width = build(name, args, eos_id)
    r = lm.train_lm(
        model, groups, train_blocks, val_blocks, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_frac=args.warmup, final_lr_frac=args.final_lr_frac, clip=args.clip, seed=args.seed,
        eval_every=args.eval_every, progress=args.progress, desc=f"{name:9s} w={width:<4d}",
    )
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
    args.progress = not args.no_progress and quiet_progress_bars()  # bars on a terminal only, never in a log
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    folder = Path(args.data_dir) if args.data_dir else data.wikitext_dir()
    train_file, val_file = folder / "valid.txt", folder / "test.txt"
    tokenizer = data.train_tokenizer([train_file], vocab_size=args.vocab_size, max_chars=args.train_chars)
    args.vocab_size = len(tokenizer)  # what the BPE actually reached
    train_blocks = data.token_blocks([train_file], tokenizer, args.seq_len, max_chars=args.train_chars)
    # a slice of test.txt: BPE tokens average ~3 characters, so 8 per token fills --eval-blocks without tokenizing it all
    val_blocks = data.token_blocks([val_file], tokenizer, args.seq_len, max_blocks=args.eval_blocks,
                                   max_chars=args.eval_blocks * args.seq_len * 8)
    eos_id = tokenizer.eos_token_id
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
    for name in names:
        r = results["models"][name] = train(name, args, train_blocks, val_blocks, eos_id)
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
