"""The `hf-mup` command line. Usage: `hf-mup inspect gpt2-config.json --base-hidden-size 256`."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .coord_check import DEFAULT_BAND
from .errors import MuPError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt")


def load_config(path: str):
    """A transformers config from a config.json file, a checkpoint folder or (online) a Hub name."""
    from transformers import AutoConfig

    if os.path.isfile(path):
        data = json.loads(Path(path).read_text())
        if "model_type" not in data:
            raise MuPError(f"{path} has no model_type; it is not a transformers config.json.")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    return AutoConfig.from_pretrained(path)


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from . import MuPModel, describe

    config = load_config(args.config)
    if args.base_hidden_size is None and not getattr(config, "mup", None):
        raise MuPError(f"{args.config} has no μP settings (config.mup): pass --base-hidden-size N.")
    with torch.device("meta"):  # nothing is allocated, whatever the size
        model = MuPModel.from_config(config, base_hidden_size=args.base_hidden_size, model_class=args.model_class)
    print(f"{type(model).__name__}, hidden size {config.hidden_size}")
    print(describe(model))
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    from . import MuPModel, fold

    model = fold(MuPModel.from_pretrained(args.checkpoint))
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.checkpoint) / name).exists():
            shutil.copy(Path(args.checkpoint) / name, Path(args.out) / name)
    print(f"saved the folded (stock {type(model).__name__}) model to {args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MuPError(f"expected comma-separated integers, got {text!r}") from None
    return values


def cmd_coord_check(args: argparse.Namespace) -> int:
    import csv

    from . import coord_check as cc

    widths = _int_list(args.widths)
    if len(widths) < 2 or widths != sorted(set(widths)):
        raise MuPError(f"--widths needs two or more distinct widths in increasing order, got {args.widths!r}.")
    params = [p.strip() for p in args.parametrization.split(",") if p.strip()]
    unknown = set(params) - set(cc.PARAMETRIZATIONS)
    if unknown or not params:
        raise MuPError(f"--parametrization: unknown {sorted(unknown)}; use some of {', '.join(cc.PARAMETRIZATIONS)}.")
    if args.arch not in ("gpt2", "bert"):
        raise MuPError(f"--arch {args.arch!r} is not supported; use gpt2 or bert.")
    base = args.base_width or widths[0]
    if any(w % args.head_dim for w in widths) or base > widths[0]:
        raise MuPError(f"every width must be a multiple of --head-dim {args.head_dim}, and --base-width <= {widths[0]}.")
    records = cc.coord_check(
        args.arch, widths=widths, steps=args.steps, lr=args.lr, optimizer=args.optimizer, parametrizations=params,
        seeds=range(args.seeds), base_width=base, n_layer=args.layers, head_dim=args.head_dim,
        seq_len=args.seq_len, batch_size=args.batch_size,
        mup_options={k: getattr(args, k) for k in ("input_mult", "output_mult", "attn_mult")},
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "coord_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["parametrization", "width", "seed", "step", "module", "value"])
        writer.writeheader()
        writer.writerows(records)
    cc.plot(records, str(out / "coord_check.png"))
    rows = cc.slopes(records)
    band = (args.low, args.high)
    print(f"log-log slope of mean |activation| against width ({', '.join(map(str, widths))}); μP band {band}")
    steps = sorted({r["step"] for r in rows})
    by = {(r["parametrization"], r["module"], r["step"]): r["slope"] for r in rows}
    modules = list(dict.fromkeys(r["module"] for r in rows))
    header = ["module"] + [f"{p} t={t}" for p in params for t in steps]
    table = [header] + [[m] + [f"{by.get((p, m, t), float('nan')):+.2f}" for p in params for t in steps] for m in modules]
    widths_col = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths_col))))
    print(f"wrote {out / 'coord_check.csv'} and {out / 'coord_check.png'}")
    if "mup" not in params:
        return 0
    bad = cc.verdict(rows, band)
    if bad:
        print(f"FAIL: {len(bad)} μP slope(s) outside {band}: "
              + ", ".join(f"{r['module']} t={r['step']} {r['slope']:+.2f}" for r in bad[:10]))
        return 1
    print("PASS: every μP slope is inside the band")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-mup", description="μP and μTransfer for Hugging Face Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show what μP does to every parameter of a model")
    p.add_argument("config", help="a config.json, a checkpoint folder, or a Hub model name")
    p.add_argument("--base-hidden-size", type=int, help="the proxy's width (read from config.mup when omitted)")
    p.add_argument("--model-class", help="e.g. GPT2ForSequenceClassification (default: config.architectures[0])")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("coord-check", help="coordinate check: activation size against width, μP beside SP")
    p.add_argument("--arch", default="gpt2", help="gpt2 or bert")
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated, increasing")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps recorded (t=0 is at init)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--parametrization", default="mup,sp", help="comma-separated: mup, sp, mup_global_lr")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds averaged")
    p.add_argument("--base-width", type=int, help="μP base width (default: the smallest width)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-mult", type=float, default=1.0)
    p.add_argument("--output-mult", type=float, default=1.0)
    p.add_argument("--attn-mult", type=float, default=1.0)
    p.add_argument("--low", type=float, default=DEFAULT_BAND[0], help="lowest slope μP may show")
    p.add_argument("--high", type=float, default=DEFAULT_BAND[1], help="highest slope μP may show")
    p.add_argument("--out", default="coord_check_out", help="folder for coord_check.csv and coord_check.png")
    p.set_defaults(func=cmd_coord_check)

    p = sub.add_parser("fold", help="fold μP into the weights and save a stock transformers model")
    p.add_argument("checkpoint", help="a μP checkpoint saved with save_pretrained")
    p.add_argument("out", help="where to save the stock model")
    p.set_defaults(func=cmd_fold)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MuPError as e:
        print(f"hf-mup: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
