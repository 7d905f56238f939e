"""Why does the proxy's winner not rank the target? The points `search_cost.py` transferred (each with its target val
loss), trained again at the proxy's shape with other init seeds and for the target's number of steps: which proxy
ranks the targets?

Usage:
    python benchmarks/search_cost.py --arch gpt2 --preset hour           # first: the points and their target losses
    python benchmarks/proxy_fidelity.py --arch gpt2 --preset hour        # about 40 minutes on 2 cores; resumes

Variants (`--variants`, in this order):
- "steps": the proxy trained for the target's steps (`pretrain_steps`, 300 for hour) instead of the search's (150);
  the warmup and cosine schedule stretch with it, as the target's do.
- "seed1", "seed2": the search's proxy with init seeds 1 and 2 (the search ran seed 0): the proxy's own noise, and the
  3-seed mean as a proxy.
- "w128", "w256", "w256_steps": a 2x and 4x wider proxy (width 256 is Tensor Programs V's proxy width; the same base
  width, so μP scales it), for the search's steps and (w256_steps) for the target's.
- "trainer": the proxy's shape trained by the target's loop (`Pipeline.pretrain_row`: MuPTrainer, the target's steps
  and data order) instead of the search's (`hf_mup.lab.lm.train_lm`): beside "steps", whether the two loops agree.
Each variant's val loss per point goes to benchmarks/results/proxy_fidelity_<arch>_<preset>_runs.jsonl (the resume
state); the report gives each variant's rank correlation with the target's val loss, beside the search's own proxy
loss, in proxy_fidelity_<arch>_<preset>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_cost import RESULTS, WORK, preset_of, spearman, transferred_points

from hf_mup.lab import sweep as sw
from hf_mup.lab.pipeline import Pipeline

# what each variant changes in the search's proxy recipe: its init seed, its width, its steps (to the target's), the
# loop that trains it (the target's: Pipeline.pretrain_row)
VARIANTS: dict[str, dict] = {
    "steps": {"target_steps": True}, "seed1": {"seed": 1}, "seed2": {"seed": 2}, "w128": {"width": 128},
    "w256": {"width": 256}, "w256_steps": {"width": 256, "target_steps": True},
    "trainer": {"target_steps": True, "loop": "trainer"},
}


def recipe_of(spec: sw.SweepSpec, hp: dict, change: dict, target_steps: int):
    """The search's proxy recipe for `hp` (`change` {}: what the search trained), changed as a `VARIANTS` entry says."""
    r = spec.tune_recipe(hp, seed=change.get("seed", 0))
    return r.replace(width=change.get("width", r.width), steps=target_steps if change.get("target_steps") else r.steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpt2", choices=("gpt2", "bert"))
    ap.add_argument("--preset", default="hour")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {', '.join(VARIANTS)}")
    ap.add_argument("--quick", action="store_true", help="search_cost.py's toy sizes (after its --quick run)")
    ap.add_argument("--work", default=str(WORK), help="search_cost.py's work folder (its data; the 'trainer' runs)")
    ap.add_argument("--out", default=str(RESULTS), help="where search_cost.py's runs are and the results go")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"--variants: unknown {unknown}; use a subset of {', '.join(VARIANTS)}")
    preset = preset_of(args.arch, args.preset, args.quick)
    name = f"{args.arch}_{preset.name.replace('-', '_')}"
    source = Path(args.out) / f"search_cost_{name}_runs.jsonl"
    if not source.exists():
        ap.error(f"{source} is missing: run `python benchmarks/search_cost.py --arch {args.arch} --preset "
                 f"{args.preset}{' --quick' if args.quick else ''}` first (its transferred points and their target "
                 "losses are what this ranks).")
    pts = transferred_points([json.loads(line) for line in source.read_text().splitlines()])
    pipe = Pipeline(preset, Path(args.work) / f"search_cost_{name}", progress=False)
    if "trainer" in variants and preset.search_batch != preset.pretrain_batch:
        ap.error(f"--variants trainer: the target's loop trains the preset's pretraining batch ({preset.pretrain_batch}), "
                 f"the search's is {preset.search_batch}; leave 'trainer' out for this preset.")
    tok, train, val = pipe.data()
    spec = sw.SweepSpec("tune", preset.proxy_recipe(len(tok)), pipe.corpus(), preset.log2_lr_range, name=preset.name)
    log = Path(args.out) / f"proxy_fidelity_{name}_runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    have = {(d["key"], d["variant"]) for d in done}
    todo = [(v, p) for v in variants for p in pts if (p["key"], v) not in have]
    start = time.time()
    for i, (v, p) in enumerate(todo):
        recipe = recipe_of(spec, p["hp"], VARIANTS[v], preset.pretrain_steps)
        t0 = time.time()
        if VARIANTS[v].get("loop") == "trainer":  # its folder named by the whole recipe: a changed one is not reused
            key = hashlib.sha1(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
            loss = pipe.pretrain_row(f"fidelity_{key}", recipe)["eval_loss"]
            attrs = {"val_loss": loss, "diverged": not math.isfinite(loss)}
        else:
            attrs = sw.run_trial(spec, recipe, (train, val))
        line = {"key": p["key"], "variant": v, "val_loss": attrs["val_loss"], "diverged": attrs["diverged"],
                "seconds": round(time.time() - t0, 1)}
        done.append(line)
        with open(log, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"[{i + 1}/{len(todo)}, {time.time() - start:.0f} s] {v} {p['runs'][0]}: {attrs['val_loss']:.4f} "
              f"(search's proxy {p['proxy']:.4f}, target {p['target']:.4f})", flush=True)
    report(pts, done, [v for v in VARIANTS if any(d["variant"] == v for d in done)], name, Path(args.out))
    return 0


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's over the pairs whose proxy loss is finite (a diverged run has none), or None where it is undefined
    (under 3 pairs, or one side constant)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x)]
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    return spearman(xs, ys) if len(xs) > 2 and len(set(xs)) > 1 and len(set(ys)) > 1 else None


def _r(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def report(pts: list[dict], done: list[dict], variants: list[str], name: str, out: Path) -> None:
    loss = {(d["key"], d["variant"]): d["val_loss"] for d in done}
    for p in pts:
        p.update({v: loss[(p["key"], v)] for v in variants if (p["key"], v) in loss})
        seeds = [p["proxy"]] + [p[v] for v in ("seed1", "seed2") if v in p]
        if len(seeds) == 3:
            p["seed_mean"], p["seed_sd"] = statistics.fmean(seeds), statistics.stdev(seeds)
    columns = ["proxy"] + [v for v in variants] + (["seed_mean"] if all("seed_mean" in p for p in pts) else [])
    full = [c for c in columns if all(c in p for p in pts)]
    rho = {c: rank_correlation([p[c] for p in pts], [p["target"] for p in pts]) for c in full}
    sds = [p["seed_sd"] for p in pts if "seed_sd" in p]
    result = {"points": pts, "spearman_with_target": rho,
              "proxy_seed_sd_median": statistics.median(sds) if sds else None}
    (out / f"proxy_fidelity_{name}.json").write_text(json.dumps(result, indent=1))
    head = {"proxy": "search's proxy (150 steps, seed 0)", "steps": "proxy, target's steps", "seed1": "proxy seed 1",
            "seed2": "proxy seed 2", "seed_mean": "proxy, 3-seed mean", "w128": "proxy at width 128",
            "w256": "proxy at width 256", "w256_steps": "width 256, target's steps",
            "trainer": "proxy, target's steps and loop"}
    lines = ["| point (searches) | log2 LR | log2 init | " + " | ".join(head[c] for c in full) + " | target |",
             "|---|---|---|" + "---|" * (len(full) + 1)]
    for p in sorted(pts, key=lambda p: p["target"]):
        lines.append(f"| {', '.join(p['runs'])} | {p['hp']['log2_lr']:.2f} | {math.log2(p['hp']['initializer_range']):.2f}"
                     f" | " + " | ".join(f"{p[c]:.4f}" for c in full) + f" | {p['target']:.4f} |")
    lines += ["", "| proxy | rank correlation with the target's val loss |", "|---|---|"]
    lines += [f"| {head[c]} | {_r(rho[c])} |" for c in full]
    if partial := [head[c] for c in columns if c not in full and any(c in p for p in pts)]:
        lines += ["", f"Left out, not yet run for every point (rerun to finish): {', '.join(partial)}."]
    if sds:
        lines += ["", f"The proxy's own init-seed noise: median sd {statistics.median(sds):.4f} over {len(sds)} points "
                  f"(max {max(sds):.4f})."]
    md = "\n".join(lines)
    cmd = "python benchmarks/proxy_fidelity.py --arch " + name.replace("_", " --preset ", 1).replace("_quick", " --quick")
    (out / f"proxy_fidelity_{name}.md").write_text(f"`{cmd}`\n\n{md}\n")
    plot(pts, full, rho, head, out / f"proxy_fidelity_{name}.png")
    print(md)


def plot(pts: list[dict], columns: list[str], rho: dict[str, float | None], head: dict[str, str], path: Path) -> None:
    """Target loss against each proxy's loss (seed 1, seed 2 and the trainer's loop left out: the 3-seed mean and
    "steps" stand for them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in ("proxy", "seed_mean", "steps", "w128", "w256", "w256_steps") if c in columns]
    rows = (len(shown) + 2) // 3
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.3 * rows), sharey=True, squeeze=False)
    for ax, c in zip(axes.flat, shown):
        ax.scatter([p[c] for p in pts], [p["target"] for p in pts], s=18)
        ax.set_title(f"{head[c]}: rank corr. {_r(rho[c])}", fontsize=9)
        ax.set_xlabel("proxy val loss")
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("target val loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
