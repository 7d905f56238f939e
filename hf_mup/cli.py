"""The `hf-mup` command line. Usage: `hf-mup inspect gpt2-config.json --base-hidden-size 256`."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-mup", description="μP and μTransfer for Hugging Face Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show what μP does to every parameter of a model")
    p.add_argument("config", help="a config.json, a checkpoint folder, or a Hub model name")
    p.add_argument("--base-hidden-size", type=int, help="the proxy's width (read from config.mup when omitted)")
    p.add_argument("--model-class", help="e.g. GPT2ForSequenceClassification (default: config.architectures[0])")
    p.set_defaults(func=cmd_inspect)

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
