"""μTransfer for GPT-2, end to end: tune a small proxy, copy its hyperparameters to the target, train it beside two
standard-parametrization baselines — the LR published for that size (GPT-3 paper, Table 2.1: 6e-4 for 125M) and a
small LR grid at full width — and report the regret of μTransfer (its loss minus the grid's best).

Usage:
    python recipes/gpt2_transfer.py --preset tiny --output_dir out/gpt2_tiny       # CPU-sized, offline
    python recipes/gpt2_transfer.py --preset small --output_dir out/gpt2_small --dry_run
    accelerate launch recipes/gpt2_transfer.py --preset small --output_dir out/gpt2_small

Stages as in recipes/bert_large.py (search, transfer, pretrain, report; no fine-tuning tasks): the same code,
`hf_mup.lab.pipeline`, with GPT-2 presets. Results: OUT/table6.{json,md} (with the regret), OUT/pretrain_curves.png,
OUT/cost.json.
"""
import sys

from hf_mup.lab.pipeline import GPT2_PRESETS, main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], GPT2_PRESETS, "gpt2_transfer"))
