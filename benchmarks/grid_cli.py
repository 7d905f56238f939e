"""The command line the grid benchmarks share (lingle_ablations.py, depth_transfer.py): which studies to run, the
training length, --quick / --estimate-only / --report-only, and where the studies and results go."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parser(doc: str, choices: list[str], steps: int = 200, batch: int = 16, seeds: int = 2,
           val_blocks: int = 64, quick: str = "") -> argparse.ArgumentParser:
    """The shared flags; the caller adds its own (widths, depths, LR grid...)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(choices)}")
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--val-blocks", type=int, default=val_blocks)
    p.add_argument("--quick", action="store_true", help=quick or "a tiny setting: shows it works")
    p.add_argument("--estimate-only", action="store_true", help="time a few steps, print the run time left")
    p.add_argument("--report-only", action="store_true", help="write the table from the studies as they are")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def chosen(p: argparse.ArgumentParser, args: argparse.Namespace, choices: list[str]) -> list[str]:
    names = [n.strip() for n in args.only.split(",")] if args.only else list(choices)
    unknown = set(names) - set(choices)
    if unknown:
        p.error(f"unknown choice(s) {sorted(unknown)} for --only; use some of {', '.join(choices)}")
    return names


def output(args: argparse.Namespace, stem: str) -> tuple[Path, str, str]:
    """(results folder, file stem, SQLite URL of the studies); --quick writes beside, never over, the real ones."""
    stem += "_quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out, stem, f"sqlite:///{out.resolve() / (stem + '.db')}"
