"""Transfer along every axis at once: a short, narrow, shallow, small-batch proxy against a target 8× wider, 2× deeper,
with 2× the batch and 16× the tokens, whose own LR and weight-decay grids are the ground truth.

Usage:
    python benchmarks/horizon_transfer.py --workers 2   # about an hour on 2 cores; kill and rerun to resume
    python benchmarks/horizon_transfer.py --quick       # the same stages at toy sizes: minutes

Stages, each an `hf_mup.lab.sweep` grid study in benchmarks/results/horizon_transfer.db (resumable, shared by workers):
1. proxy: GPT-2 width 32, 2 layers (μP base width 32, CompleteP base depth 2, output_mult 8), WikiText-2 bytes, seq 64.
   Its LR optimum at batch sizes 8/16/32 × token horizons 1…16 × D0 (D0 = 50 steps of batch 8), and the
   weight-decay timescale's optimum (τ 0.25/1/4/16 of training) at batch 8 × 1, 4, 16 × D0; 2 seeds. `fit_horizon`
   fits η* ∝ B^a_B · D^a_D and τ* ∝ D^m with their standard errors (horizon.png, horizon_fit.json).
2. target: width 256, 4 layers, batch 16, 16 × D0 tokens (400 steps): its LR grid (2^-9…2^-3) at τ = 1, then τ
   0.25, 4 and 16 at its best LR, 2 seeds: the ground truth.
3. each rule's transfer (`hf_mup.lab.transfer` from the proxy's base cell, batch 8 and D0): copy (plain μTransfer),
   published, fitted; the target trained at each rule's LR and timescale, 2 seeds.
Reported: each rule's distance from the target's best log2 LR (parabola through the grid's best three points) and
timescale, and its loss regret against the target's best grid point. Goal: the chosen rule within 0.5 log2 and
0.5% of the best loss, never worse than copying.
Writes benchmarks/results/horizon_transfer.{json,md,png} and horizon_transfer_proxy/ (the proxy's report).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe, lm_config
from hf_mup.lab.results import _json_safe, report, trial_rows
from hf_mup.lab.scaling import curve_optimum, fit_horizon, fit_summary
from hf_mup.lab.transfer import transfer

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("copy", "published", "fitted")
GOAL = {"log2_lr_distance": 0.5, "loss_regret_frac": 0.005}


def settings(quick: bool) -> dict:
    proxy = Recipe(arch="gpt2", width=32, base_width=32, layers=2, head_dim=16, seq_len=64, vocab_size=256,
                   mup={"output_mult": 8.0, "base_num_layers": 2}, batch_size=8, steps=5 if quick else 50,
                   weight_decay_timescale=1.0)
    d0 = proxy.tokens
    if quick:
        return {"stem": "horizon_transfer_quick", "proxy": proxy, "batches": [8, 16], "tokens": [d0, 4 * d0],
                "tau_tokens": [d0, 4 * d0], "timescales": [0.25, 4.0], "lrs": [-9.0, -7.0, -5.0],
                "target_width": 64, "target_layers": 4, "target_batch": 16, "target_tokens": 4 * d0,
                "target_lrs": [-9.0, -7.0, -5.0], "seeds": 1, "train_chars": 200_000, "val_blocks": 16}
    return {"stem": "horizon_transfer", "proxy": proxy, "batches": [8, 16, 32], "tokens": [d0 * k for k in (1, 2, 4, 8, 16)],
            "tau_tokens": [d0, 4 * d0, 16 * d0], "timescales": [0.25, 4.0, 16.0], "lrs": sw.parse_log2_lrs("-10:-4:1"),
            "target_width": 256, "target_layers": 4, "target_batch": 16, "target_tokens": 16 * d0,
            "target_lrs": sw.parse_log2_lrs("-9:-3:1"), "seeds": 2, "train_chars": None, "val_blocks": 128}


def proxy_points(s: dict) -> list[dict]:
    w = s["proxy"].width
    main = sw.grid_points([w], s["lrs"], ["mup"], s["seeds"], s["batches"], s["tokens"], [1.0])
    tau = sw.grid_points([w], s["lrs"], ["mup"], s["seeds"], s["batches"][:1], s["tau_tokens"], s["timescales"])
    return main + tau


def target_points(s: dict, lrs: list[float], timescales: list[float]) -> list[dict]:
    return sw.grid_points([s["target_width"]], lrs, ["mup"], s["seeds"], [s["target_batch"]], [s["target_tokens"]],
                          timescales)


def seed_mean(rows: list[dict], log2_lr: float, tau: float) -> float | None:
    v = [r["val_loss"] for r in rows if r["state"] == "COMPLETE" and abs(r["log2_lr"] - log2_lr) < 1e-6
         and abs((r["timescale"] or 0) - tau) < 1e-9]
    return sum(v) / len(v) if v else None


def run(args: argparse.Namespace, s: dict) -> dict | None:
    out = Path(args.out)
    proxy = s["proxy"]
    corpus = Corpus(tokenizer="bytes", train_chars=s["train_chars"], val_blocks=s["val_blocks"])
    pspec = sw.SweepSpec("grid", proxy, corpus)
    data = pspec.load_data()
    storage = args.storage or f"sqlite:///{out.resolve() / (s['stem'] + '.db')}"
    pstudy = sw.open_study("proxy", storage, pspec.stamp(data), heartbeat=10)
    pstudy.sampler = sw.optuna.samplers.RandomSampler()  # grid points are fixed: nothing to sample
    log = (lambda st: None) if args.worker else (lambda st: print(trial_line_short(st), flush=True))

    # 1. the proxy's horizon grid
    points = proxy_points(s)
    print(f"proxy: {len(points)} points, {len(sw.missing_points(pstudy, points))} left", flush=True)
    sw.run_grid(pstudy, pspec, points, data, args.device, progress=False, after_trial=log)

    # 2. the target's ground truth: its LR grid at τ = 1, then τ 0.25 and 4 at its best LR
    target = proxy.replace(width=s["target_width"], layers=s["target_layers"], batch_size=s["target_batch"],
                           steps=max(1, round(s["target_tokens"] / (s["target_batch"] * proxy.seq_len))))
    tspec = sw.SweepSpec("grid", target, corpus)
    tstudy = sw.open_study("target", storage, tspec.stamp(data), heartbeat=10)
    tstudy.sampler = sw.optuna.samplers.RandomSampler()
    grid = target_points(s, s["target_lrs"], [1.0])
    print(f"target LR grid: {len(grid)} points, {len(sw.missing_points(tstudy, grid))} left", flush=True)
    sw.run_grid(tstudy, tspec, grid, data, args.device, progress=False, after_trial=log)
    rows = [r for r in trial_rows(tstudy) if (r["batch_size"], r["token_horizon"]) == (target.batch_size, target.tokens)]
    curve = {x: [r["val_loss"] for r in rows if r["state"] == "COMPLETE" and r["log2_lr"] == x
                 and r["timescale"] == 1.0] for x in s["target_lrs"]}
    lr_opt = curve_optimum(curve)
    wd = target_points(s, [lr_opt["grid_x"]], s["timescales"])
    sw.run_grid(tstudy, tspec, wd, data, args.device, progress=False, after_trial=log)
    # 2b. the target's shape at the proxy's batch and tokens: how much of the move is width and depth alone
    shape = sw.grid_points([s["target_width"]], s["lrs"], ["mup"], s["seeds"], [proxy.batch_size], [proxy.tokens],
                           [1.0])
    sw.run_grid(tstudy, tspec, shape, data, args.device, progress=False, after_trial=log)

    # 3. the rules' transfers, and the target trained at each
    rows = trial_rows(pstudy)
    fit = fit_horizon(rows, "val_loss")
    config = lm_config("gpt2", target.width, target.layers, target.head_dim, target.seq_len, target.vocab_size)
    transfers = {rule: transfer(pstudy, config, target_tokens=target.tokens, batch_size=target.batch_size, rule=rule,
                                fit=fit, allow_extrapolation=True) for rule in RULES}
    rule_points = []
    for t in transfers.values():
        rule_points += target_points(s, [round(math.log2(t.recipe.lr), 4)], [round(t.recipe.timescale, 4)])
    sw.run_grid(tstudy, tspec, rule_points, data, args.device, progress=False, after_trial=log)
    if args.worker:
        return None
    return summarize(s, out, pstudy, tstudy, fit, transfers, lr_opt)


def trial_line_short(study) -> str:
    from hf_mup.lab.results import trial_line

    return f"[{study.study_name}] {trial_line(study)}"


def held_out_horizon(s: dict, pstudy) -> dict:
    """The batch and token axes alone, at the proxy's width: fit on every token horizon but the longest, then predict
    the longest one's optimum at each batch size from the proxy's base cell, by each rule (log2 distances)."""
    rows = [r for r in trial_rows(pstudy) if r["state"] == "COMPLETE" and r["timescale"] == 1.0]
    longest = max(r["token_horizon"] for r in rows)
    fit = fit_horizon([r for r in rows if r["token_horizon"] < longest], "val_loss")
    cells = {(c["batch_size"], c["tokens"]): c for c in fit_horizon(rows, "val_loss")["cells"]}
    b0, d0 = s["proxy"].batch_size, s["proxy"].tokens
    base = cells[(b0, d0)]["grid_log2_lr"]  # where transfer starts: the base cell's best grid point
    rules = {"copy": (0.0, 0.0), "published": (0.5, -0.32),
             "fitted": (fit["lr"]["batch_exponent"] or 0.0, fit["lr"]["tokens_exponent"] or 0.0)}
    out: dict = {"fit_without_longest": fit_summary(fit), "longest_tokens": longest, "by_batch": {}}
    for b in s["batches"]:
        actual = cells[(b, longest)]["log2_lr"]
        out["by_batch"][b] = {"optimum": actual, **{
            rule: abs(base + a_b * math.log2(b / b0) + a_d * math.log2(longest / d0) - actual)
            for rule, (a_b, a_d) in rules.items()}}
    return out


def summarize(s: dict, out: Path, pstudy, tstudy, fit: dict, transfers: dict, lr_opt: dict) -> dict:
    prep = report(pstudy, out / f"{s['stem']}_proxy", metric="val_loss")
    every = [r for r in trial_rows(tstudy) if r["state"] == "COMPLETE"]
    at_target = (s["target_batch"], s["target_tokens"])  # the ground truth; stage 2b's short runs apart
    rows = done = [r for r in every if (r["batch_size"], r["token_horizon"]) == at_target]
    taus = sorted({r["timescale"] for r in done if abs(r["log2_lr"] - lr_opt["grid_x"]) < 1e-6})
    tau_curve = {math.log2(t): [seed_mean(rows, lr_opt["grid_x"], t)] for t in taus}
    tau_opt = curve_optimum(tau_curve)
    grid_best = min((seed_mean(rows, r["log2_lr"], r["timescale"]), r["log2_lr"], r["timescale"])
                    for r in done if r["log2_lr"] in s["target_lrs"] or abs(r["log2_lr"] - lr_opt["grid_x"]) < 1e-6)
    best_loss = grid_best[0]
    table = {}
    for rule, t in transfers.items():
        x, tau = round(math.log2(t.recipe.lr), 4), round(t.recipe.timescale, 4)
        loss = seed_mean(rows, x, tau)
        regret = None if loss is None else (loss - best_loss) / best_loss
        table[rule] = {"log2_lr": x, "timescale": tau, "val_loss": loss, "log2_lr_distance": abs(x - lr_opt["x"]),
                       "log2_timescale_distance": None if tau_opt["x"] is None else abs(math.log2(tau) - tau_opt["x"]),
                       "regret": None if loss is None else loss - best_loss, "regret_frac": regret,
                       "meets_goal": abs(x - lr_opt["x"]) <= GOAL["log2_lr_distance"] and regret is not None
                       and regret <= GOAL["loss_regret_frac"], "moves": t.source["moves"], "notes": list(t.notes)}
    for row in table.values():
        row["not_worse_than_copy"] = row["val_loss"] is not None and row["val_loss"] <= table["copy"]["val_loss"] + 1e-9
    lr_curve = {f"{x:g}": seed_mean(rows, x, 1.0) for x in s["target_lrs"]}
    short = {x: [r["val_loss"] for r in every if r["log2_lr"] == x and r["batch_size"] == s["proxy"].batch_size
                 and r["token_horizon"] == s["proxy"].tokens] for x in s["lrs"]}
    shape_only = curve_optimum({x: v for x, v in short.items() if v})
    proxy_cell = next((c for c in fit["cells"] if (c["batch_size"], c["tokens"], c["timescale"]) == (*at_target, 1.0)),
                      None)
    target = Recipe.from_dict(tstudy.user_attrs["spec"]["recipe"])
    optimum = {"log2_lr": lr_opt["x"], "grid_log2_lr": lr_opt["grid_x"], "lr_at_edge": lr_opt["at_edge"],
               "log2_timescale": tau_opt["x"], "timescale_at_edge": tau_opt["at_edge"], "best_grid_loss": best_loss,
               "best_grid_point": {"log2_lr": grid_best[1], "timescale": grid_best[2]}, "lr_curve": lr_curve,
               "timescale_curve": {f"{2 ** k:g}": v[0] for k, v in sorted(tau_curve.items())},
               # the decomposition: width and depth alone (the target's shape at the proxy's batch and tokens), and
               # batch and tokens alone (the proxy's cell at the target's batch and tokens)
               "shape_only_log2_lr": shape_only["x"], "shape_only_at_edge": shape_only["at_edge"],
               "proxy_at_target_batch_tokens_log2_lr": proxy_cell and proxy_cell["log2_lr"],
               "proxy_base_log2_lr": min((c for c in fit["cells"] if c["timescale"] == 1.0),
                                         key=lambda c: (c["batch_size"], c["tokens"]))["log2_lr"]}
    result = {"benchmark": "benchmarks/horizon_transfer.py" + (" --quick" if "quick" in s["stem"] else ""),
              "proxy": s["proxy"].to_dict(), "target": target.to_dict(),
              "ratios": {"width": target.width / s["proxy"].width, "depth": target.layers / s["proxy"].layers,
                         "batch": target.batch_size / s["proxy"].batch_size, "tokens": target.tokens / s["proxy"].tokens},
              "fit": {k: fit[k] for k in ("lr", "timescale", "width", "metric", "cells")},
              "target_optimum": optimum, "rules": table, "goal": GOAL, "proxy_counts": prep["counts"],
              "held_out_horizon": held_out_horizon(s, pstudy),
              "threads": torch.get_num_threads(),
              "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    (out / f"{s['stem']}.json").write_text(json.dumps(_json_safe(result), indent=1, ensure_ascii=False))
    (out / f"{s['stem']}.md").write_text(markdown(result))
    plot(result, out / f"{s['stem']}.png")
    return result


def markdown(r: dict) -> str:
    t = r["target_optimum"]
    lines = [f"Target {r['ratios']['width']:g}× wider, {r['ratios']['depth']:g}× deeper, {r['ratios']['batch']:g}× the "
             f"batch, {r['ratios']['tokens']:g}× the tokens of the proxy. Its best log2 LR {t['log2_lr']:.2f} "
             f"(grid {t['grid_log2_lr']:g})" + (f", best timescale 2^{t['log2_timescale']:.2f}"
                                                 if t["log2_timescale"] is not None else "") + ".", "",
             f"Fitted on the proxy: {fit_summary(r['fit'])}. Published: η ∝ B^+0.50 · D^-0.32, τ ∝ TPP^-0.53.", "",
             "| rule | log2 LR | distance (log2) | timescale | val loss (seed mean) | regret | goal met |",
             "|---|---|---|---|---|---|---|"]
    for rule, row in r["rules"].items():
        lines.append(f"| {rule} | {row['log2_lr']:.2f} | {row['log2_lr_distance']:.2f} | {row['timescale']:.3g} | "
                     + (f"{row['val_loss']:.4f} | {100 * row['regret_frac']:+.2f}% | " if row["val_loss"] is not None
                        else "– | – | ") + ("yes" if row["meets_goal"] else "no") + " |")
    lines.append(f"\nBest target grid point: val loss {t['best_grid_loss']:.4f}.")
    h = r.get("held_out_horizon")
    if h:
        lines += ["", "Batch and tokens alone, at the proxy's width: fitted without the longest horizon "
                  f"({h['longest_tokens']:,} tokens; {h['fit_without_longest']}), each rule's distance (log2) from "
                  "that horizon's optimum:", "",
                  "| batch | optimum | copy | published | fitted |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {v['optimum']:.2f} | {v['copy']:.2f} | {v['published']:.2f} | {v['fitted']:.2f} |"
                  for b, v in h["by_batch"].items()]
    if t.get("shape_only_log2_lr") is not None:
        lines.append(f"\nWhere the optimum moved (log2 LR, parabola vertices): the proxy {t['proxy_base_log2_lr']:.2f}; "
                     f"the proxy at the target's batch and tokens {t['proxy_at_target_batch_tokens_log2_lr']:.2f} "
                     f"(batch and tokens alone); the target's shape at the proxy's batch and tokens "
                     f"{t['shape_only_log2_lr']:.2f}{' (at the grid edge)' if t['shape_only_at_edge'] else ''} "
                     f"(width and depth alone); the target {t['log2_lr']:.2f}.")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    t = r["target_optimum"]
    xs = [(float(x), v) for x, v in t["lr_curve"].items() if v is not None]
    axes[0].plot(*zip(*xs), "o-", color="black", label="target's LR grid (τ = 1)")
    for i, (rule, row) in enumerate(r["rules"].items()):
        if row["val_loss"] is not None:
            axes[0].plot(row["log2_lr"], row["val_loss"], "*", ms=14, color=f"C{i}", markeredgecolor="black",
                         label=f"{rule} (τ {row['timescale']:.2g}): {100 * row['regret_frac']:+.2f}%")
    axes[0].axvline(t["log2_lr"], color="gray", ls=":", lw=1)
    axes[0].set_xlabel("log2 learning rate")
    axes[0].set_ylabel("target validation loss (seed mean)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    ts = [(math.log2(float(k)), v) for k, v in t["timescale_curve"].items() if v is not None]
    if ts:
        axes[1].plot(*zip(*sorted(ts)), "o-", color="black", label=f"target at log2 LR {t['grid_log2_lr']:g}")
    for i, (rule, row) in enumerate(r["rules"].items()):
        axes[1].axvline(math.log2(row["timescale"]), color=f"C{i}", ls="--", label=rule)
    axes[1].set_xlabel("log2 weight-decay timescale (fraction of training)")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    ra = r["ratios"]
    fig.suptitle(f"Proxy → target {ra['width']:g}× wider, {ra['depth']:g}× deeper, {ra['batch']:g}× batch, "
                 f"{ra['tokens']:g}× tokens: where each rule lands", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: shows every stage works, in minutes")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the grids (one torch thread each)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--storage", help="an RDB URL instead of the SQLite file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers > 1 or args.worker:
        torch.set_num_threads(1)
    s = settings(args.quick)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    helpers = [] if args.worker else [
        subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker"])
        for _ in range(args.workers - 1)]
    start = time.perf_counter()
    result = run(args, s)
    for h in helpers:
        h.wait()
    if result is not None:
        print(markdown(result))
        print(f"{time.perf_counter() - start:.0f} s; wrote {Path(args.out) / s['stem']}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
