"""Depth transfer: does the best learning rate stay put as the model deepens 8×, at a fixed width?

Four parametrizations side by side, each a `hf_mup.lab.sweep` grid study per depth (resumable: rerun to continue):
- `sp`: the stock model (GPT-2's own init, its c_proj at σ/√(2L)), one LR;
- `mup`: μP without depth scaling (at the base width it is the stock model with μP's zero inits and per-tensor LRs);
- `completep`: μP with depth scaling α = 1 (CompleteP, Dey et al. 2025), base depth the shallowest;
- `alpha_0.5`: depth scaling α = 0.5 (the "lazy" depth-μP).
The grid: powers of 2, then the half steps on both sides of each depth's best point. Validation loss on WikiText-2
with the project's local BPE, seed means.

Usage:
    python benchmarks/depth_transfer.py --estimate-only     # time a few steps per depth, print the run time
    python benchmarks/depth_transfer.py                     # everything (about an hour on 2 cores); rerun to resume
    python benchmarks/depth_transfer.py --quick             # 2 depths, 2 LRs, 1 seed, a few steps: shows it works
    python benchmarks/depth_transfer.py --longer 800        # then: base vs deepest depth trained 4× longer

Reports, per parametrization: the best log2 LR per depth and its drift (max − min), the LR transferred from the
base depth and the loss each depth reaches with it ("deeper never worse": that loss does not rise with depth).
Writes benchmarks/results/depth_transfer.{json,md,png}; the studies go to benchmarks/results/depth_transfer.db.
"""
from __future__ import annotations

import argparse
import json
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
STEM = "depth_transfer"
# name -> (sweep parametrization, depth exponent α or None for no depth scaling)
DEPTH_VARIANTS = {"sp": ("sp", None), "mup": ("mup", None), "completep": ("mup", 1.0), "alpha_0.5": ("mup", 0.5)}
GOAL_DRIFT = 0.5  # the goal for CompleteP: the best LR within 0.5 (log2) across 8× depth


def settings(args: argparse.Namespace) -> dict:
    if args.quick:
        return {"arch": args.arch, "width": 32, "depths": [2, 4], "log2_lrs": [-8.0, -6.0], "half_steps": False,
                "seeds": 1, "steps": 6, "batch": 8, "train_chars": 100_000, "val_blocks": 8}
    return {"arch": args.arch, "width": args.width, "depths": [int(d) for d in args.depths.split(",")],
            "log2_lrs": sw.parse_log2_lrs(args.log2_lrs), "half_steps": True, "seeds": args.seeds,
            "steps": args.steps, "batch": args.batch, "train_chars": None, "val_blocks": args.val_blocks}


def spec_for(name: str, depth: int, s: dict, head_dim: int) -> sw.SweepSpec:
    """The grid spec of one (parametrization, depth) study: the depth is the recipe's `layers`, the base depth the
    shallowest of the benchmark."""
    _, alpha = DEPTH_VARIANTS[name]
    mup = {"base_num_layers": min(s["depths"]), "depth_alpha": alpha} if alpha is not None else {}
    recipe = Recipe(arch=s["arch"], width=s["width"], layers=depth, head_dim=head_dim, seq_len=64, vocab_size=2048,
                    base_width=s["width"], mup=mup, steps=s["steps"], batch_size=s["batch"])
    return sw.SweepSpec("grid", recipe, Corpus(tokenizer="bpe", vocab_size=2048, train_chars=s["train_chars"],
                                               val_blocks=s["val_blocks"]))


def optimum(study, parametrization: str) -> dict | None:
    """The depth's seed-mean curve and argmin (`sweep.lr_optima` of its one width)."""
    per = lr_optima(trial_rows(study), "val_loss").get(parametrization, {}).get("optimum", {})
    return next(iter(per.values()), None)


def summarize(name: str, per_depth: dict[int, dict]) -> dict:
    """Drift of the argmin across depths; the base depth's argmin as the transferred LR and each depth's loss at it."""
    depths = sorted(per_depth)
    argmins = {d: per_depth[d]["log2_lr"] for d in depths}
    known = [x for x in argmins.values() if x is not None]
    drift = max(known) - min(known) if len(known) == len(depths) and known else None
    transferred = argmins[depths[0]]
    at = {d: per_depth[d]["curve"].get(f"{transferred:g}") if transferred is not None else None for d in depths}
    finite = [at[d] for d in depths]
    never_worse = (all(v is not None for v in finite)
                   and all(b <= a + 1e-9 for a, b in zip(finite, finite[1:])))
    return {"argmin_log2_lr": argmins, "best_loss": {d: per_depth[d]["loss"] for d in depths}, "drift": drift,
            "transferred_log2_lr": transferred, "loss_at_transferred": at, "deeper_never_worse": never_worse,
            "curves": {d: per_depth[d]["curve"] for d in depths}}


def table_markdown(results: dict, depths: list[int]) -> str:
    head = ["parametrization", *(f"best log2 LR, L={d}" for d in depths), "drift",
            *(f"loss at L={depths[0]}'s LR, L={d}" for d in depths), "deeper never worse"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        argmins = [f"{r['argmin_log2_lr'][d]:g}" if r["argmin_log2_lr"][d] is not None else "–" for d in depths]
        losses = [f"{r['loss_at_transferred'][d]:.3f}" if r["loss_at_transferred"][d] is not None else "–"
                  for d in depths]
        lines.append("| " + " | ".join([name, *argmins, "–" if r["drift"] is None else f"{r['drift']:g}", *losses,
                                        "yes" if r["deeper_never_worse"] else "no"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), dpi=110, squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (name, r) in zip(axes[0], results.items()):
        optimum_by_depth = {int(d): {"log2_lr": r["argmin_log2_lr"][d], "loss": r["best_loss"][d], "curve": c}
                            for d, c in r["curves"].items()}
        plot_width_curves(ax, optimum_by_depth, sorted(optimum_by_depth), cmap, label="L", star=10)
        drift = "–" if r["drift"] is None else f"{r['drift']:g}"
        ax.set_title(f"{name}: drift {drift}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("log2 learning rate")
    finite = [v for r in results.values() for c in r["curves"].values() for v in c.values() if v is not None]
    if finite:
        axes[0][0].set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5) + 0.05)
    axes[0][0].set_ylabel("validation loss (seed mean)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def longer_check(names: list[str], s: dict, head_dim: int, steps: int, device: str, path: Path) -> dict:
    """Is depth worth it with more training? The base and the deepest depth trained `steps` steps (seed 0) at the base
    depth's best LR from the sweep's results (`path`), per parametrization; kept in `path` beside them."""
    summary = json.loads(path.read_text())
    done = summary.setdefault("longer", {"steps": steps, "val_loss": {}})
    if done["steps"] != steps:
        raise SystemExit(f"{path} holds a --longer check of {done['steps']} steps; rerun with that or remove it")
    data = None
    for name in names:
        if name not in summary["results"]:
            raise SystemExit(f"{path} has no sweep of {name}: run the sweep (without --longer) first")
        log2_lr = summary["results"][name]["transferred_log2_lr"]
        for depth in (min(s["depths"]), max(s["depths"])):
            key = f"{name}/L{depth}"
            if key in done["val_loss"]:
                continue
            spec = spec_for(name, depth, s, head_dim)
            data = data or spec.load_data()
            point = {"parametrization": DEPTH_VARIANTS[name][0], "width": s["width"], "log2_lr": log2_lr, "seed": 0}
            recipe = spec.grid_recipe(point).replace(steps=steps)
            r = sw.run_trial(spec, recipe, data, device, progress=True, desc=key)
            done["val_loss"][key] = r["val_loss"]
            path.write_text(json.dumps(_json_safe(summary), indent=1))
            print(f"{key}, {steps} steps at 2^{log2_lr:g}: {r['val_loss']:.3f}", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    p = grid_cli.parser(__doc__, list(DEPTH_VARIANTS), quick="2 depths, 2 LRs, 1 seed, 6 steps: shows it works")
    p.add_argument("--arch", default="gpt2", help="gpt2 or llama (pre-norm decoders, as CompleteP's derivation)")
    p.add_argument("--width", type=int, default=64, help="the fixed width (also μP's base width)")
    p.add_argument("--depths", default="2,4,8,16", help="the first is the base depth")
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--log2-lrs", default="-11:-4:1", help="the power-of-2 grid (half steps are added around each best)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--longer", type=int, metavar="STEPS", help="after the sweep: train the base and deepest depth "
                   "STEPS steps at the transferred LR (seed 0), added to the results JSON")
    args = p.parse_args(argv)
    names = grid_cli.chosen(p, args, list(DEPTH_VARIANTS))
    s = settings(args)
    out, stem, storage = grid_cli.output(args, STEM)
    if args.longer:
        longer_check(names, s, args.head_dim, args.longer, args.device, out / f"{stem}.json")
        return 0
    data, results, total, start = None, {}, 0.0, time.perf_counter()
    for name in names:
        parametrization, _ = DEPTH_VARIANTS[name]
        per_depth, studies = {}, {}
        for depth in s["depths"]:
            spec = spec_for(name, depth, s, args.head_dim)
            if data is None:
                data = spec.load_data()
            study = sw.open_study(f"{name}/L{depth}", storage, spec.stamp(data))
            points = sw.grid_points([s["width"]], s["log2_lrs"], [parametrization], s["seeds"])
            todo = sw.missing_points(study, points)
            if args.estimate_only:
                est = sw.estimate_seconds(spec, todo, data, args.device) if todo else {"total_seconds": 0.0}
                extra = 2 * s["seeds"] * est["total_seconds"] / max(1, len(todo)) if s["half_steps"] else 0.0
                total += est["total_seconds"] + extra
                print(f"{name} L={depth}: {len(todo)} of {len(points)} points left (+ half steps), about "
                      f"{(est['total_seconds'] + extra) / 60:.1f} min", flush=True)
                continue
            if not args.report_only:
                if todo:
                    print(f"{name} L={depth}: {len(todo)} of {len(points)} points left", flush=True)
                    sw.run_grid(study, spec, points, data, args.device, progress=True)
                best = optimum(study, parametrization)
                if s["half_steps"] and best and best["log2_lr"] is not None:
                    half = [best["log2_lr"] - 0.5, best["log2_lr"] + 0.5]
                    refine = sw.grid_points([s["width"]], half, [parametrization], s["seeds"])
                    if sw.missing_points(study, refine):
                        print(f"{name} L={depth}: half steps {half}", flush=True)
                        sw.run_grid(study, spec, refine, data, args.device, progress=True)
            per_depth[depth] = optimum(study, parametrization)
            studies[depth] = (study, spec)
        if args.estimate_only or any(v is None for v in per_depth.values()):
            continue
        transferred = per_depth[min(per_depth)]["log2_lr"]
        for depth, (study, spec) in studies.items():  # the base depth's LR may be a half step the others lack
            missing = sw.missing_points(study, sw.grid_points([s["width"]], [transferred], [parametrization],
                                                              s["seeds"])) if transferred is not None else []
            if missing and not args.report_only:
                print(f"{name} L={depth}: the transferred LR 2^{transferred:g}", flush=True)
                sw.run_grid(study, spec, missing, data, args.device, progress=True)
                per_depth[depth] = optimum(study, parametrization)
        results[name] = summarize(name, per_depth)
    if args.estimate_only:
        print(f"total: about {total / 60:.0f} min")
        return 0
    summary = {"benchmark": "benchmarks/depth_transfer.py" + (" --quick" if args.quick else ""), "settings": s,
               "head_dim": args.head_dim, "goal": f"CompleteP drift <= {GOAL_DRIFT} (log2) across the depths, and "
               "the loss at the base depth's LR never rising with depth",
               "seconds_this_run": round(time.perf_counter() - start, 1), "results": results,
               "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    previous = json.loads((out / f"{stem}.json").read_text()) if (out / f"{stem}.json").exists() else {}
    if "longer" in previous:  # a --longer check outlives a new report
        summary["longer"] = previous["longer"]
    (out / f"{stem}.json").write_text(json.dumps(_json_safe(summary), indent=1))
    (out / f"{stem}.md").write_text(table_markdown(results, s["depths"]))
    if results:
        plot(results, out / f"{stem}.png")
    print(table_markdown(results, s["depths"]))
    print(f"wrote {out / stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
