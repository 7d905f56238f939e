"""Lingle (2024, "A Large-Scale Exploration of μ-Transfer", arXiv 2404.05728) at CPU scale: for each design choice he
ablated, does the best learning rate stay put as the model widens 16×? A Llama-shaped decoder in μP (pre-norm RMSNorm
without gains, 1/d attention, untied readout), one `hf_mup.lab.sweep` grid study per ablation: widths × an LR grid of
powers of 2 (Lingle's 2^-10…2^-2, ×4 steps) × seeds, validation loss on WikiText-2 with the project's local BPE.

Usage:
    python benchmarks/lingle_ablations.py --estimate-only     # time a few steps per width, print the run time
    python benchmarks/lingle_ablations.py                     # every ablation (hours on 2 cores); rerun to resume
    python benchmarks/lingle_ablations.py --only baseline,lion --quick   # 2 widths, 2 LRs, 1 seed, 10 steps

Verdict (Lingle's rule): an ablation "transfers" when the argmin of the seed-mean validation loss over the LR grid is
the same at every width; the spread (max − min argmin, log2 units) is reported beside it. Writes
benchmarks/results/lingle_ablations.{json,md,png} and the studies in benchmarks/results/lingle_ablations.db.

The baseline mirrors Lingle's where hf_mup has the knob: gains fixed at 1 (`trainable_norm_gains=False`), query and
readout initialised normally (σ/√m hidden init with σ = base_width^-1/2, i.e. 1/√width as Lingle), attention logits
q·k/d (`attn_mult = 1/√d`, head size fixed), AdamW β = (0.9, 0.98), no weight decay, linear warmup then linear decay,
gradient clipping 1. transformers' Llama MLP is gated, so Lingle's ReLU baseline is a gated ReLU here ("relu"), and
the SwiGLU / squared-ReLU rows are SiLU- / ReLU²-gated MLPs of the same width.
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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grid_cli
import torch

from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.results import _json_safe, lr_optima, plot_width_curves, trial_rows

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "lingle_ablations"

# Lingle's published verdicts (the paper's table).
LINGLE = {
    "baseline": "transfers", "projection_biases": "transfers", "zero_query_init": "transfers", "swiglu": "transfers",
    "squared_relu": "transfers", "multi_query": "transfers", "sp_unembedding_init": "transfers",
    "cosine_schedule": "transfers", "batch_4x_larger": "transfers", "batch_4x_smaller": "transfers",
    "trainable_gains": "fails", "attention_1_over_sqrt_d": "fails", "coupled_wd_0.1": "fails", "lion": "fails",
    "standard_parametrization": "fails",
}

# What each ablation changes from the baseline: `Recipe` fields (`recipe.replace`: "config" and "mup" are merged
# into the baseline's), the batch/steps, the attention multiplier, or the parametrization.
ABLATIONS = {
    "baseline": {},
    "projection_biases": {"options": {"config": {"attention_bias": True, "mlp_bias": True}}},
    "zero_query_init": {"options": {"mup": {"zero_init_query": True}}},
    "swiglu": {"options": {"config": {"hidden_act": "silu"}}},
    "squared_relu": {"options": {"config": {"hidden_act": "relu2"}}},
    "multi_query": {"options": {"config": {"num_key_value_heads": 1}}},
    "sp_unembedding_init": {"options": {"mup": {"readout_init": "standard"}}},
    "cosine_schedule": {"options": {"schedule": "cosine"}},
    "batch_4x_larger": {"batch_factor": 4.0},
    "batch_4x_smaller": {"batch_factor": 0.25},
    "trainable_gains": {"options": {"mup": {"trainable_norm_gains": True}}},
    "attention_1_over_sqrt_d": {"attn_1_over_sqrt_d": True},
    "coupled_wd_0.1": {"options": {"weight_decay": 0.1, "weight_decay_mode": "coupled"}},
    "lion": {"options": {"optimizer": "lion", "betas": (0.95, 0.98)}},
    "standard_parametrization": {"parametrization": "sp"},
}

# The baseline's `Recipe` fields (besides shape, batch and steps; `spec_for`).
BASELINE_OPTIONS = {
    "config": {"hidden_act": "relu"},
    "mup": {"trainable_norm_gains": False, "zero_init_query": False, "zero_init_readout": False},
    "betas": (0.9, 0.98),
    "schedule": "linear",
    "sp_init": "fan_in",  # the SP row: every weight N(0, 1/width), one LR (Lingle's SP keeps fan-in init)
}


def settings(args: argparse.Namespace) -> dict:
    if args.quick:
        return {"widths": [16, 64], "log2_lrs": [-8.0, -4.0], "seeds": 1, "steps": 10, "batch": 16,
                "train_chars": 200_000, "val_blocks": 16}
    return {"widths": [int(w) for w in args.widths.split(",")], "log2_lrs": sw.parse_log2_lrs(args.log2_lrs),
            "seeds": args.seeds, "steps": args.steps, "batch": args.batch, "train_chars": None,
            "val_blocks": args.val_blocks}


def spec_for(name: str, s: dict, head_dim: int) -> tuple[sw.SweepSpec, str]:
    """(spec, parametrization) of one ablation's study."""
    a = ABLATIONS[name]
    factor = a.get("batch_factor", 1.0)  # same tokens: 4× the batch for ¼ of the steps, and the reverse
    batch, steps = max(1, round(s["batch"] * factor)), max(1, round(s["steps"] / factor))
    attn_mult = 1.0 if a.get("attn_1_over_sqrt_d") else head_dim**-0.5  # q·k/√d vs Lingle's q·k/d (head size fixed)
    base_width = s["widths"][0]
    baseline = Recipe(arch="llama", width=base_width, layers=2, head_dim=head_dim, seq_len=64, vocab_size=2048,
                      initializer_range=base_width**-0.5, base_width=base_width, warmup_frac=0.1, final_lr_frac=1e-4,
                      batch_size=batch, steps=steps, **BASELINE_OPTIONS)
    recipe = baseline.replace(**a.get("options", {}))
    recipe = recipe.replace(mup={"input_mult": 1.0, "output_mult": 1.0, "attn_mult": attn_mult})
    spec = sw.SweepSpec("grid", recipe, Corpus(tokenizer="bpe", vocab_size=2048, train_chars=s["train_chars"],
                                               val_blocks=s["val_blocks"]))
    return spec, a.get("parametrization", "mup")


def options_for(name: str) -> dict:
    """The `Recipe` fields the baseline sets, with the ablation's merged in (JSON, for the results)."""
    out = dict(BASELINE_OPTIONS)
    for k, v in ABLATIONS[name].get("options", {}).items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return json.loads(json.dumps(out))


def verdict(optimum: dict, widths: list[int] | None = None) -> dict:
    """Lingle's rule on one ablation's per-width optima: the same argmin at every width (of `widths`, when given: an
    ablation whose study has not reached every width yet gets no verdict)."""
    argmins = {int(w): v["log2_lr"] for w, v in optimum.items()}
    known = [x for x in argmins.values() if x is not None]
    complete = len(known) == len(argmins) and (widths is None or set(map(int, widths)) <= set(argmins))
    spread = max(known) - min(known) if complete and known else None
    return {"argmin_log2_lr": argmins, "spread": spread,
            "verdict": None if spread is None else ("transfers" if spread == 0 else "fails")}


def table_markdown(rows: list[dict], widths: list[int]) -> str:
    head = ["ablation", *(f"best log2 LR, width {w}" for w in widths), "spread", "here", "Lingle", "agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['argmin_log2_lr'].get(w):g}" if r["argmin_log2_lr"].get(w) is not None else "–" for w in widths]
        agree = "–" if r["verdict"] is None else ("yes" if r["verdict"] == r["lingle"] else "**no**")
        lines.append("| " + " | ".join([r["ablation"], *cells, "–" if r["spread"] is None else f"{r['spread']:g}",
                                        r["verdict"] or "–", r["lingle"], agree]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=110, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, names):
        optimum = {int(w): o for w, o in results[name]["optimum"].items()}
        finite = [v for o in optimum.values() for v in o["curve"].values() if v is not None]
        plot_width_curves(ax, optimum, sorted(optimum), cmap, label="w", star=10)
        if finite:
            ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5) + 0.05)
        v = results[name]
        ax.set_title(f"{name}\nhere: {v['verdict']}, Lingle: {v['lingle']}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("log2 learning rate")
    fig.supylabel("validation loss (seed mean)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = grid_cli.parser(__doc__, list(ABLATIONS), quick="2 widths, 2 LRs, 1 seed, 10 steps: shows it works")
    p.add_argument("--widths", default="16,64,256", help="three widths 16× apart; the first is the base width")
    p.add_argument("--head-dim", type=int, default=16, help="fixed head size (widths 16/64/256: 1/4/16 heads)")
    p.add_argument("--log2-lrs", default="-10:-2:2", help="Lingle's grid 2^-10…2^-2 in ×4 steps")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    names = grid_cli.chosen(p, args, list(ABLATIONS))
    s = settings(args)
    out, stem, storage = grid_cli.output(args, STEM)
    data = None
    results, start = {}, time.perf_counter()
    for name in names:
        spec, parametrization = spec_for(name, s, args.head_dim)
        if data is None:
            data = spec.load_data()
        points = sw.grid_points(s["widths"], s["log2_lrs"], [parametrization], s["seeds"])
        study = sw.open_study(name, storage, spec.stamp(data))
        todo = sw.missing_points(study, points)
        if args.estimate_only:
            est = sw.estimate_seconds(spec, todo, data, args.device) if todo else {"total_seconds": 0.0}
            print(f"{name}: {len(todo)} of {len(points)} points left, about {est['total_seconds'] / 60:.1f} min "
                  f"{est.get('seconds_per_trial', '')}", flush=True)
            continue
        if todo and not args.report_only:
            print(f"{name}: {len(todo)} of {len(points)} points left", flush=True)
            sw.run_grid(study, spec, points, data, args.device, progress=True)
        optimum = lr_optima(trial_rows(study), "val_loss").get(parametrization, {}).get("optimum", {})
        r = spec.recipe
        results[name] = {"lingle": LINGLE[name], "parametrization": parametrization, "steps": r.steps,
                         "batch": r.batch_size, "options": options_for(name), "attn_mult": r.mup["attn_mult"],
                         "optimum": {str(w): v for w, v in optimum.items()}, **verdict(optimum, s["widths"])}
    if args.estimate_only:
        return 0
    rows = [{"ablation": n, **{k: v for k, v in r.items() if k != "optimum"},
             "argmin_log2_lr": {int(w): x for w, x in r["argmin_log2_lr"].items()}} for n, r in results.items()]
    judged = [r for r in rows if r["verdict"] is not None]
    summary = {"benchmark": "benchmarks/lingle_ablations.py" + (" --quick" if args.quick else ""), "settings": s,
               "head_dim": args.head_dim, "rule": "transfers iff the argmin of the seed-mean validation loss over the "
               "LR grid is the same at every width (Lingle); spread = max − min argmin in log2 units",
               "agreement": f"{sum(r['verdict'] == r['lingle'] for r in judged)} of {len(judged)}",
               "seconds_this_run": round(time.perf_counter() - start, 1), "results": results,
               "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    (out / f"{stem}.json").write_text(json.dumps(_json_safe(summary), indent=1))
    (out / f"{stem}.md").write_text(table_markdown(rows, s["widths"]) + f"\nAgreement with Lingle: "
                                    f"{summary['agreement']}.\n")
    plot(results, out / f"{stem}.png")
    print(table_markdown(rows, s["widths"]))
    print(f"agreement with Lingle: {summary['agreement']}; wrote {out / stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
