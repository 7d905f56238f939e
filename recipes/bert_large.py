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
and next-sentence prediction derived from WikiText-2. Results: OUT/table6.{json,md}, OUT/pretrain_curves.png,
OUT/cost.json. The stages live in `hf_mup.lab.pipeline`, shared with recipes/gpt2_transfer.py.
"""
import sys

from hf_mup.lab.pipeline import BERT_PRESETS, main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], BERT_PRESETS, "bert_large"))
