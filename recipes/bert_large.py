"""μTransfer for BERT, end to end (Tensor Programs V, Table 6): tune a small proxy, copy its hyperparameters to
BERT-base / BERT-large, pretrain beside Megatron-LM's published recipe, fine-tune both, report.

Usage:
    python recipes/bert_large.py --preset tiny --output_dir out/bert_tiny          # all stages, 2 CPU cores, offline
    python recipes/bert_large.py --preset large --output_dir out/bert_large --dry_run   # the plan, no training
    accelerate launch recipes/bert_large.py --preset large --output_dir out/bert_large \\
        --storage postgresql://user:pw@host/db                                   # many search workers share it

Stages (`--stages`, default all): search, transfer, pretrain, finetune, report. A finished stage is skipped on rerun;
a killed one continues (Optuna study, Trainer checkpoints, an appended fine-tuning log). Under `accelerate launch`
pretraining runs on every process; the other stages run on the main process while the rest wait.
Presets: `tiny` (CPU-sized: widths 64 → 256), `base` (768 × 12) and `large` (1024 × 24), both tuned on the 10-layer,
width-256 proxy of the paper. Offline tasks: sentence polarity (../shared/data/sentence-polarity, or HF_MUP_POLARITY)
and next-sentence prediction derived from WikiText-2.
"""
from __future__ import annotations

import argparse
import json
import sys

from hf_mup.errors import MuPError
from hf_mup.pipeline import BERT_PRESETS, STAGES, Pipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(BERT_PRESETS)}")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    p.add_argument("--storage", help="Optuna RDB URL shared by search workers (default: sqlite in output_dir)")
    p.add_argument("--tasks", help="comma-separated fine-tuning tasks (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dry_run", action="store_true", help="print the plan (shapes, parameters, tokens, FLOPs)")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None, presets: dict = BERT_PRESETS) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.preset not in presets:
            raise MuPError(f"unknown preset {args.preset!r}: use one of {', '.join(presets)}.")
        preset = presets[args.preset]
        if args.tasks:
            from dataclasses import replace

            preset = replace(preset, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
        pipe = Pipeline(preset, args.output_dir, storage=args.storage, device=args.device,
                        progress=not args.no_progress)
        if args.dry_run:
            print(json.dumps(pipe.plan(), indent=2))
            return 0
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise MuPError(f"unknown stage(s) {unknown}: the stages are {', '.join(STAGES)}.")
        run_stages(pipe, stages)
    except MuPError as e:
        print(f"bert_large: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_stages(pipe: Pipeline, stages: tuple[str, ...]) -> None:
    """Pretraining on every process (the Trainer shares the work); the other stages on the main process only."""
    from accelerate import PartialState

    state = PartialState()
    try:
        for stage in STAGES:
            if stage not in stages:
                continue
            if stage == "pretrain" or state.is_main_process:
                pipe.run((stage,))
            state.wait_for_everyone()
    finally:
        state.destroy_process_group()  # torn down before exit: no "terminate called" aborts under accelerate


if __name__ == "__main__":
    sys.exit(main())
