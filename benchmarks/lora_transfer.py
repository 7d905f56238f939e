"""Does the fine-tuning LR transfer across width? LoRA with μP's rules against plain LoRA, LoRA+ and full fine-tuning.

Usage:
    python benchmarks/lora_transfer.py            # about 35 minutes on 2 cores; kill and rerun to resume
    python benchmarks/lora_transfer.py --quick    # the same stages at toy sizes: a minute

1. pretrain: GPT-2 causal LMs in μP (base width 32) at widths 32, 64, 128, 256, 2 layers, head size 16, seq 64,
   400 steps of batch 16 at LR 2^-8 at every width (μTransfer), on WikiText-2 with a BPE tokenizer trained here.
2. finetune: each width adapted to another domain, the movie-review sentences of ../shared/data/sentence-polarity
   (train.tsv to train: its first 768 blocks of 64 tokens, one pass in batches of 16; test.tsv held out: 160
   blocks), AdamW, warmup 10% then linear decay to 0, over an LR grid around each way's optimum, 2 seeds, four ways:
   - "mup": LoRA (r 8, α 16, every projection) with hf_mup's adapter rules (A: η/m, B: η; `hf_mup.rules`),
   - "plain": the same LoRA with every adapter tensor at η (`adapters="plain"`: hf_mup's rule before it had one),
   - "loraplus": plain with B at 16 η (LoRA+, Hayou et al. 2024: the ratio its paper recommends),
   - "full": full fine-tuning with μP's groups, the reference row.
   The held-out loss is smooth in the LR where the polarity accuracy of models this small is not (0.5-0.65 in
   benchmarks/results/bert_tiny): it locates each optimum.
3. report: per way and width, the seed-mean held-out loss against log2 LR; the optimum (the parabola through the
   grid's best three points); its drift over the 8× width range (goal for "mup": ≤ 0.5 log2); the held-out loss at
   each width's best LR and at the base width's best LR copied to every width.
Writes benchmarks/results/lora_transfer.{json,md,png} and lora_transfer_runs.jsonl (one line per run, the resume
state); the pretrained models go to out/lora_transfer/ (not committed).
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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

import hf_mup
from hf_mup.lab import lm, tasks
from hf_mup.lab.data import Corpus, load_corpus, token_blocks
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.scaling import curve_optimum

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parents[1] / "out" / "lora_transfer"
WAYS = ("mup", "plain", "loraplus", "full")
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True,
        "task_type": "CAUSAL_LM"}


def settings(quick: bool) -> dict:
    if quick:
        return {"widths": [32, 64], "base": 32, "pretrain_steps": 10, "batch": 16, "examples": 64, "test": 16,
                "epochs": 1, "lrs": {w: [-8.0, -6.0] for w in WAYS}, "seeds": 1, "train_chars": 100_000,
                "name": "lora_transfer_quick"}
    # grids around each way's optimum at the base width (a one-seed scan of log2 LR -16…-2), wider where it moves;
    # half steps where the LoRA ways' optima lie (the curves are flat there, with a cliff above)
    grid = {"mup": (-10, -4), "plain": (-11, -4), "loraplus": (-12, -5), "full": (-9, -3)}
    halves = {"mup": (-7.5, -6.5, -5.5, -4.5), "plain": (-7.5, -6.5, -5.5), "loraplus": (-10.5, -9.5, -8.5),
              "full": ()}
    lrs = {w: sorted([float(x) for x in range(a, b + 1)] + list(halves[w])) for w, (a, b) in grid.items()}
    return {"widths": [32, 64, 128, 256], "base": 32, "pretrain_steps": 400, "batch": 16, "examples": 768,
            "test": 160, "epochs": 1, "lrs": lrs, "seeds": 2, "train_chars": None, "name": "lora_transfer"}


def recipe(s: dict, width: int, **kw) -> Recipe:
    return Recipe(arch="gpt2", width=width, layers=2, head_dim=16, seq_len=64, vocab_size=2048, base_width=s["base"],
                  batch_size=s["batch"], **kw)


def pretrain(s: dict, width: int, data, folder: Path) -> dict:
    """One width's LM at the shared recipe; saved folded (a stock checkpoint + config.mup). Skipped if done."""
    record = folder / "record.json"
    if record.exists():
        return json.loads(record.read_text())
    r0 = recipe(s, width, lr=2.0**-8, steps=s["pretrain_steps"], seed=0)
    model = r0.build_model()
    r = lm.train_lm(model, r0, data[0], data[1], progress=True, desc=f"pretrain width {width}")
    model.save_pretrained(folder)
    out = {"width": width, "val_loss": r["final_val_loss"], "seconds": r["seconds"], "steps": r0.steps}
    record.write_text(json.dumps(out))
    return out


def finetune(s: dict, way: str, width: int, log2_lr: float, seed: int, data, folder: Path) -> dict:
    """One fine-tuning run: the width's checkpoint, LoRA (or not), the lab's loop; the held-out loss."""
    import peft

    torch.manual_seed(seed)
    with tasks.load_report_off():
        model = hf_mup.MuPModel.from_pretrained(folder)
    model.loss_type = "ForCausalLM"
    if way != "full":
        model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    steps = s["epochs"] * math.ceil(len(data[0]) / s["batch"])
    r0 = recipe(s, width, lr=2.0**log2_lr, steps=steps, seed=seed, schedule="linear", warmup_frac=0.1,
                final_lr_frac=0.0, betas=(0.9, 0.999), adapters="mup" if way == "full" else way)
    r = lm.train_lm(model, r0, data[0], data[1])
    return {"way": way, "width": width, "log2_lr": log2_lr, "seed": seed, "loss": r["final_val_loss"],
            "train_loss": r["final_train_loss"], "diverged": r["diverged"], "seconds": r["seconds"]}


def summarize(runs: list[dict], s: dict) -> dict:
    out: dict = {}
    for way in WAYS:
        rows = [r for r in runs if r["way"] == way]
        per_width = {}
        for w in s["widths"]:
            curve: dict[float, list[float]] = {}
            for r in rows:
                if r["width"] == w:
                    curve.setdefault(r["log2_lr"], []).append(r["loss"] if not r["diverged"] else math.inf)
            per_width[w] = {"optimum": curve_optimum(curve),
                            "loss": {x: sum(v) / len(v) for x, v in sorted(curve.items())}}
        xs = [per_width[w]["optimum"]["x"] for w in s["widths"] if per_width[w]["optimum"]["x"] is not None]
        base = per_width[s["base"]]["optimum"]["grid_x"]
        for w in s["widths"]:
            p = per_width[w]
            p["best_loss"] = p["optimum"]["loss"]
            p["copied_loss"] = p["loss"].get(base) if base is not None else None
        out[way] = {"per_width": per_width, "drift": (max(xs) - min(xs)) if len(xs) == len(s["widths"]) else None,
                    "at_edge": [w for w in s["widths"] if per_width[w]["optimum"]["at_edge"]]}
    return out


def plot(summary: dict, s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WAYS) + 1, figsize=(4 * (len(WAYS) + 1), 3.6))
    colors = plt.cm.viridis([i / max(1, len(s["widths"]) - 1) for i in range(len(s["widths"]))])
    titles = {"mup": "LoRA, μP rules", "plain": "LoRA, one LR", "loraplus": "LoRA+ (B × 16)", "full": "full, μP"}
    for ax, way in zip(axes, WAYS):
        for c, w in zip(colors, s["widths"]):
            p = summary[way]["per_width"][w]
            xs = [x for x, y in p["loss"].items() if math.isfinite(y)]
            ax.plot(xs, [p["loss"][x] for x in xs], "o-", color=c, ms=3, label=f"width {w}")
            if p["optimum"]["x"] is not None:
                ax.axvline(p["optimum"]["x"], color=c, lw=0.8, ls=":")
        drift = summary[way]["drift"]
        ax.set_title(f"{titles[way]}: drift {drift:.2f}" if drift is not None else titles[way], fontsize=9)
        ax.set_xlabel("log2 LR")
    axes[0].set_ylabel("held-out loss, movie-review text")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for way in WAYS:
        pts = [(w, summary[way]["per_width"][w]["optimum"]["x"]) for w in s["widths"]]
        pts = [(w, x) for w, x in pts if x is not None]
        ax.plot([math.log2(w) for w, _ in pts], [x - pts[0][1] for _, x in pts], "o-", label=titles[way])
    ax.axhspan(-0.5, 0.5, color="0.9")
    ax.set_xlabel("log2 width")
    ax.set_ylabel("optimum's log2 LR − base width's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(summary: dict, s: dict) -> str:
    lines = ["| way | drift (log2, 8× width) | " + " | ".join(f"width {w}: log2 η*, loss best / copied" for w in s["widths"])
             + " |", "|---" * (2 + len(s["widths"])) + "|"]
    for way in WAYS:
        cells = []
        for w in s["widths"]:
            p = summary[way]["per_width"][w]
            x = p["optimum"]["x"]
            edge = " (edge)" if p["optimum"]["at_edge"] else ""
            cells.append(f"{x:.2f}{edge}, {p['best_loss']:.4f} / {p['copied_loss']:.4f}" if x is not None
                         else "diverged")
        drift = summary[way]["drift"]
        lines.append(f"| {way} | {drift:.2f} | " + " | ".join(cells) + " |" if drift is not None else
                     f"| {way} | – | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy sizes, a minute")
    p.add_argument("--work", default=str(WORK), help="the pretrained models and the fine-tuning text (not committed)")
    p.add_argument("--out", default=str(RESULTS), help="where the results and the runs' log go")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = settings(args.quick)
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(tokenizer="bpe", vocab_size=2048, train_chars=s["train_chars"], val_blocks=64)
    train_blocks, val_blocks, tok = load_corpus(corpus, seq_len=64, out=work)
    pretrained = {w: pretrain(s, w, (train_blocks, val_blocks), work / f"width{w}") for w in s["widths"]}
    print("pretrained:", {w: round(r["val_loss"], 3) for w, r in pretrained.items()}, flush=True)
    domain = []
    for split in ("train", "test"):  # the movie-review sentences as text, one per line
        text = work / f"polarity_{split}.txt"
        text.write_text("\n".join(e[0] for e in tasks.load_tsv(tasks.polarity_dir() / f"{split}.tsv")) + "\n")
        domain.append(token_blocks([text], tok, 64))
    data = (domain[0][: s["examples"]], domain[1][: s["test"]])
    print(f"fine-tuning data: {len(data[0])} blocks of 64 tokens, held out {len(data[1])}", flush=True)
    log = out_dir / f"{s['name']}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["way"], r["width"], r["log2_lr"], r["seed"]) for r in runs}
    todo = [(way, w, x, seed) for seed in range(s["seeds"]) for way in WAYS for w in s["widths"] for x in s["lrs"][way]
            if (way, w, x, seed) not in done]
    start = time.time()
    for i, (way, w, x, seed) in enumerate(todo):
        r = finetune(s, way, w, x, seed, data, work / f"width{w}")
        runs.append(r)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"[{i + 1}/{len(todo)}, {time.time() - start:.0f} s] {way} width {w} log2 LR {x:g} seed {seed}: "
              f"held-out loss {r['loss']:.4f} ({r['seconds']:.0f} s)", flush=True)
    summary = summarize(runs, s)
    out = {"command": "python benchmarks/lora_transfer.py" + (" --quick" if args.quick else ""), "settings": s,
           "lora": LORA, "pretrained": pretrained, "summary": summary}
    (out_dir / f"{s['name']}.json").write_text(json.dumps(out, indent=1, default=str))
    plot(summary, s, out_dir / f"{s['name']}.png")
    md = table(summary, s)
    (out_dir / f"{s['name']}.md").write_text(f"`{out['command']}`\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
