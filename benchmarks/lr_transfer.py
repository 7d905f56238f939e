"""Figure 1 of Tensor Programs V on a CPU: under μP the best learning rate stays put as the model widens; under SP
it drifts. GPT-2 (2 layers, head size 16, seq 64) on WikiText-2 as bytes, widths 64…512, a log2-LR grid, 2 seeds,
150 AdamW steps, μP with base width 64 and output_mult 8 (docs: "The multipliers matter at small scale").

Usage:
    python benchmarks/lr_transfer.py --estimate-only   # time a few steps per width, print the run time, exit
    python benchmarks/lr_transfer.py --workers 2       # the benchmark (hours on 2 cores); kill and rerun to resume
    python benchmarks/lr_transfer.py --quick           # 2 widths, 3 LRs, 1 seed, 20 steps: minutes
    python benchmarks/lr_transfer.py --width-1024      # add width 1024 to the same study (for a GPU)
    python benchmarks/lr_transfer.py --arch mixtral    # the same for a mixture of experts (lr_transfer_moe.*)

Writes benchmarks/results/lr_transfer.{json,csv,png} (the quick run: lr_transfer_quick.*). It is an `hf_mup.lab.sweep`
grid study in benchmarks/results/lr_transfer.db: a killed run resumes where it stopped, and `--workers N` (or the
same command in another shell, or on another machine with --storage) shares the remaining points.
Goal: the μP optimum drifts by at most 0.5 (log2) across widths; SP's drift is reported beside it. `--arch mixtral`: the
same grid for a mixture of experts (4 experts, 2 per token, router loss), widths 64…256, 100 steps.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.results import lr_optima, report, trial_rows

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_DRIFT = 0.5


def settings(args: argparse.Namespace) -> dict:
    """The grid and the spec of the full benchmark, or of the quick run."""
    if args.arch == "mixtral":  # the MoE run: 100 steps, unit LR steps, widths to 256 (512 alone: 1.3 h here)
        return {"stem": "lr_transfer_moe" + ("_quick" if args.quick else ""),
                "widths": [64, 128] if args.quick else [64, 128, 256] + ([512] if args.width_1024 else []),
                "log2_lrs": [-9.0, -7.0] if args.quick else sw.parse_log2_lrs("-11:-5:1"),
                "seeds": 1 if args.quick else 2, "steps": 20 if args.quick else 100,
                "train_chars": 200_000 if args.quick else None, "val_blocks": 32 if args.quick else 128}
    if args.quick:
        return {"stem": "lr_transfer_quick", "widths": [64, 128], "log2_lrs": [-9.0, -7.0, -5.0], "seeds": 1,
                "steps": 20, "train_chars": 200_000, "val_blocks": 32}
    widths = [64, 128, 256, 512] + ([1024] if args.width_1024 else [])
    # unit steps over -12..-5 (SP's optimum moves left with width; μP falls off a cliff above 2^-7), half steps
    # around μP's optimum (2^-8..2^-7.5 at widths 64 and 256 in a one-seed check, basin flat to ~0.005 nats)
    lrs = sw.parse_log2_lrs("-12:-5:1") + [-8.5, -7.5]
    return {"stem": "lr_transfer", "widths": widths, "log2_lrs": lrs,
            "seeds": 2, "steps": 150, "train_chars": None, "val_blocks": 128}


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 widths, 3 LRs, 1 seed, 20 steps: shows it works")
    p.add_argument("--width-1024", action="store_true", help="add width 1024 (a GPU's job; with --arch mixtral: 512)")
    p.add_argument("--arch", choices=("gpt2", "mixtral"), default="gpt2",
                   help="mixtral: the same grid for a mixture-of-experts model (4 experts, 2 per token)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the grid (one torch thread each)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: 1 with --workers > 1)")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated run time and exit")
    p.add_argument("--out", default=str(RESULTS), help="folder for the results and the study's SQLite file")
    p.add_argument("--storage", help="an RDB URL instead of the SQLite file (to share the grid between machines)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a helper process of --workers
    args = p.parse_args(argv)
    s = settings(args)
    threads = args.threads or (1 if args.workers > 1 or args.worker else None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = sw.SweepSpec("grid", Recipe(arch=args.arch, width=s["widths"][0], layers=2, head_dim=16, seq_len=64,
                                       vocab_size=256, base_width=64, mup={"output_mult": 8.0}, steps=s["steps"],
                                       batch_size=16),
                        Corpus(tokenizer="bytes", train_chars=s["train_chars"], val_blocks=s["val_blocks"]))
    data = spec.load_data()
    points = sw.grid_points(s["widths"], s["log2_lrs"], ["mup", "sp"], s["seeds"])
    storage = args.storage or f"sqlite:///{out.resolve() / (s['stem'] + '.db')}"
    study = sw.open_study(s["stem"], storage, spec.stamp(data), heartbeat=10)
    if args.worker:
        sw.run_grid(study, spec, points, data, args.device, progress=False)
        return 0

    todo = sw.missing_points(study, points)
    print(f"{len(points)} grid points, {len(todo)} left; torch threads {torch.get_num_threads()}, {args.workers} "
          f"worker(s), device {args.device}", flush=True)
    if todo:
        est = sw.estimate_seconds(spec, todo, data, args.device)
        print(f"timed: seconds per trial {est['seconds_per_trial']}; estimated run time "
              f"{duration(est['total_seconds'] / args.workers)} ({duration(est['total_seconds'])} of one process / "
              f"{args.workers} worker(s); measured trials ran up to ~20% longer than this estimate)", flush=True)
    if args.estimate_only:
        return 0
    helpers = [subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker"])
               for _ in range(args.workers - 1)]
    start = time.perf_counter()
    sw.run_grid(study, spec, points, data, args.device, progress=True,
                after_trial=lambda st: report(st, out, stem=s["stem"], plot_name=None))
    for h in helpers:
        h.wait()
    drift = {param: o["drift"] for param, o in lr_optima(trial_rows(study), "train_loss").items()}
    goal = {"mup_drift_max": GOAL_DRIFT, "met": drift.get("mup") is not None and drift["mup"] <= GOAL_DRIFT}
    result = report(study, out, stem=s["stem"], plot_name=s["stem"] + ".png", metric="train_loss",
                       extra={"benchmark": "benchmarks/lr_transfer.py" + (" --quick" if args.quick else "")
                              + (f" --arch {args.arch}" if args.arch != "gpt2" else ""),
                              "goal": goal, "threads": torch.get_num_threads(), "workers": args.workers,
                              "versions": {"torch": torch.__version__,
                                           "transformers": __import__("transformers").__version__}})
    for metric in ("train_loss", "val_loss"):
        for param, o in result["optimum"][metric].items():
            best = ", ".join(f"{w}: {v['log2_lr']:g} ({v['loss']:.3f})" for w, v in o["optimum"].items()
                             if v["log2_lr"] is not None)
            print(f"{metric:10s} {param:3s} best log2 LR by width {best}; drift {o['drift']}")
    print(f"μP drift {drift.get('mup')} (goal ≤ {GOAL_DRIFT}: {'met' if goal['met'] else 'NOT met'}), "
          f"SP drift {drift.get('sp')}; this run {time.perf_counter() - start:.0f} s; mean seconds per trial "
          f"{result['seconds_per_trial']}")
    print(f"wrote {out / (s['stem'] + '.json')}, .csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
