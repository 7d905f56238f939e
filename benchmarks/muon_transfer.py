"""Does the learning rate transfer across width with Muon? Figure 1 of Tensor Programs V with Muon (hf_mup.MuonAdamW:
Muon on the hidden matrices, AdamW on the rest), with and without μP's Muon factor, beside AdamW in μP.

Usage:
    python benchmarks/muon_transfer.py --workers 2     # about an hour on 2 idle cores per seed; kill and rerun to resume
    python benchmarks/muon_transfer.py --spectral      # the update's spectral norm against width: a minute
    python benchmarks/muon_transfer.py --quick         # 2 widths, 2 LRs, 10 steps: a minute

The setup of benchmarks/lr_transfer.py: GPT-2, 2 layers, head size 16, seq 64, WikiText-2 as bytes, widths 64…512
(8×), μP with base width 64 and output_mult 8, 150 steps of batch 16 (warmup 10%, cosine to 10%), no weight decay;
one grid study per row (log2 LR -11 to -4; the μP row also at -6.5, -5.5, -4.5), in
benchmarks/results/muon_transfer.db:
- "muon": μP with MuonAdamW, torch's adjust_lr_fn "match_rms_adamw" (Moonlight's: one LR for both parts) and μP's
  factor on Muon's groups (1/√m here: `hf_mup.rules.TensorRule.muon_lr_mult`);
- "muon_torch": the same without μP's factor (Muon's LR as torch scales it, which grows the update as √m);
- "adamw": AdamW in μP. This is Figure 1's μP row: unless `--rows` names it, it is read from the committed run of
  benchmarks/lr_transfer.py (benchmarks/results/lr_transfer.json: the same spec and data, checked field by field;
  2 seeds, with half steps around its optimum) instead of being trained again.
Each row's optimum is the grid LR with the lowest seed-mean training loss per width; its drift is the spread of
those optima over the widths (goal for "muon": ≤ 0.5 log2). The losses at each row's best LR show whether Muon wins
at equal tokens. Writes benchmarks/results/muon_transfer.{json,md,png} (the quick run: muon_transfer_quick.*); the
json holds every trial, the study (muon_transfer.db) only the resume state.

`--spectral`: the spectral norm of the first update of each hidden matrix (block 0, same model, same batch, LR 2^-6,
3 seeds) at widths 64…1024, per row: flat under μP's factor, growing as √m without it; writes muon_spectral.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.results import lr_optima, plot_width_curves, trial_rows

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {"muon": "Muon, μP's factor", "muon_torch": "Muon, torch's LR (no factor)", "adamw": "AdamW, μP"}
GOAL_DRIFT = 0.5
FIGURE1 = RESULTS / "lr_transfer.json"


def settings(quick: bool, seeds: int) -> dict:
    if quick:
        return {"stem": "muon_transfer_quick", "widths": [64, 128], "log2_lrs": [-8.0, -6.0], "seeds": 1,
                "steps": 10, "train_chars": 100_000, "val_blocks": 16}
    # half steps around the μP row's optimum (2^-5 to 2^-6 at every width with seed 0), as Figure 1 has around AdamW's
    return {"stem": "muon_transfer", "widths": [64, 128, 256, 512], "log2_lrs": sw.parse_log2_lrs("-11:-4:1"),
            "half_steps": {"muon": [-6.5, -5.5, -4.5]}, "seeds": seeds, "steps": 150, "train_chars": None,
            "val_blocks": 128}


def spec_of(s: dict, optimizer: str) -> sw.SweepSpec:
    recipe = Recipe(arch="gpt2", width=s["widths"][0], layers=2, head_dim=16, seq_len=64, vocab_size=256,
                    base_width=64, mup={"output_mult": 8.0}, optimizer=optimizer, steps=s["steps"], batch_size=16)
    return sw.SweepSpec("grid", recipe, Corpus(tokenizer="bytes", train_chars=s["train_chars"],
                                               val_blocks=s["val_blocks"]))


def figure1_adamw(s: dict, path: Path = FIGURE1) -> dict:
    """The "adamw" row's optimum (`lr_optima`'s) from the committed Figure 1 run; refused unless that run trained the
    spec this benchmark would (every field its spec records, `data_hash` included; it predates the recipe's betas, ε
    and schedule fields, and a point retrained with today's defaults matched its loss to 6 digits)."""
    ref = json.loads(path.read_text())
    spec = spec_of(s, "adamw")
    ours = spec.stamp(spec.load_data())
    recipe = ours["recipe"]
    mine = {**ours["data"], **recipe, **{k: recipe["mup"].get(k, 1.0) for k in ("input_mult", "output_mult", "attn_mult")},
            "mode": spec.mode, "data_hash": ours["data_hash"]}
    differ = {k: (v, mine.get(k)) for k, v in ref["spec"].items() if mine.get(k) != v}
    if differ:
        raise SystemExit(f"{path} trained another spec ({differ}): rerun benchmarks/lr_transfer.py, or pass "
                         "--rows with adamw to train the row here")
    o = ref["optimum"]["train_loss"]["mup"]
    return {"optimum": {int(w): v for w, v in o["optimum"].items() if int(w) in s["widths"]}, "drift": o["drift"]}


def plot(optima: dict, s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(optima), figsize=(5.2 * len(optima), 4.3), dpi=120, sharey=True, squeeze=False)
    values = [v for o in optima.values() for w in o["optimum"].values() for v in w["curve"].values() if v is not None]
    for ax, (row, o) in zip(axes[0], optima.items()):
        plot_width_curves(ax, o["optimum"], s["widths"], plt.get_cmap("viridis"))
        ax.set_title(f"{ROWS[row]}: drift {o['drift']:g}" if o["drift"] is not None else ROWS[row], fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    low = min(values)
    axes[0][0].set_ylim(low - 0.05, min(max(values), low + 1.5) + 0.05)
    axes[0][0].set_ylabel("training loss (seed mean)")
    fig.suptitle(f"GPT-2, 2 layers, WikiText-2 bytes, {s['steps']} steps of batch 16, μP base width 64; "
                 "★ = best LR per width", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def spectral(out: Path, widths: tuple[int, ...] = (64, 128, 256, 512, 1024), seeds: int = 3) -> dict:
    """The spectral norm of each hidden matrix's first update, per row and width (mean over seeds)."""

    data = spec_of(settings(False, 1), "muon").load_data()[0]
    norms: dict[str, dict[int, dict[str, float]]] = {row: {} for row in ROWS}
    for row in ROWS:
        for width in widths:
            acc: dict[str, list[float]] = {}
            for seed in range(seeds):
                recipe = spec_of(settings(False, 1), row).recipe.replace(width=width, lr=2.0**-6, seed=seed)
                model = recipe.build_model()
                opt = recipe.build_optimizer(model)
                before = {n: p.detach().clone() for n, p in model.named_parameters() if ".h.0." in n and p.ndim == 2}
                batch = data[seed * 16:(seed + 1) * 16]
                model(input_ids=batch, labels=batch).loss.backward()
                opt.step()
                for n, p in model.named_parameters():
                    if n in before:
                        short = n.split(".h.0.")[1].removesuffix(".weight")
                        acc.setdefault(short, []).append(torch.linalg.matrix_norm(p.detach() - before[n], ord=2).item())
            norms[row][width] = {k: sum(v) / len(v) for k, v in acc.items()}
            print(f"{row} width {width}: " + ", ".join(f"{k} {v:.4f}" for k, v in norms[row][width].items()), flush=True)
    slopes = {}
    for row, by_width in norms.items():
        ws = sorted(by_width)
        slopes[row] = {k: (math.log(by_width[ws[-1]][k]) - math.log(by_width[ws[0]][k])) / math.log(ws[-1] / ws[0])
                       for k in by_width[ws[0]]}
    result = {"command": "python benchmarks/muon_transfer.py --spectral", "lr": 2.0**-6, "seeds": seeds,
              "widths": list(widths), "norms": norms, "slope_against_width": slopes}
    (out / "muon_spectral.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ROWS), figsize=(5 * len(ROWS), 3.8), dpi=120, sharey=True)
    for ax, (row, by_width) in zip(axes, norms.items()):
        for k in next(iter(by_width.values())):
            ax.plot(widths, [by_width[w][k] for w in widths], "o-", ms=3, label=f"{k} (slope {slopes[row][k]:+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(ROWS[row], fontsize=10)
        ax.set_xlabel("width")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("spectral norm of the first update")
    fig.suptitle("GPT-2 block 0's hidden matrices, one step at LR 2^-6, μP base width 64 (mean of 3 seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "muon_spectral.png")
    plt.close(fig)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--spectral", action="store_true", help="only the update's spectral norm against width")
    p.add_argument("--seeds", type=int, default=1, help="seeds per point (rerun with more to add seeds)")
    p.add_argument("--rows", default="muon,muon_torch",
                   help=f"the rows to train, a subset of {', '.join(ROWS)} (adamw: read from Figure 1's run if not)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the grid (one torch thread each)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers > 1 or args.worker:
        torch.set_num_threads(1)
    s = settings(args.quick, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.spectral:
        spectral(out)
        return 0
    storage = f"sqlite:///{out.resolve() / (s['stem'] + '.db')}"
    rows = args.rows.split(",")
    helpers = [] if args.worker else [
        subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker"])
        for _ in range(args.workers - 1)]
    optima, seconds, completed = {}, {}, {}
    for row in rows:  # every worker walks the rows in order, sharing each row's remaining points
        spec = spec_of(s, row)
        data = spec.load_data()
        study = sw.open_study(f"{s['stem']}_{row}", storage, spec.stamp(data), heartbeat=10)
        points = sw.grid_points(s["widths"], s["log2_lrs"] + s.get("half_steps", {}).get(row, []), ["mup"], s["seeds"])
        sw.run_grid(study, spec, points, data, args.device, progress=not args.worker)
        if not args.worker:
            trials = trial_rows(study)
            optima[row] = lr_optima(trials, "train_loss")["mup"]
            seconds[row] = sum(t["seconds"] or 0 for t in trials if t["state"] == "COMPLETE")
            completed[row] = [t for t in trials if t["state"] == "COMPLETE"]
    for h in helpers:
        h.wait()
    if args.worker:
        return 0
    if "adamw" not in rows and not args.quick:
        optima["adamw"] = figure1_adamw(s)
    summary = {row: {"drift": o["drift"], "best": {w: {"log2_lr": v["log2_lr"], "train_loss": v["loss"]}
                                                   for w, v in o["optimum"].items()}} for row, o in optima.items()}
    command = "python benchmarks/muon_transfer.py" + (" --quick" if args.quick else "") + (
        f" --seeds {args.seeds}" if args.seeds != 1 else "")
    result = {"command": command, "settings": s, "rows": ROWS, "goal_drift": GOAL_DRIFT, "summary": summary,
              "optima": optima, "seconds": seconds, "trials": completed}
    (out / f"{s['stem']}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["| row | drift (log2) | " + " | ".join(f"width {w}: best log2 LR, loss" for w in s["widths"]) + " |",
             "|---|---|" + "---|" * len(s["widths"])]
    for row, o in summary.items():
        cells = [f"{b['log2_lr']:g}, {b['train_loss']:.4f}" if b["log2_lr"] is not None else "–"
                 for b in o["best"].values()]
        lines.append(f"| {ROWS[row]} | {o['drift']} | " + " | ".join(cells) + " |")
    (out / f"{s['stem']}.md").write_text(f"`{command}`\n\n" + "\n".join(lines) + "\n")
    plot(optima, s, out / f"{s['stem']}.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
