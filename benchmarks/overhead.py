"""Run-time overhead of μP: a full training step of a μP model vs the same stock model, A/B in one process.

Usage:
    python benchmarks/overhead.py                  # CPU, GPT-2 and BERT at widths 256 and 1024
    python benchmarks/overhead.py --quick          # a fast, smaller run
    python benchmarks/overhead.py --device cuda    # larger widths; torch.cuda.synchronize around each step

What is compared, per architecture (GPT2LMHeadModel, BertForMaskedLM) and width, with the same config:
- `stock`: `AutoModelFor*.from_config(config)` and `torch.optim.AdamW(model.parameters())`;
- `mup`: `hf_mup.MuPModel.from_config(config, base_hidden_size=64, output_mult=8, attn_mult=2)` and
  `torch.optim.AdamW(hf_mup.mup_param_groups(model))`: the readout pre-hook and the μP attention scale;
- `mup_input_mult`: the same with `input_mult=2`, which adds the embedding forward hooks;
- `mup_depth` (with `--base-layers N`): the `mup` variant with depth scaling (CompleteP, `base_num_layers=N`), which
  adds a forward hook multiplying each residual branch's output.

A step is forward + backward + AdamW step + zero_grad. The variants run interleaved in one process: after
warm-up, each round runs every variant `--block` steps, in a fresh random order per round. We report per-variant
medians and IQRs, the ratio of medians (μP / stock) with a bootstrap 95% CI (rounds resampled, so the pairing in
time is kept), and the median and IQR of the per-round paired ratios.

Memory is measured exactly, not sampled: the bytes of the tensors autograd saves for backward in one step
(`torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage), and the bytes of parameters, gradients
and AdamW state. On CUDA also the peak allocated during a step above what was allocated before it
(`torch.cuda.max_memory_allocated`, reset before each step). A probe step per variant counts the calls to
`torch.nn.functional.scaled_dot_product_attention` (and the scale each one got), and the autograd graph names
the SDPA kernel that ran (flash / efficient / cudnn; math fallback when there is no such node).

Results go to benchmarks/results/overhead_<device>.json (overhead_<device>_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config

import hf_mup

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_TIME_RATIO = 1.02

# Defaults per device; --quick replaces them with the second set. Any flag given on the command line wins.
DEFAULTS = {
    "cpu": dict(widths=[256, 1024], layers=4, seq=128, batch=8, vocab=8192, warmup=3, rounds=30),
    "cuda": dict(widths=[1024, 2048], layers=4, seq=512, batch=8, vocab=32768, warmup=10, rounds=100),
}
QUICK = {
    "cpu": dict(widths=[128, 256], layers=2, seq=64, batch=4, vocab=4096, warmup=1, rounds=5),
    "cuda": dict(widths=[512, 1024], layers=2, seq=256, batch=8, vocab=8192, warmup=3, rounds=20),
}


# ------------------------------------------------------------------------------------------------ the models


def make_config(model: str, width: int, args: argparse.Namespace):
    if width % args.head_dim:
        raise SystemExit(f"width {width} is not a multiple of --head-dim {args.head_dim}")
    heads = width // args.head_dim
    if model == "gpt2":
        return GPT2Config(
            vocab_size=args.vocab, n_positions=args.seq, n_embd=width, n_layer=args.layers, n_head=heads,
            n_inner=4 * width, bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1,
            resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
        )
    if model == "bert":
        return BertConfig(
            vocab_size=args.vocab, max_position_embeddings=args.seq, hidden_size=width, num_hidden_layers=args.layers,
            num_attention_heads=heads, intermediate_size=4 * width,
            hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
        )
    raise SystemExit(f"unknown model {model!r}: use gpt2 or bert")


MODEL_CLASSES = {"gpt2": ("GPT2LMHeadModel", AutoModelForCausalLM), "bert": ("BertForMaskedLM", AutoModelForMaskedLM)}


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    mup: dict[str, Any] | None  # the μP options, None for stock


def build_variants(model_name: str, width: int, args: argparse.Namespace, device: torch.device) -> list[Variant]:
    config = make_config(model_name, width, args)
    class_name, auto_class = MODEL_CLASSES[model_name]
    mup_opts = dict(output_mult=args.output_mult, attn_mult=args.attn_mult)
    specs: list[tuple[str, dict | None]] = [("stock", None), ("mup", dict(mup_opts, input_mult=1.0))]
    if args.input_mult != 1.0:
        specs.append(("mup_input_mult", dict(mup_opts, input_mult=args.input_mult)))
    if args.base_layers is not None:
        specs.append(("mup_depth", dict(mup_opts, input_mult=1.0, base_num_layers=args.base_layers)))
    variants = []
    for name, opts in specs:
        torch.manual_seed(args.seed)
        if opts is None:
            model = auto_class.from_config(config)
        else:
            model = hf_mup.MuPModel.from_config(
                config, base_hidden_size=args.base_width, model_class=class_name, **opts
            )
        model.to(device).train()
        if opts is None:
            optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        else:
            groups = hf_mup.mup_param_groups(model, lr=args.lr, weight_decay=args.weight_decay)
            optimizer = torch.optim.AdamW(groups)
        assert type(model).__name__ == class_name, type(model).__name__
        variants.append(Variant(name, model, optimizer, opts))
    return variants


def make_batch(model_name: str, args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone()}
    if model_name == "bert":  # MLM: loss on ~15% of the positions, the rest ignored
        keep = torch.rand(ids.shape, generator=g) < 0.15
        batch["labels"] = torch.where(keep, ids, torch.full_like(ids, -100))
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- the step


def autocast_ctx(args: argparse.Namespace, device: torch.device):
    if args.autocast == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(v: Variant, batch: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device) -> None:
    with autocast_ctx(args, device):
        loss = v.model(**batch).loss
    loss.backward()
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(v: Variant, batch, args, device) -> tuple[float, int | None]:
    """Seconds for one step, and on CUDA the peak bytes allocated during it above what was allocated before."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    train_step(v, batch, args, device)
    synchronize(device)
    t1 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    return t1 - t0, peak


# ------------------------------------------------------------------------------------------ exact memory


def tensor_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def state_bytes(v: Variant, with_grads: bool) -> dict[str, int]:
    params = list(dict.fromkeys(v.model.parameters()))  # tied weights once
    opt_tensors = [t for st in v.optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    out = {
        "param_bytes": tensor_bytes(params),
        "optimizer_state_bytes": tensor_bytes(opt_tensors),
        "optimizer_state_tensors": len(opt_tensors),
    }
    if with_grads:
        out["grad_bytes"] = tensor_bytes(p.grad for p in params)
    return out


class SDPACounter:
    """Counts calls to torch.nn.functional.scaled_dot_product_attention (what transformers' "sdpa" calls)."""

    def __init__(self):
        self.calls = 0
        self.scales: list[float | None] = []
        self.is_causal: list[bool] = []
        self.masked = 0
        self._orig: Callable | None = None

    def __enter__(self):
        self._orig = torch.nn.functional.scaled_dot_product_attention
        orig = self._orig

        def counting(*a, **kw):
            self.calls += 1
            self.scales.append(kw.get("scale"))
            self.is_causal.append(bool(kw.get("is_causal", False)))
            self.masked += (a[3] if len(a) > 3 else kw.get("attn_mask")) is not None
            return orig(*a, **kw)

        torch.nn.functional.scaled_dot_product_attention = counting
        return self

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self._orig


def autograd_node_counts(root) -> dict[str, int]:
    """Names of the autograd graph's nodes below `root`, counted: what the forward ran, as backward sees it."""
    counts: dict[str, int] = {}
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        counts[name] = counts.get(name, 0) + 1
        stack.extend(n for n, _ in node.next_functions)
    return counts


def probe_step(v: Variant, batch, args, device) -> dict[str, Any]:
    """One untimed step, instrumented: saved-for-backward bytes, SDPA calls and the SDPA kernel autograd recorded."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in v.model.parameters()}
    saved: dict[int, int] = {}
    n_saved = 0

    def pack(t: torch.Tensor):
        nonlocal n_saved
        n_saved += 1
        s = t.untyped_storage()
        saved[s.data_ptr()] = s.nbytes()
        return t

    synchronize(device)
    with SDPACounter() as sdpa:
        with autocast_ctx(args, device), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = v.model(**batch).loss
    nodes = autograd_node_counts(loss.grad_fn)
    loss.backward()
    grads = state_bytes(v, with_grads=True)["grad_bytes"]
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    activation = sum(b for p, b in saved.items() if p not in param_ptrs)
    return {
        "memory": {
            "saved_for_backward_bytes": sum(saved.values()),
            "saved_activation_bytes": activation,  # the saved tensors that are not parameters
            "saved_tensor_count": n_saved,
            "saved_storage_count": len(saved),
            "grad_bytes": grads,
            **state_bytes(v, with_grads=False),
        },
        "attention": {
            "attn_implementation": getattr(v.model.config, "_attn_implementation", None),
            "sdpa_calls_forward": sdpa.calls,
            "sdpa_scales": sorted({s for s in sdpa.scales if s is not None}) or [None],
            "sdpa_is_causal": sorted(set(sdpa.is_causal)),
            "sdpa_calls_with_mask": sdpa.masked,
            # the fused kernel SDPA dispatched to (flash / efficient / cudnn), from its autograd node; none when it
            # took the math fallback (then softmax and bmm nodes appear instead)
            "sdpa_kernel_nodes": {k: c for k, c in sorted(nodes.items()) if "ScaledDotProduct" in k},
            "softmax_nodes": sum(c for k, c in nodes.items() if "Softmax" in k and "LogSoftmax" not in k),
            "autograd_nodes": sum(nodes.values()),
        },
    }


# ---------------------------------------------------------------------------------------------- statistics


def describe(xs: list[float]) -> dict[str, float]:
    q25, q50, q75 = np.percentile(xs, [25, 50, 75])
    return {"median_ms": q50 * 1e3, "q25_ms": q25 * 1e3, "q75_ms": q75 * 1e3, "iqr_ms": (q75 - q25) * 1e3,
            "mean_ms": float(np.mean(xs)) * 1e3, "min_ms": min(xs) * 1e3, "n": len(xs)}


def compare(a: list[list[float]], b: list[list[float]], n_boot: int, seed: int) -> dict[str, Any]:
    """μP (b) over stock (a); a[r], b[r] are the step times of round r."""
    flat_a, flat_b = [x for r in a for x in r], [x for r in b for x in r]
    ratio = statistics.median(flat_b) / statistics.median(flat_a)
    rng = np.random.default_rng(seed)
    rounds = len(a)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, rounds, rounds)
        boots.append(np.median(np.concatenate([b[i] for i in idx])) / np.median(np.concatenate([a[i] for i in idx])))
    paired = [statistics.median(rb) / statistics.median(ra) for ra, rb in zip(a, b)]
    p25, p50, p75 = np.percentile(paired, [25, 50, 75])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "time_ratio": ratio,
        "time_ratio_ci95": [float(lo), float(hi)],
        "min_time_ratio": min(flat_b) / min(flat_a),  # the least disturbed step of each: robust on a busy machine
        "paired_ratio_median": float(p50),
        "paired_ratio_iqr": [float(p25), float(p75)],
        "within_target": bool(ratio <= TARGET_TIME_RATIO),
    }


def ratio(x, y) -> float | None:
    if x is None or y is None:
        return None
    return x / y if y else (1.0 if x == y else float("inf"))


# ------------------------------------------------------------------------------------------------- a case


def guard_microseconds(model, calls: int = 2000) -> float:
    """Median over 5 repeats of the time, in µs, of the guard hf_mup runs before each forward."""
    from hf_mup.apply import Guard

    guard = next(h for h in model._forward_pre_hooks.values() if isinstance(h, Guard))
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            guard(model, ())
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return round(statistics.median(runs), 2)


def run_case(model_name: str, width: int, args, device) -> dict[str, Any]:
    variants = build_variants(model_name, width, args, device)
    batch = make_batch(model_name, args, device)
    rng = random.Random(args.seed)
    stock = variants[0]

    for _ in range(args.warmup):  # interleaved too, so every variant warms up under the same conditions
        for v in rng.sample(variants, len(variants)):
            train_step(v, batch, args, device)
    probes = {v.name: probe_step(v, batch, args, device) for v in variants}

    times: dict[str, list[list[float]]] = {v.name: [] for v in variants}
    peaks: dict[str, list[int]] = {v.name: [] for v in variants}
    orders = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(args.rounds):
            order = rng.sample(variants, len(variants))
            orders.append("".join(str(variants.index(v)) for v in order))
            for v in order:
                ts = []
                for _ in range(args.block):
                    t, peak = timed_step(v, batch, args, device)
                    ts.append(t)
                    if peak is not None:
                        peaks[v.name].append(peak)
                times[v.name].append(ts)
    finally:
        gc.enable()

    case: dict[str, Any] = {
        "model": model_name,
        "model_class": type(stock.model).__name__,
        "width": width,
        "heads": width // args.head_dim,
        "n_params": sum(p.numel() for p in dict.fromkeys(stock.model.parameters())),
        "variants": {},
        "comparisons": {},
    }
    for v in variants:
        entry = {"mup": v.mup, "timing": describe([t for r in times[v.name] for t in r]), **probes[v.name]}
        if v.mup is not None:
            plan = hf_mup.get_plan(v.model)
            entry["hooks"] = {
                "readout_pre_hooks": {k: s for k, s in plan.readouts.items() if s != 1.0},
                "embedding_hooks": plan.embeddings if plan.mup.input_mult != 1.0 else [],
                "residual_hooks": len(plan.residuals) if plan.residual_scale != 1.0 else 0,
                "optimizer_groups": len(v.optimizer.param_groups),
                # the model-level guard that checks for module surgery before each forward (inside the timed step)
                "guard_us_per_forward": guard_microseconds(v.model),
            }
        if peaks[v.name]:
            entry["memory"]["cuda_step_peak_bytes_median"] = int(statistics.median(peaks[v.name]))
            entry["memory"]["cuda_step_peak_bytes_max"] = max(peaks[v.name])
        case["variants"][v.name] = entry
    sm = probes["stock"]["memory"]
    for v in variants[1:]:
        vm = probes[v.name]["memory"]
        c = compare(times["stock"], times[v.name], args.bootstrap, args.seed)
        c["saved_for_backward_ratio"] = ratio(vm["saved_for_backward_bytes"], sm["saved_for_backward_bytes"])
        c["saved_for_backward_diff_bytes"] = vm["saved_for_backward_bytes"] - sm["saved_for_backward_bytes"]
        c["saved_activation_ratio"] = ratio(vm["saved_activation_bytes"], sm["saved_activation_bytes"])
        resident = ("param_bytes", "grad_bytes", "optimizer_state_bytes")
        c["param_grad_optimizer_ratio"] = ratio(sum(vm[k] for k in resident), sum(sm[k] for k in resident))
        c["cuda_step_peak_ratio"] = ratio(vm.get("cuda_step_peak_bytes_median"), sm.get("cuda_step_peak_bytes_median"))
        c["memory_equal"] = bool(c["saved_for_backward_diff_bytes"] == 0 and c["param_grad_optimizer_ratio"] == 1.0)
        va, sa = probes[v.name]["attention"], probes["stock"]["attention"]
        c["sdpa_in_both"] = bool(
            va["sdpa_calls_forward"] == sa["sdpa_calls_forward"] == args.layers
            and va["sdpa_kernel_nodes"] == sa["sdpa_kernel_nodes"]
        )
        case["comparisons"][v.name] = c
    case["round_orders"] = {"legend": [v.name for v in variants], "orders": orders}
    del variants, stock, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return case


# ---------------------------------------------------------------------------------------------- reporting


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_mup": hf_mup.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = list(os.getloadavg())
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def table(results: dict[str, Any]) -> str:
    head = (f"{'model':<6} {'width':>5} {'variant':<15} {'stock ms':>9} {'μP ms':>9} {'ratio':>6} "
            f"{'95% CI':>15} {'min r':>6} {'saved B ratio':>13} {'state ratio':>11} {'SDPA':>5}")
    lines = [head, "-" * len(head)]
    for case in results["cases"]:
        stock_ms = case["variants"]["stock"]["timing"]["median_ms"]
        for name, c in case["comparisons"].items():
            lo, hi = c["time_ratio_ci95"]
            mem = case["variants"][name]["timing"]["median_ms"]
            peak = c["cuda_step_peak_ratio"]
            saved = f"{c['saved_for_backward_ratio']:.4f}" + (f"/{peak:.3f}" if peak is not None else "")
            lines.append(
                f"{case['model']:<6} {case['width']:>5} {name:<15} {stock_ms:>9.2f} {mem:>9.2f} "
                f"{c['time_ratio']:>6.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {c['min_time_ratio']:>6.3f} {saved:>13} "
                f"{c['param_grad_optimizer_ratio']:>11.4f} {'yes' if c['sdpa_in_both'] else 'NO':>5}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer rounds, smaller models")
    p.add_argument("--models", nargs="+", default=["gpt2", "bert"], choices=["gpt2", "bert"])
    p.add_argument("--widths", nargs="+", type=int, help="hidden sizes (cpu: 256 1024; cuda: 1024 2048)")
    p.add_argument("--layers", type=int)
    p.add_argument("--seq", type=int, help="sequence length")
    p.add_argument("--batch", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--warmup", type=int, help="warm-up rounds (each variant one step per round)")
    p.add_argument("--rounds", type=int, help="timed rounds; each runs every variant --block steps, random order")
    p.add_argument("--block", type=int, default=1, help="consecutive steps of one variant within a round")
    p.add_argument("--base-width", type=int, default=64, help="μP base_hidden_size")
    p.add_argument("--output-mult", type=float, default=8.0)
    p.add_argument("--attn-mult", type=float, default=2.0,
                   help="μP attn_mult; != 1 so that the μP scale passed to SDPA differs from stock's")
    p.add_argument("--input-mult", type=float, default=2.0,
                   help="input_mult of the third variant (embedding hooks); 1 drops that variant")
    p.add_argument("--base-layers", type=int, help="add a depth-scaled variant with this base depth (CompleteP)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="all dropout probabilities (0, as in most LLM pretraining; with attention dropout > 0 "
                        "SDPA on CPU falls back to its math kernel, for stock and μP alike)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="the same value for stock and μP")
    p.add_argument("--autocast", choices=["none", "bf16"], default="none")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the ratio's CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/overhead_<device>[_quick].json)")
    args = p.parse_args(argv)
    defaults = (QUICK if args.quick else DEFAULTS)[args.device]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = RESULTS_DIR / f"overhead_{args.device}{'_quick' if args.quick else ''}.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    transformers.logging.set_verbosity_error()
    env = environment(device)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {"benchmark": "overhead", "device": args.device, "config": config, "environment": env,
                               "cases": []}
    start = time.perf_counter()
    for model_name in args.models:
        for width in args.widths:
            t0 = time.perf_counter()
            case = run_case(model_name, width, args, device)
            results["cases"].append(case)
            ratios = ", ".join(f"{n} {c['time_ratio']:.3f}" for n, c in case["comparisons"].items())
            print(f"[{model_name} w={width}] {time.perf_counter() - t0:.0f}s; time ratio μP/stock: {ratios}",
                  file=sys.stderr, flush=True)
    comps = [c for case in results["cases"] for c in case["comparisons"].values()]
    results["summary"] = {
        "max_time_ratio": max(c["time_ratio"] for c in comps),
        "all_time_within_target": all(c["within_target"] for c in comps),
        "time_target": TARGET_TIME_RATIO,
        "all_memory_equal": all(c["memory_equal"] for c in comps),
        "all_sdpa": all(c["sdpa_in_both"] for c in comps),
        "wall_s": time.perf_counter() - start,
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
