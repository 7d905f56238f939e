"""Train big, then compress (Li et al. 2020, arXiv 2002.11794) at CPU scale, with μP so that no size is retuned.

1. proxy: an LR grid at the base width (a resumable `hf_mup.lab.sweep` study), trained for the base width's share of
   the budget; its best LR goes to every size unchanged (μTransfer).
2. train: μP models of several widths, each for the same training FLOPs (6 · parameters · tokens: wider models
   take fewer steps), or with `--budget seconds` for the same wall-clock on this machine (seconds per step measured
   once per width). `--task lm`: Llama-shaped decoders (causal LM);
   `--task polarity`: BERT (masked LM, as Li et al.'s RoBERTa), then fine-tuned on sentence polarity with the
   fine-tuning LR chosen at the base width and copied to the others.
3. compress: each model pruned (global magnitude) at 0-90% and stored in float, int8 and int4 (`hf_mup.compress`,
   torchao through transformers' loader); validation loss on WikiText-2 (or polarity accuracy) and inference bytes.
4. report: the metric against inference bytes, a curve per size, the Pareto front marked; JSON, CSV, Markdown, PNG.

Usage:
    python benchmarks/train_big_compress.py                  # LM, widths 64,128,256,512
    python benchmarks/train_big_compress.py --task polarity  # BERT, accuracy on sentence polarity
    python benchmarks/train_big_compress.py --budget seconds # every size trains as long in wall-clock, not FLOPs
    python benchmarks/train_big_compress.py --quick          # tiny: shows it works in a minute
Every stage is resumable: the trained models, the proxy study and each evaluation are kept in --work (not committed)
and skipped on rerun; the report goes to --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import hf_mup
from hf_mup import MuPError, compress
from hf_mup.lab import lm
from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus, load_corpus
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.results import lr_optima, trial_rows

RESULTS = Path(__file__).resolve().parent / "results" / "train_big_compress"
WORK = Path(__file__).resolve().parents[1] / "out" / "train_big_compress"  # trained models, the proxy study
STORAGE_FORMATS = {"fp32": None, "int8": 8, "int4": 4}
TASKS = {"lm": "llama", "polarity": "bert"}  # task -> architecture
FINETUNE = {"lrs": (1e-4, 3e-4, 1e-3), "examples": 1600, "test": 400, "epochs": 2, "batch": 16}


def settings(args: argparse.Namespace) -> dict:
    if args.quick:
        return {"task": args.task, "budget": args.budget, "widths": [32, 64], "layers": 2, "base_steps": 8, "batch": 8,
                "log2_lrs": [-7.0, -5.0], "seeds": 1, "sparsities": [0.0, 0.5], "formats": ["fp32", "int8"],
                "train_chars": 100_000, "val_blocks": 8,
                "finetune": {**FINETUNE, "lrs": (1e-3,), "examples": 64, "test": 32, "epochs": 1}}
    return {"task": args.task, "budget": args.budget, "widths": [int(w) for w in args.widths.split(",")],
            "layers": args.layers, "base_steps": args.base_steps, "finetune": FINETUNE, "batch": args.batch,
            "log2_lrs": sw.parse_log2_lrs(args.log2_lrs), "seeds": args.seeds,
            "sparsities": [float(s) for s in args.sparsities.split(",")], "formats": args.formats.split(","),
            "train_chars": None, "val_blocks": args.val_blocks}


def make_spec(s: dict) -> sw.SweepSpec:
    """The proxy's grid spec: the base width's recipe (its steps are the base width's share of the budget)."""
    arch = TASKS[s.get("task", "lm")]
    recipe = Recipe(arch=arch, width=s["widths"][0], layers=s["layers"], head_dim=16, seq_len=64, vocab_size=2048,
                    base_width=s["widths"][0], steps=s["base_steps"], batch_size=s["batch"])
    return sw.SweepSpec("grid", recipe, Corpus(tokenizer="bpe", vocab_size=2048, masked=arch == "bert",
                                               train_chars=s["train_chars"], val_blocks=s["val_blocks"]))


def n_params(spec: sw.SweepSpec, width: int) -> int:
    """Parameters of the width's model, counted on the meta device."""
    recipe = spec.recipe.replace(width=width)
    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(recipe.model_config(), **recipe.mup_settings())
    return sum(p.numel() for p in model.parameters())


def budget_steps(spec: sw.SweepSpec, widths: list[int]) -> tuple[float, dict[int, int]]:
    """The budget (the base width's steps × its FLOPs per step) and each width's steps within it; a MuPError when a
    width cannot take one step."""
    r = spec.recipe
    per_step = {w: 6 * n_params(spec, w) * r.batch_size * r.seq_len for w in widths}
    budget = per_step[widths[0]] * r.steps
    steps = {w: int(budget // per_step[w]) for w in widths}
    short = [w for w, n in steps.items() if n < 1]
    if short:
        raise MuPError(f"a budget of {budget:.3g} FLOPs is smaller than one training step of width {short[0]} "
                       f"({per_step[short[0]]:.3g} FLOPs): raise --base-steps or drop the width.")
    return budget, steps


def seconds_per_step(spec: sw.SweepSpec, widths: list[int], data, path: Path,
                     timed_steps: int = 10) -> dict[int, float]:
    """Seconds of one training step per width on this machine (the median of three runs of `timed_steps` steps, after
    3 warm-up steps), measured once and kept in `path` so that a resumed run gives every width the same steps."""
    if path.exists():
        return {int(w): v for w, v in json.loads(path.read_text()).items()}
    timing = {}
    for w in widths:
        recipe = spec.grid_recipe({"parametrization": "mup", "width": w, "log2_lr": -10.0, "seed": 0})
        model = recipe.build_model()
        lm.train_lm(model, recipe.replace(steps=3), data[0], None, **spec.masking())  # warm-up
        runs = [lm.train_lm(model, recipe.replace(steps=timed_steps), data[0], None,
                            **spec.masking())["seconds"] / timed_steps for _ in range(3)]
        timing[w] = sorted(runs)[1]
    path.write_text(json.dumps(timing, indent=1))
    return timing


def wallclock_steps(spec: sw.SweepSpec, widths: list[int], timing: dict[int, float]) -> tuple[float, dict[int, int]]:
    """The second view of the budget: the base width's steps × its seconds per step, and each width's steps in that
    many seconds on this machine."""
    budget = timing[widths[0]] * spec.recipe.steps
    steps = {w: int(budget / timing[w] + 1e-9) for w in widths}  # the base width gets exactly its steps
    short = [w for w, n in steps.items() if n < 1]
    if short:
        raise MuPError(f"a budget of {budget:.3g} s is shorter than one training step of width {short[0]} "
                       f"({timing[short[0]]:.3g} s): raise --base-steps or drop the width.")
    return budget, steps


def proxy_lr(spec: sw.SweepSpec, s: dict, data, storage: str) -> float:
    """The base width's best LR over the grid (seed-mean validation loss): what every size trains with."""
    study = sw.open_study("proxy", storage, spec.stamp(data))
    points = sw.grid_points([s["widths"][0]], s["log2_lrs"], ["mup"], s["seeds"])
    sw.run_grid(study, spec, points, data, progress=True)
    best = lr_optima(trial_rows(study), "val_loss")["mup"]["optimum"][s["widths"][0]]
    if best["log2_lr"] is None:
        raise MuPError("every proxy LR diverged: widen --log2-lrs downwards.")
    return best["log2_lr"]


def train(spec: sw.SweepSpec, width: int, steps: int, log2_lr: float, data, out: Path) -> dict:
    """Train one size for its steps at the transferred LR; save the folded model and its record (skipped if done)."""
    record_path = out / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    point = {"parametrization": "mup", "width": width, "log2_lr": log2_lr, "seed": 0}
    recipe = spec.grid_recipe(point).replace(steps=steps)  # the proxy's recipe at this width and length
    model = recipe.build_model()
    r = lm.train_lm(model, recipe, data[0], data[1], progress=True, desc=f"width {width}, {steps} steps",
                    **spec.masking())
    model.save_pretrained(out)  # folded weights + config.mup: compress.load reads it as a stock model
    record = {"width": width, "steps": steps, "params": r["n_params"], "tokens": r["tokens"],
              "flops": 6 * r["n_params"] * r["tokens"], "val_loss": r["final_val_loss"], "seconds": r["seconds"],
              "diverged": r["diverged"]}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def finetune(s: dict, widths: list[int], tok, work: Path) -> dict:
    """Fine-tune every size on sentence polarity (μP classifiers from the MLM checkpoints): the LR with the best
    accuracy at the base width, copied to the others. Saved to `width*/finetuned`; skipped when done."""
    from transformers import AutoConfig

    from hf_mup.lab import tasks

    f = s["finetune"]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # id 0: BERT's pad_token_id in hf_mup.lab.lm's configs, never a masking target
    path = work / "finetune.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    train_ex, test_ex = tasks.load_task("polarity")
    train_ex, test_ex = train_ex[: f["examples"]], test_ex[: f["test"]]

    def run(width: int, lr: float, save: bool) -> float:
        key = f"w{width}/lr{lr:g}"
        if key not in done or (save and not (work / f"width{width}" / "finetuned" / "config.json").exists()):
            folder = work / f"width{width}"
            config = AutoConfig.from_pretrained(folder, num_labels=2)
            torch.manual_seed(0)
            model = hf_mup.MuPModel.from_pretrained(folder, model_class="BertForSequenceClassification", config=config)
            recipe = tasks.finetune_recipe(model, len(train_ex), lr=lr, epochs=f["epochs"], batch_size=f["batch"])
            r = tasks.finetune(model, tok, train_ex, test_ex, recipe, max_length=64)
            if save:
                model.save_pretrained(folder / "finetuned")
            done[key] = r["accuracy"]
            path.write_text(json.dumps(done, indent=1))
        return done[key]

    base = widths[0]
    scores = {lr: run(base, lr, save=False) for lr in f["lrs"]}
    lr = max(scores, key=scores.get)
    accuracy = {w: run(w, lr, save=True) for w in widths}
    return {"lr": lr, "base_width_accuracy_by_lr": scores, "accuracy": accuracy, "test": test_ex}


def compressed_metric(model_dir: Path, sparsity: float, fmt: str, val, tok=None, test=None) -> dict:
    """The metric (validation loss, or accuracy with `test`) and inference bytes of one (sparsity, storage format)."""
    from hf_mup.lab import tasks

    model = compress.load(model_dir)
    if sparsity:
        compress.prune(model, sparsity)
    with tempfile.TemporaryDirectory() as tmp:
        report = compress.save_compressed(model, tmp, bits=STORAGE_FORMATS[fmt])
        model = compress.load(tmp)  # evaluated as it loads from disk
        metric = (tasks.accuracy(model, tok, test, max_length=64) if test is not None
                  else lm.evaluate(model, val))
    return {("accuracy" if test is not None else "val_loss"): metric, "bytes": report["total"]["bytes"],
            "stored_bytes": report["total"]["stored_bytes"], "nonzeros": report["total"]["nonzeros"],
            "params": report["total"]["params"]}


def score(row: dict) -> float:
    """Lower is better: the loss, or minus the accuracy."""
    return row["val_loss"] if "val_loss" in row else -row["accuracy"]


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats in both bytes and `score` (smaller is better in each), by increasing bytes."""
    front, best = [], math.inf
    for r in sorted(rows, key=lambda r: (r["bytes"], score(r))):
        if score(r) < best:
            front.append(r)
            best = score(r)
    return front


def plot(rows: list[dict], front: list[dict], path: Path, budget: str = "flops") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in rows})
    metric = "val_loss" if "val_loss" in rows[0] else "accuracy"
    cmap = plt.get_cmap("viridis")
    markers = {"fp32": "o", "int8": "s", "int4": "^"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, w in enumerate(widths):
        color = cmap(i / max(1, len(widths) - 1))
        for fmt, marker in markers.items():
            pts = sorted((r["bytes"], r[metric]) for r in rows if r["width"] == w and r["format"] == fmt)
            if pts:
                ax.plot(*zip(*pts), marker=marker, color=color, lw=1, ms=4,
                        label=f"width {w}, {fmt}" if fmt == "fp32" else None, alpha=0.9)
    ax.plot([r["bytes"] for r in front], [r[metric] for r in front], color="red", lw=2, alpha=0.4,
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("inference bytes (sparse: values + bitmask; quantized: packed bits + scales)")
    ax.set_ylabel("validation loss (nats/token)" if metric == "val_loss" else "sentence polarity accuracy")
    ax.set_title(f"same training {'FLOPs' if budget == 'flops' else 'seconds'}, μTransferred LR; pruned 0-90%, "
                 "fp32 (o) / int8 (s) / int4 (^)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    finite = [r[metric] for r in rows if math.isfinite(r[metric])]
    if finite and metric == "val_loss":  # every size's uncompressed point in view, the 90%-pruned tails cut
        top = max(r[metric] for r in rows if r["sparsity"] == 0 and math.isfinite(r[metric]))
        ax.set_ylim(min(finite) - 0.05, min(max(finite), max(top + 0.5, min(finite) + 2.0)) + 0.05)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict(rows: list[dict], front: list[dict], widths: list[int]) -> str:
    """Li et al.'s claim at this scale: is the front, at the sizes the smallest model reaches, made of larger models?"""
    smallest = min(widths)
    on_front = sorted({r["width"] for r in front})
    small_bytes = min(r["bytes"] for r in rows if r["width"] == smallest and r["format"] == "fp32"
                      and r["sparsity"] == 0)
    below = [r for r in front if r["bytes"] <= small_bytes]
    larger = [r for r in below if r["width"] > smallest]
    return (f"widths on the Pareto front: {on_front}; at or below the uncompressed width-{smallest} model's size "
            f"({small_bytes:,} bytes) the front has {len(below)} point(s), {len(larger)} of them from larger models")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="lm", choices=list(TASKS), help="lm: Llama, validation loss; polarity: BERT "
                   "pretrained (MLM) then fine-tuned, accuracy")
    p.add_argument("--widths", default="64,128,256,512", help="the first is the μP base width (the proxy)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--base-steps", type=int, default=1200, help="the base width's steps: sets the budget")
    p.add_argument("--budget", default="flops", choices=["flops", "seconds"], help="flops: every size trains for "
                   "the same 6·N·T; seconds: for the same wall-clock on this machine (measured seconds per step)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--log2-lrs", default="-9:-4:1", help="the proxy's LR grid")
    p.add_argument("--seeds", type=int, default=1, help="proxy seeds per LR")
    p.add_argument("--sparsities", default="0,0.3,0.5,0.7,0.8,0.9")
    p.add_argument("--formats", default="fp32,int8,int4")
    p.add_argument("--val-blocks", type=int, default=128)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(RESULTS), help="results.{json,csv,md}, loss_vs_bytes.png")
    p.add_argument("--work", default=str(WORK), help="trained models, the proxy study, evaluations (resume state)")
    args = p.parse_args(argv)
    s = settings(args)
    bad = [f for f in s["formats"] if f not in STORAGE_FORMATS]
    if bad:
        p.error(f"unknown format(s) {bad}; use some of {', '.join(STORAGE_FORMATS)}")
    suffix = (("" if args.task == "lm" else f"_{args.task}") + ("" if args.budget == "flops" else f"_{args.budget}")
              + ("_quick" if args.quick else ""))
    out, work = (Path(d + suffix) for d in (args.out, args.work))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    spec = make_spec(s)
    if args.budget == "flops":  # before loading data: a budget below one step fails at once
        budget, steps = budget_steps(spec, s["widths"])
    *data, tok = load_corpus(spec.data, spec.recipe.seq_len)
    timing = None
    if args.budget == "seconds":
        timing = seconds_per_step(spec, s["widths"], data, work / "seconds_per_step.json")
        budget, steps = wallclock_steps(spec, s["widths"], timing)
    log2_lr = proxy_lr(spec, s, data, f"sqlite:///{(work / 'proxy.db').resolve()}")
    records = {w: train(spec, w, steps[w], log2_lr, data, work / f"width{w}") for w in s["widths"]}
    tuned = finetune(s, s["widths"], tok, work) if s["task"] == "polarity" else None
    evals_path = work / "evaluations.json"
    evals = json.loads(evals_path.read_text()) if evals_path.exists() else {}
    for w in s["widths"]:
        for sparsity in s["sparsities"]:
            for fmt in s["formats"]:
                key = f"w{w}/s{sparsity:g}/{fmt}"
                if key not in evals:
                    folder = work / f"width{w}" / ("finetuned" if tuned else "")
                    evals[key] = {"width": w, "sparsity": sparsity, "format": fmt,
                                  **compressed_metric(folder, sparsity, fmt, data[1], tok,
                                                      tuned["test"] if tuned else None)}
                    evals_path.write_text(json.dumps(evals, indent=1))  # resumable point by point
                    print(f"{key}: {-score(evals[key]) if tuned else score(evals[key]):.3f}, "
                          f"{evals[key]['bytes']:,} bytes", flush=True)
    rows = [evals[f"w{w}/s{sp:g}/{f}"] for w in s["widths"] for sp in s["sparsities"] for f in s["formats"]]
    front = pareto(rows)
    for r in rows:
        r["pareto"] = r in front
    summary = {"benchmark": "benchmarks/train_big_compress.py" + (" --quick" if args.quick else ""), "settings": s,
               "budget": args.budget, "budget_flops": budget if args.budget == "flops" else None,
               "transferred_log2_lr": log2_lr, "training": records,
               **({"budget_seconds": budget, "seconds_per_step": timing} if timing else {}),
               "finetuning": {k: v for k, v in tuned.items() if k != "test"} if tuned else None,
               "verdict": verdict(rows, front, s["widths"]), "seconds_this_run": round(time.perf_counter() - start, 1),
               "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    (out / "results.json").write_text(json.dumps({**summary, "rows": rows}, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metric = "val_loss" if s["task"] == "lm" else "accuracy"
    lines = ["| width | steps | train seconds | pretraining val loss |", "|---|---|---|---|"]
    lines += [f"| {w} | {r['steps']} | {r['seconds']:.0f} | {r['val_loss']:.3f} |" for w, r in records.items()]
    lines += ["", f"| width | sparsity | format | {metric} | inference bytes | Pareto |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['sparsity']:g} | {r['format']} | {r[metric]:.3f} | {r['bytes']:,} | "
              f"{'yes' if r['pareto'] else ''} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + f"\n\n{summary['verdict']}.\n")
    plot(rows, front, out / "loss_vs_bytes.png", args.budget)
    print(summary["verdict"])
    print(f"wrote {out}/results.{{json,csv,md}} and loss_vs_bytes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
