"""What does a proxy search cost, and how good is the point it transfers? Today's full-length TPE search against random
search and the multi-fidelity search (TPE with successive halving), over several search seeds, each winner
pretrained at the target's shape.

Usage:
    python benchmarks/search_cost.py --arch gpt2 --preset hour   # about 2 hours on 2 cores; kill and rerun to resume
    python benchmarks/search_cost.py --arch bert --preset tiny   # about 25 minutes
    python benchmarks/search_cost.py --quick                     # the same stages at toy sizes: a minute

For each method and search seed (`--seeds`, 3):
1. search: the pipeline preset's proxy search (`Preset.search_trials` trials of `search_steps` steps, Tensor
   Programs V's space, the pipeline's proxy and data), as one Optuna study:
   - "tpe": today's search, every trial trained to the end (`hf-mup sweep --mode tune`, the pipeline's search);
   - "random": the same with random sampling;
   - "asha": TPE with successive halving (`--pruner asha`, reduction factor 3): a trial reports its validation
     loss every `steps // 9` steps and continues past steps/9 and steps/3 only while in the best third of the
     trials that reached that step (compared at equal steps, hence equal tokens; nothing stopped before steps/9);
   - "asha_guarded": the same with the minimum resource at steps/3 (`--min-steps`), where comparing early no longer
     favours high LRs as much (the curves below measure it);
   - "sha": TPE with synchronous successive halving (`--pruner sha`, `hf_mup.lab.halving`): every trial trains to
     steps/9, the best third go on from their checkpoints to steps/3, the best third of those to the end (24
     trials: 24, 8, 3), a rung decided only once every trial has reached it. TPE learns from the first rung's
     losses only (no trial is complete before the last rung).
   - "sha_b2": the same in 2 brackets of 12 trials (12, 4, 2 each), one after the other: TPE samples the second
     bracket knowing the first one's full-length trials.
   - "sha_random": successive halving over the random search's 24 configurations (the same seed draws the same
     ones): what the schedule alone costs and keeps.
   The full-length searches also record their validation curves every steps/9 (not part of today's cost: counted
   apart). TPE's first 10 trials are random draws from the same seed as the random search's: tpe and random share
   them (a paired comparison; with 12 trials they often share the winner).
2. transfer: the winner copied to the target (`hf_mup.lab.transfer`, rule "copy", as the pipeline does).
3. pretrain: the target trained with it, the pipeline's "mutransfer" row (`Pipeline.pretrain_row`).
4. report: per run the search's training FLOPs as a fraction of the target's pretraining FLOPs (what `cost.json`
   reports; pruned trials count what they ran), the evaluations' FLOPs apart, the target's validation loss; per
   method their mean and spread across seeds; and from the full-length searches' curves, whether comparing trials
   early favours high learning rates: at each step, the rank correlation of the loss there with the final loss and
   the mean log2 LR of the best third there minus that of the best third at the end.
5. with `--target-seeds 3`: the target's own noise, the points of `--noise-runs` (e.g. tpe and sha seed 0)
   pretrained again with init seeds 1 and 2 (kept like the runs: a rerun only trains what is missing). A spread of the
   transferred points' losses across search seeds under this is not the search's doing.

Writes benchmarks/results/search_cost_<arch>_<preset>.{json,md,png} and search_cost_<arch>_<preset>_runs.jsonl (one
line per finished run, the resume state); the studies and target checkpoints go to out/search_cost/ (not committed).
"""
from __future__ import annotations

import argparse
import dataclasses
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
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from hf_mup.lab import sweep as sw
from hf_mup.lab.pipeline import Pipeline
from hf_mup.lab.presets import BERT_PRESETS, GPT2_PRESETS, Preset, param_count
from hf_mup.lab.search import ran, run_search, searched
from hf_mup.lab.storage import open_study
from hf_mup.lab.transfer import transfer

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parents[1] / "out" / "search_cost"
# sampler, pruner, the report interval as a fraction of the trial: the pruner's first rung (its minimum resource),
# and successive halving's brackets; the full-length searches record their curves at the first rung
METHODS = {"tpe": ("tpe", "none", 9, 1), "random": ("random", "none", 9, 1), "asha": ("tpe", "asha", 9, 1),
           "asha_guarded": ("tpe", "asha", 3, 1), "sha": ("tpe", "sha", 9, 1), "sha_b2": ("tpe", "sha", 9, 2),
           "sha_random": ("random", "sha", 9, 1)}
# the library's reduction: successive halving keeps the best third at each rung: steps/9, steps/3 (asha, sha);
# steps/3 (guarded)
REDUCTION = 3


def preset_of(arch: str, name: str, quick: bool) -> Preset:
    preset = (GPT2_PRESETS if arch == "gpt2" else BERT_PRESETS)[name]
    if quick:  # toy sizes: every stage in about a minute
        preset = dataclasses.replace(preset, name=f"{name}-quick", search_trials=5, search_steps=18, pretrain_steps=8,
                                     target=dataclasses.replace(preset.target, width=128), eval_blocks=16,
                                     train_chars=200_000)
    return preset


def search(pipe: Pipeline, method: str, seed: int, storage: str) -> object:
    """Run (or finish) the search `method` with `seed`; returns its study."""
    p = pipe.preset
    tok, train, val = pipe.data()
    spec = sw.SweepSpec("tune", p.proxy_recipe(len(tok)), pipe.corpus(), p.log2_lr_range, name=p.name)
    study = open_study(f"{method}_s{seed}", storage, spec.stamp((train, val)))
    sampler, pruner, rungs, brackets = METHODS[method]
    every = max(1, p.search_steps // rungs)
    study.sampler = sw.make_sampler(sampler, seed, len(study.trials))
    run_search(study, spec, p.search_trials, (train, val), pruner, every, pipe.out / f"{method}_s{seed}_checkpoints",
               progress=False, eval_every=every, brackets=brackets)
    return study


def curves(study) -> list[dict]:
    """Each configuration's validation curve (successive halving's legs joined), its last state and value."""
    legs = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for t in searched(study):
        losses, leg = {}, t
        while leg is not None:
            losses.update({int(k): v for k, v in leg.intermediate_values.items()})
            leg = legs.get(leg.user_attrs.get("resumes", -1))
        out.append({"log2_lr": t.params["log2_lr"], "state": t.state.name, "final": t.value,
                    "losses": dict(sorted(losses.items()))})
    return out


def run(pipe: Pipeline, method: str, seed: int, storage: str) -> dict:
    """One search, its transfer and its target's pretraining; the line the runs' log keeps."""
    from optuna.trial import TrialState

    p = pipe.preset
    start = time.time()
    study = search(pipe, method, seed, storage)
    searched_s = time.time() - start
    result = transfer(study, pipe.target_config(), target_tokens=pipe.pretrain_tokens(), batch_size=p.pretrain_batch,
                      allow_depth_change=True, rule="copy")
    legs = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and ran(t)]  # a trial, or a leg of one between two rungs (sha)
    trials = searched(study)
    proxy_n = trials[0].user_attrs["n_params"]
    val_tokens = p.eval_blocks * p.seq_len
    # an evaluation is a forward pass (2 FLOPs per parameter and token) over the validation blocks; the final one is
    # today's too, the intermediate ones (reports to the pruner, or the curves recorded here) are not. A leg of
    # successive halving evaluates once, at its rung: that is its report.
    final_eval = 2.0 * proxy_n * val_tokens * (len(legs) if METHODS[method][1] == "sha" else len(trials))
    reports = 0.0 if METHODS[method][1] == "sha" else 2.0 * proxy_n * val_tokens * sum(
        len(t.intermediate_values) for t in trials)
    target_flops = result.cost["target_flops"]
    # one folder per transferred recipe: two searches with the same winner share its pretraining
    key = hashlib.sha1(json.dumps(result.recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    row = pipe.pretrain_row(f"target_{key}", result.recipe)
    winner = result.source
    return {
        "method": method, "seed": seed, "trials": len(trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "steps_run": sum(t.user_attrs["steps_run"] for t in legs),
        "train_flops": result.cost["tuning_flops"], "target_flops": target_flops,
        "fraction": result.cost["fraction"], "final_eval_fraction": final_eval / target_flops,
        "report_eval_fraction": reports / target_flops,
        "winner": {"trial": winner["trial"], "proxy_val_loss": winner["val_loss"], "log2_lr": winner["log2_lr"],
                   "margin": winner.get("margin"), "mup": dict(result.recipe.mup),
                   "initializer_range": result.recipe.initializer_range},
        "target_loss": row["eval_loss"], "search_seconds": round(searched_s, 1),
        "seconds": round(time.time() - start, 1),
        "curves": curves(study),
    }


def target_noise(pipe: Pipeline, run_: dict, seeds: int, storage: str) -> dict:
    """The target's own noise: the point `run_` transferred, pretrained again with init seeds 1 … `seeds`-1 (the
    data order stays the pipeline's); its losses beside the search seeds' spread say whether that spread is signal."""
    from hf_mup.lab.storage import load_study

    p = pipe.preset
    study = load_study(f"{run_['method']}_s{run_['seed']}", storage)
    result = transfer(study, pipe.target_config(), target_tokens=pipe.pretrain_tokens(), batch_size=p.pretrain_batch,
                      allow_depth_change=True, rule="copy")
    key = hashlib.sha1(json.dumps(result.recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    losses = [run_["target_loss"]] + [pipe.pretrain_row(f"target_{key}_seed{s}", result.recipe.replace(seed=s))[
        "eval_loss"] for s in range(1, seeds)]
    return {"method": run_["method"], "seed": run_["seed"], "target_losses": losses, "sd": statistics.stdev(losses),
            "range": max(losses) - min(losses)}


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def early_bias(runs: list[dict]) -> list[dict]:
    """From the full-length searches' curves: per step, the rank correlation of the loss there with the final loss,
    and the mean log2 LR of the best third there minus that of the best third at the end (> 0: comparing early
    favours higher LRs), each averaged over the searches."""
    per_step: dict[int, list[tuple[float, float]]] = {}
    for r in runs:
        if METHODS[r["method"]][1] != "none":
            continue
        curves = [c for c in r["curves"] if c["state"] == "COMPLETE" and c["final"] is not None
                  and math.isfinite(c["final"]) and c["final"] < 1e8]
        k = max(1, len(curves) // REDUCTION)
        best_end = sorted(curves, key=lambda c: c["final"])[:k]
        steps = sorted({s for c in curves for s in c["losses"]})
        for s in steps:
            at = [c for c in curves if s in c["losses"]]
            if len(at) < 4:
                continue
            rho = spearman([c["losses"][s] for c in at], [c["final"] for c in at])
            best_s = sorted(at, key=lambda c: c["losses"][s])[:k]
            bias = statistics.fmean(c["log2_lr"] for c in best_s) - statistics.fmean(c["log2_lr"] for c in best_end)
            per_step.setdefault(s, []).append((rho, bias))
    return [{"step": s, "spearman": statistics.fmean(v[0] for v in vals), "lr_bias": statistics.fmean(v[1] for v in vals),
             "searches": len(vals)} for s, vals in sorted(per_step.items())]


def transferred_points(runs: list[dict]) -> list[dict]:
    """The distinct points the runs transferred: their hyperparameters (`hp`), the search's proxy loss and the
    target's loss (of the last run that transferred the point), the runs that chose it."""
    out: dict[str, dict] = {}
    for r in runs:
        w = r["winner"]
        hp = {"log2_lr": w["log2_lr"], "initializer_range": w["initializer_range"], **w["mup"]}
        key = json.dumps(hp, sort_keys=True)
        point = out.setdefault(key, {"key": key, "hp": hp, "runs": []})
        point.update(proxy=w["proxy_val_loss"], target=r["target_loss"])
        point["runs"].append(f"{r['method']} s{r['seed']}")
    return list(out.values())


def proxy_predicts_target(runs: list[dict]) -> dict:
    """Over the distinct transferred points: the rank correlation of the winner's proxy loss with its target loss
    (does a better proxy winner make a better target?)."""
    points = transferred_points(runs)
    xs, ys = [p["proxy"] for p in points], [p["target"] for p in points]
    return {"points": len(points), "spearman": spearman(xs, ys) if len(points) > 2 else None}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        loss = [r["target_loss"] for r in rs]
        frac = [r["fraction"] for r in rs]
        out[method] = {
            "seeds": len(rs), "fraction_mean": statistics.fmean(frac),
            "fraction_with_evals_mean": statistics.fmean(  # a pruned search's reports are its cost; curves are not
                r["fraction"] + r["final_eval_fraction"] + r["report_eval_fraction"] * (METHODS[method][1] != "none")
                for r in rs),
            "target_loss_mean": statistics.fmean(loss), "target_loss_sd": statistics.stdev(loss) if len(rs) > 1 else 0.0,
            "target_loss_range": max(loss) - min(loss), "winner_log2_lr_mean": statistics.fmean(
                r["winner"]["log2_lr"] for r in rs), "pruned_mean": statistics.fmean(r["pruned"] for r in rs),
        }
    return out


def table(summary: dict, runs: list[dict], bias: list[dict], steps: int) -> str:
    lines = ["| search | seeds | search FLOPs / target's (training) | with evaluations | target val loss, mean ± sd "
             "(range) | winners' mean log2 LR | pruned trials |", "|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['seeds']} | {100 * s['fraction_mean']:.2f}% | {100 * s['fraction_with_evals_mean']:.2f}% "
                     f"| {s['target_loss_mean']:.4f} ± {s['target_loss_sd']:.4f} ({s['target_loss_range']:.4f}) "
                     f"| {s['winner_log2_lr_mean']:.2f} | {s['pruned_mean']:.1f} |")
    lines += ["", "| search | seed | fraction | winner (trial, proxy val loss, log2 LR) | target val loss |",
              "|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (list(METHODS).index(r["method"]), r["seed"])):
        w = r["winner"]
        lines.append(f"| {r['method']} | {r['seed']} | {100 * r['fraction']:.2f}% | {w['trial']}, "
                     f"{w['proxy_val_loss']:.4f}, {w['log2_lr']:.2f} | {r['target_loss']:.4f} |")
    if bias:
        lines += ["", "Comparing early (the full-length searches' curves, averaged over searches):", "",
                  "| step | of the trial | rank correlation with the final loss | best third's log2 LR − the final "
                  "best third's |", "|---|---|---|---|"]
        lines += [f"| {b['step']} | {b['step'] / steps:.2f} | {b['spearman']:.2f} | {b['lr_bias']:+.2f} |" for b in bias]
    return "\n".join(lines)


def plot(summary: dict, runs: list[dict], bias: list[dict], steps: int, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for i, m in enumerate(summary):
        rs = [r for r in runs if r["method"] == m]
        color = f"C{i}"
        ax.scatter([100 * r["fraction"] for r in rs], [r["target_loss"] for r in rs], color=color, alpha=0.5, s=20)
        s = summary[m]
        ax.errorbar(100 * s["fraction_mean"], s["target_loss_mean"], yerr=s["target_loss_sd"], color=color, fmt="o",
                    ms=8, capsize=4, label=f"{m} (mean ± sd over {s['seeds']} seeds)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    ax.set_xlabel("search FLOPs, % of the target's pretraining")
    ax.set_ylabel("target validation loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax = axes[1]
    if bias:
        x = [b["step"] / steps for b in bias]
        ax.plot(x, [b["spearman"] for b in bias], "o-", label="rank correlation with the final loss")
        ax.plot(x, [b["lr_bias"] for b in bias], "s--", label="best third's log2 LR − final best third's")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("fraction of the trial trained")
        ax.set_title("comparing trials early (full-length searches)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpt2", choices=("gpt2", "bert"))
    ap.add_argument("--preset", default="hour")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {', '.join(METHODS)}")
    ap.add_argument("--quick", action="store_true", help="toy sizes, a minute")
    ap.add_argument("--target-seeds", type=int, default=1, help="pretrain the points of --noise-runs with this many "
                    "init seeds: the target's own noise")
    ap.add_argument("--noise-runs", default="tpe:0,sha:0", help="METHOD:SEED runs whose points --target-seeds uses")
    ap.add_argument("--work", default=str(WORK), help="the studies and the targets' checkpoints (not committed)")
    ap.add_argument("--out", default=str(RESULTS), help="where the results and the runs' log go")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"--methods: unknown {unknown}; use a subset of {', '.join(METHODS)}")
    preset = preset_of(args.arch, args.preset, args.quick)
    name = f"search_cost_{args.arch}_{preset.name.replace('-', '_')}"
    work = Path(args.work) / name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(preset, work, progress=False)
    storage = f"sqlite:///{(work / 'studies.db').resolve()}"
    work.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for r in runs:  # (JSON keys are strings: the steps back to ints)
        for c in r["curves"]:
            c["losses"] = {int(k): v for k, v in c["losses"].items()}
    done = {(r["method"], r["seed"]) for r in runs}
    todo = [(m, s) for s in range(args.seeds) for m in methods if (m, s) not in done]
    start = time.time()
    for i, (m, s) in enumerate(todo):
        r = run(pipe, m, s, storage)
        runs.append(r)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"[{i + 1}/{len(todo)}, {time.time() - start:.0f} s] {m} seed {s}: search {100 * r['fraction']:.2f}% "
              f"of the target ({r['pruned']}/{r['trials']} pruned, {r['search_seconds']:.0f} s), winner log2 LR "
              f"{r['winner']['log2_lr']:.2f}, target val loss {r['target_loss']:.4f} ({r['seconds']:.0f} s)", flush=True)
    noise = []
    if args.target_seeds > 1:
        for item in args.noise_runs.split(","):
            method, seed = item.split(":")
            [r] = [r for r in runs if (r["method"], r["seed"]) == (method, int(seed))]
            noise.append(target_noise(pipe, r, args.target_seeds, storage))
            print(f"target noise, {method} seed {seed}'s point: {noise[-1]['target_losses']}", flush=True)
    summary = summarize(runs)
    bias = early_bias(runs)
    plan = preset.plan()
    command = f"python benchmarks/search_cost.py --arch {args.arch} --preset {args.preset}" + (
        " --quick" if args.quick else "") + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + (
        f" --methods {args.methods}" if methods != list(METHODS) else "") + (
        f" --target-seeds {args.target_seeds} --noise-runs {args.noise_runs}" if noise else "")
    # the runs' log may hold runs of earlier commands (other seeds or methods): the report names them all
    report = out / f"{name}.json"
    before = json.loads(report.read_text()) if report.exists() else {}
    commands = before.get("commands", [before["command"]] if "command" in before else [])
    commands += [command] if command not in commands else []
    result = {"commands": commands, "preset": preset.to_dict(), "target_params": param_count(
        preset.arch, preset.target, preset.vocab_size, preset.seq_len), "plan_fraction": plan[
        "search_fraction_of_pretraining"], "methods": {m: METHODS[m] for m in summary},
        "reduction": REDUCTION, "summary": summary, "early_bias": bias, "target_noise": noise,
        "proxy_predicts_target": proxy_predicts_target(runs),
        "runs": [{k: v for k, v in r.items() if k != "curves"} for r in runs]}
    report.write_text(json.dumps(result, indent=1))
    md = table(summary, runs, bias, preset.search_steps)
    if (pt := result["proxy_predicts_target"])["spearman"] is not None:
        md += (f"\n\nThe winners' proxy val loss against their target val loss, over the {pt['points']} distinct "
               f"transferred points: rank correlation {pt['spearman']:.2f}.")
    if noise:
        rows = [f"| {n['method']} seed {n['seed']}'s | {', '.join(f'{x:.4f}' for x in n['target_losses'])} | "
                f"{n['sd']:.4f} | {n['range']:.4f} |" for n in noise]
        md += "\n".join(["", "", f"The target's own noise (one transferred point, init seeds 0 … {args.target_seeds - 1}"
                         "):", "", "| point | target val losses | sd | range |", "|---|---|---|---|", *rows])
    (out / f"{name}.md").write_text("".join(f"`{c}`\n" for c in commands) + f"\n{md}\n")
    plot(summary, runs, bias, preset.search_steps, f"{args.arch} {preset.name}: search cost against target loss",
         out / f"{name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
