"""The coordinate check: is every activation's size flat in width, at init and after a few steps?

Usage:
    records = coord_check("gpt2", widths=(64, 128, 256, 512), steps=3)
    bad = verdict(slopes(records))   # [] when μP holds

For each parametrization, width, seed and step t (t = 0 is the forward at init, before any update) it records
`output.abs().mean()` of every module of the stock HF model (embeddings, blocks, attention, MLP, norms, the
readout) through forward hooks, plus `<attention>.scores`: the attention logits q·k·scaling, recomputed from the
module's input. Under μP the log-log slope of these against width stays near 0; under SP the logits and the
attention scores grow with width once the model has taken a step or two.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..architectures import Architecture, get_architecture
from .lm import build_lm, mask_tokens
from .recipe import PARAMETRIZATIONS, lm_config

# The band a μP slope must stay in, (low, high). Asymmetric on purpose: blowing up is what μP prevents, while at
# small widths μP's own finite-width corrections shrink like width^-1/2 (activations that start at 0, e.g. attention
# scores with a zero-initialised query; the readout at init). Measured slopes: tests/lab/test_coord_check.py.
DEFAULT_BAND = (-0.7, 0.25)
# A verdict averages over seeds: the slopes of one seed vary, and the band holds for t <= 2 (3 recorded steps). The
# calibration on 12 seeds (how many seed sets of a correct μP model fail the band, by steps and seeds) is on the docs'
# results page (docs/results/cost.md, "Calibrating the coordinate check's band").
# Hence a verdict needs MIN_VERDICT_SEEDS seeds and the CLI records VERDICT_STEPS steps by default.
MIN_VERDICT_SEEDS = 2
VERDICT_STEPS = 3
# What a coordinate check may step with (a training run's optimizers are the recipe's: hf_mup.lab.recipe.OPTIMIZERS).
COORD_CHECK_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
    "muon": lambda groups, **kw: _muon(groups, ns_dtype=torch.float32, **kw),  # (float32: CPUs emulate bfloat16)
}


def _muon(groups: list[dict[str, Any]], **kw: Any) -> torch.optim.Optimizer:
    from ..muon import MuonAdamW  # (torch 2.9+)

    return MuonAdamW(groups, **kw)


def make_batches(arch: str, steps: int, batch_size: int, seq_len: int, vocab_size: int, seed: int,
                 data: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """One batch per step, fixed by `seed` only (so the same at every width): random rows of `data`, else one
    random token batch repeated at every step (the model fits it, so updates line up with the inputs, as with text).

    Causal LMs learn the block itself; BERT batches are masked-LM batches by the training loop's rule
    (`hf_mup.lab.lm.mask_tokens`: 15% targets, 80/10/10), the mask token being the last id.
    """
    g = torch.Generator().manual_seed(seed)
    fixed = torch.randint(vocab_size - 1, (batch_size, seq_len), generator=g)
    batches = []
    for _ in range(steps):
        ids = fixed if data is None else data[torch.randint(len(data), (batch_size,), generator=g), :seq_len].long()
        if arch != "bert":  # a causal LM (GPT-2, Llama)
            batches.append({"input_ids": ids, "labels": ids})
        else:
            inputs, labels = mask_tokens(ids, vocab_size - 1, vocab_size, g)
            batches.append({"input_ids": inputs, "labels": labels})
    return batches


def add_hooks(model: nn.Module, head_dim: int, stats: dict[str, float], arch: Architecture) -> list:
    """Forward hooks writing mean |output| of every module (and the attention scores) into `stats`."""

    def record(name):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                stats[name] = out.detach().abs().mean().item()
            if arch.is_attention(module) and arch.query_key is not None:
                hidden = args[0] if args else kwargs["hidden_states"]
                with torch.no_grad():
                    q, k = (x.unflatten(-1, (-1, head_dim)).transpose(1, 2) for x in arch.query_key(module, hidden))
                    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query: shared key heads
                    stats[f"{name}.scores"] = (q @ k.transpose(-1, -2) * module.scaling).abs().mean().item()
        return hook

    skip = (nn.Dropout, nn.ModuleList)
    return [
        module.register_forward_hook(record(name), with_kwargs=True)
        for name, module in model.named_modules()
        if name and module is not getattr(model, "base_model", None) and not isinstance(module, skip)
    ]


def coord_check(
    arch: str = "gpt2",
    widths: Sequence[int] = (64, 128, 256, 512),
    steps: int = 3,
    lr: float = 1e-2,
    optimizer: str = "adamw",
    parametrizations: Sequence[str] = ("mup", "sp"),
    seeds: Sequence[int] = (0, 1),
    base_width: int = 64,
    n_layer: int = 2,
    head_dim: int = 16,
    seq_len: int = 32,
    batch_size: int = 8,
    vocab_size: int = 512,
    data: torch.Tensor | None = None,
    mup_options: dict[str, Any] | None = None,
) -> list[dict]:
    """Mean |activation| of every module, per parametrization, width, seed and step (t = 0: at init).

    Usage: `records = coord_check("bert", widths=(64, 256), optimizer="sgd", lr=0.1)`

    Widths must be multiples of `head_dim` (heads = width / head_dim) and at least `base_width`. `parametrizations`:
    any of "mup", "sp" (the stock model, one LR) and "mup_global_lr" (a μP model with one LR: a broken setup).
    Returns dicts `{parametrization, width, seed, step, module, value}`. `data`: token ids of shape [N, seq_len]
    (e.g. real text) to sample batches from; random tokens otherwise. `mup_options`: `MuPConfig` fields.
    """
    if optimizer not in COORD_CHECK_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {tuple(COORD_CHECK_OPTIMIZERS)}")
    no_decay = {"weight_decay": 0.0} if optimizer != "sgd" else {}  # AdamW's default decay would blur the check
    if data is not None:
        vocab_size = max(vocab_size, int(data.max()) + 2)  # +1: BERT's mask token is the last id
    records = []
    for seed in seeds:
        batches = make_batches(arch, steps, batch_size, seq_len, vocab_size, seed, data)
        for parametrization in parametrizations:
            for width in widths:
                config = lm_config(arch, width, n_layer, head_dim, seq_len, vocab_size)
                model, groups = build_lm(config, parametrization, lr, base_width, seed=seed, optimizer=optimizer,
                                         **(mup_options or {}))
                opt = COORD_CHECK_OPTIMIZERS[optimizer](groups, **no_decay)
                model.train()
                stats: dict[str, float] = {}
                hooks = add_hooks(model, head_dim, stats, get_architecture(config))
                for step, batch in enumerate(batches):
                    stats.clear()
                    loss = model(**batch).loss
                    records += [dict(parametrization=parametrization, width=width, seed=seed, step=step,
                                     module=name, value=value) for name, value in stats.items()]
                    if step < len(batches) - 1:  # the last forward is only measured
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                for h in hooks:
                    h.remove()
    return records


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(ys) against log(xs) (all positive)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    x0, y0 = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((x - x0) * (y - y0) for x, y in zip(lx, ly)) / sum((x - x0) ** 2 for x in lx)


def slopes(records: list[dict]) -> list[dict]:
    """Least-squares slope of log(mean |act|, averaged over seeds) against log(width), per (parametrization, module, step).

    Usage: `for row in slopes(records): print(row["parametrization"], row["module"], row["step"], row["slope"])`

    Rows: `{parametrization, module, step, slope, widths, means}`. A module whose mean is 0 at some width (e.g.
    attention scores with a zero-initialised query, at init) gets slope NaN: nothing to fit. A non-finite mean
    (a diverged run) gets slope +inf, so that `verdict` flags it.
    """
    by_key: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_key[r["parametrization"], r["module"], r["step"]][r["width"]].append(r["value"])
    rows = []
    for (parametrization, module, step), per_width in by_key.items():
        widths = sorted(per_width)
        means = [sum(per_width[w]) / len(per_width[w]) for w in widths]
        if not all(math.isfinite(m) for m in means):
            slope = math.inf
        elif len(widths) < 2 or not all(m > 0 for m in means):
            slope = math.nan
        else:
            slope = loglog_slope(widths, means)
        rows.append(dict(parametrization=parametrization, module=module, step=step, slope=slope,
                         widths=widths, means=means))
    return rows


def verdict(slope_rows: list[dict], threshold: float | tuple[float, float] = DEFAULT_BAND,
            parametrization: str = "mup") -> list[dict]:
    """The rows of `parametrization` whose slope is outside the band (NaN slopes are skipped): [] means a pass.

    Usage: `sys.exit(1 if verdict(slopes(records)) else 0)`

    `threshold`: a number t flags |slope| > t; a pair (low, high) flags slopes outside [low, high] (the default,
    `DEFAULT_BAND`). Under μP the readout at init legitimately scales as width^-1/2 (its input is multiplied by
    1/m), which the default band allows.
    """
    low, high = (-threshold, threshold) if isinstance(threshold, (int, float)) else threshold
    return [r for r in slope_rows if r["parametrization"] == parametrization and not low <= r["slope"] <= high
            and not math.isnan(r["slope"])]


def plot(records: list[dict], path: str) -> None:
    """Log-log mean |activation| against width: a row per parametrization, a column per step, a line per module.

    Usage: `plot(records, "coord_check.png")`
    """
    from ..extras import require

    require("sweep", "matplotlib", what="the coordinate-check plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = slopes(records)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    modules = list(dict.fromkeys(r["module"] for r in rows))
    steps = sorted({r["step"] for r in rows})
    widths = sorted({w for r in rows for w in r["widths"]})
    colors = plt.get_cmap("turbo")([i / max(1, len(modules) - 1) for i in range(len(modules))])
    fig, axes = plt.subplots(len(params), len(steps), figsize=(3.2 * len(steps) + 2.5, 2.8 * len(params)),
                             sharex=True, sharey=True, squeeze=False)
    lines = {}
    for i, p in enumerate(params):
        for j, t in enumerate(steps):
            ax = axes[i][j]
            for r in rows:
                if r["parametrization"] == p and r["step"] == t and all(0 < m < math.inf for m in r["means"]):
                    k = modules.index(r["module"])
                    lines[r["module"]], = ax.plot(r["widths"], r["means"], marker=".", lw=1, color=colors[k])
            ax.set_title(f"{p}, t={t}", fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(widths, [str(w) for w in widths], fontsize=7)
            ax.minorticks_off()
    for ax in axes[-1]:
        ax.set_xlabel("width")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean |activation|")
    right = 1 - 2.5 / fig.get_figwidth()  # 2.5 inches for the legend
    fig.subplots_adjust(left=0.07, right=right, top=0.94, bottom=0.08, hspace=0.3, wspace=0.08)
    fig.legend([lines[m] for m in modules if m in lines], [m for m in modules if m in lines],
               loc="center left", bbox_to_anchor=(right + 0.01, 0.5), fontsize=6)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def depth_check(
    arch: str = "gpt2",
    depths: Sequence[int] = (2, 4, 8, 16),
    base_layers: int | None = 2,
    depth_alpha: float = 1.0,
    steps: int = 3,
    lr: float = 1e-2,
    seeds: Sequence[int] = (0, 1),
    width: int = 64,
    head_dim: int = 16,
    seq_len: int = 32,
    batch_size: int = 8,
    vocab_size: int = 512,
) -> list[dict]:
    """The coordinate check across depth: how far the last block's output moves from init as the model trains.

    Usage: `records = depth_check("gpt2", depths=(2, 4, 8, 16), base_layers=2)` (None: μP without depth scaling)

    A μP model at base width `width`, `steps` AdamW steps on one fixed batch; after each, the RMS change of the last
    block's output (on that batch) from its value at init. Without depth scaling each of the L blocks moves the
    residual stream by Θ(1), so the change grows with depth; under CompleteP each moves it by Θ(1/L), so it stays
    flat. Returns dicts `{depth, seed, step, value}` (step t ≥ 1: after t updates).
    """
    records = []
    for seed in seeds:
        batch = make_batches(arch, 1, batch_size, seq_len, vocab_size, seed)[0]
        for depth in depths:
            config = lm_config(arch, width, depth, head_dim, seq_len, vocab_size)
            options: dict[str, Any] = ({} if base_layers is None
                                       else {"base_num_layers": base_layers, "depth_alpha": depth_alpha})
            model, groups = build_lm(config, "mup", lr, width, seed=seed, **options)
            opt = torch.optim.AdamW(groups, weight_decay=0.0)
            blocks = get_architecture(config).blocks
            last = next(m for n, m in model.named_modules() if n.split(".")[-2:] == [blocks, str(depth - 1)])
            seen: list[torch.Tensor] = []
            hook = last.register_forward_hook(
                lambda m, a, out, seen=seen: seen.append((out[0] if isinstance(out, (tuple, list)) else out).detach()))
            model.train()
            for step in range(steps + 1):
                loss = model(**batch).loss
                if step:
                    records.append(dict(depth=depth, seed=seed, step=step,
                                        value=(seen[-1] - seen[0]).pow(2).mean().sqrt().item()))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            hook.remove()
    return records


def depth_slopes(records: list[dict]) -> dict[int, float]:
    """Per step, the log-log slope of the seed-mean change against depth (0: flat in depth; NaN where a mean is 0,
    e.g. after the first step of a model with a zero readout, whose blocks get no gradient yet)."""
    out = {}
    for step in sorted({r["step"] for r in records}):
        per = defaultdict(list)
        for r in records:
            if r["step"] == step:
                per[r["depth"]].append(r["value"])
        depths = sorted(per)
        means = [sum(per[d]) / len(per[d]) for d in depths]
        out[step] = loglog_slope(depths, means) if all(m > 0 for m in means) else math.nan
    return out


def check_inputs(arch: str, widths: Sequence[int], parametrizations: Sequence[str], head_dim: int, base_width: int,
                 steps: int, seeds: int) -> None:
    """Refuse, before any work, a coordinate check that cannot run or whose verdict could not be trusted."""
    from ..errors import MuPError
    from .recipe import ARCHS

    widths = list(widths)
    if len(widths) < 2 or widths != sorted(set(widths)):
        raise MuPError(f"--widths needs two or more distinct widths in increasing order, got {widths}.")
    unknown = set(parametrizations) - set(PARAMETRIZATIONS)
    if unknown or not parametrizations:
        raise MuPError(f"--parametrization: unknown {sorted(unknown)}; use some of {', '.join(PARAMETRIZATIONS)}.")
    if arch not in ARCHS:
        raise MuPError(f"--arch {arch!r} is not supported; use one of {', '.join(ARCHS)}.")
    if any(w % head_dim for w in widths) or base_width > widths[0]:
        raise MuPError(f"every width must be a multiple of --head-dim {head_dim}, and --base-width <= {widths[0]}.")
    if steps < 1 or seeds < 1:
        raise MuPError(f"--steps and --seeds must be at least 1, got --steps {steps} --seeds {seeds}.")
    if "mup" in parametrizations and seeds < MIN_VERDICT_SEEDS:
        raise MuPError(f"--seeds {seeds}: the μP verdict needs at least {MIN_VERDICT_SEEDS} seeds (one seed's "
                       "slopes are too noisy to trust: a correct μP model can fail); use --seeds 3, or "
                       "--parametrization sp for plots without a verdict.")
