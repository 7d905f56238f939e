"""Adam's second moment against width under μP: why ε is scaled by 1/m.

Usage:
    python benchmarks/adam_eps.py            # GPT-2 μP, widths 64-1024, 2 layers, 50 AdamW steps on WikiText-2
    python benchmarks/adam_eps.py --quick    # widths 64-256, 10 steps

Each width trains the same μP GPT-2 (base width 64, head size 16, seq 64, batch 16, LR 2^-8, ε 1e-12 so that ε does
not feed back into the run) on the same batches. After the last step, for each kind of tensor (hidden weights,
embeddings, biases, norm gains, the readout), the median of √v̂ (Adam's bias-corrected second moment, per entry)
over its tensors, and its log-log slope against width. A fixed ε matters once it is comparable with √v̂; a slope of
-1 means a fixed ε grows relative to the update as the width m, so the ε that keeps Adam's update unchanged across
width is ε/m. Results: benchmarks/results/adam_eps.{json,png} (adam_eps_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hf_mup import mup_param_groups
from hf_mup.lab.coord_check import loglog_slope, make_batches
from hf_mup.lab.data import token_blocks, train_tokenizer, wikitext_dir
from hf_mup.lab.lm import build_lm, gpt2_config
from hf_mup.model import get_plan
from hf_mup.plan import canonical_name, is_norm

RESULTS = Path(__file__).parent / "results"
VOCAB, SEQ, BATCH, BASE, LR = 2048, 64, 16, 64, 2**-8


def tensor_group(model, name: str, plan) -> str:
    """hidden / embedding / readout weights, biases, norm gains."""
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if is_norm(module):
        return "norm gain"
    if name.endswith("bias"):
        return "bias"
    return {"hidden": "hidden weight", "input": "embedding", "readout": "readout"}.get(plan.rules[name].kind.value,
                                                                                     plan.rules[name].kind.value)


def second_moments(width: int, steps: int, data: torch.Tensor) -> dict[str, float]:
    model, _ = build_lm(gpt2_config(width, seq_len=SEQ, vocab_size=VOCAB), "mup", lr=LR, base_width=BASE,
                        zero_init_query=False)
    plan = get_plan(model)
    groups = mup_param_groups(model, lr=LR, eps=1e-12)
    optimizer = torch.optim.AdamW(groups, lr=LR, eps=1e-12)
    for batch in make_batches("gpt2", steps, BATCH, SEQ, VOCAB, seed=0, data=data):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    beta2 = optimizer.defaults["betas"][1]
    per_group: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
        per_group.setdefault(tensor_group(model, canonical_name(name), plan), []).append(v_hat.sqrt().median().item())
    return {group: statistics.median(values) for group, values in per_group.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    widths = args.widths or ([64, 128, 256] if args.quick else [64, 128, 256, 512, 1024])
    steps = args.steps or (10 if args.quick else 50)
    files = [wikitext_dir() / "valid.txt"]
    data = token_blocks(files, train_tokenizer(files, vocab_size=VOCAB), block_size=SEQ)
    rows = {}
    for width in widths:
        start = time.perf_counter()
        rows[width] = second_moments(width, steps, data)
        print(f"width {width}: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(rows[width].items()))
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    kinds = sorted({k for r in rows.values() for k in r})
    slopes = {k: loglog_slope(widths, [rows[w][k] for w in widths]) for k in kinds}
    print("log-log slope of median √v̂ against width: " + ", ".join(f"{k} {s:+.2f}" for k, s in slopes.items()))
    suffix = "_quick" if args.quick else ""
    out = RESULTS / f"adam_eps{suffix}.json"
    out.write_text(json.dumps({"command": "python benchmarks/adam_eps.py" + (" --quick" if args.quick else ""),
                               "widths": widths, "steps": steps, "base_width": BASE, "lr": LR,
                               "median_sqrt_v": {str(w): r for w, r in rows.items()}, "slopes": slopes}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'hf_mup[sweep]'): no plot", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in kinds:
        ax.plot(widths, [rows[w][k] for w in widths], "o-", label=f"{k} (slope {slopes[k]:+.2f})")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="median √v̂ (Adam)",
           title=f"μP GPT-2, base {BASE}, after {steps} AdamW steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
