"""Transfer across batch size and training length: the rules that move the LR, the weight-decay timescale and the
warmup from the proxy's batch and tokens to the target's, on top of μP (width) and CompleteP (depth).

Usage:
    fit = fit_horizon(trial_rows(study))                # a sweep grid over LR × batch sizes × tokens (× timescales)
    rule = ScalingRule.fitted(fit)                      # or PUBLISHED, or COPY
    recipe, moves = rule.apply(proxy_recipe, batch_size=256, tokens=2e9, proxy_params=..., target_params=...)

A rule is three exponents, applied as power laws in the ratio target/proxy:
- learning rate: η ∝ B^a_B at fixed tokens (Adam's square-root rule: a_B = 1/2, Malladi et al. 2022) and ∝ D^a_D at
  fixed batch (Bjorck et al. 2024: η* ∝ D^-β, β ≈ 0.32, their rule of thumb);
- weight decay, as the AdamW timescale τ = B/(η·λ·D), a fraction of training: τ ∝ TPP^m with TPP = tokens per
  parameter (Bergsma et al. 2025, "Power Lines": m ≈ -0.53; Wang & Aitchison 2024: m = 0, τ constant). The target's
  λ follows from its τ, LR and steps (`hf_mup.rules.weight_decay_from_timescale`);
- warmup: the proxy's fraction of training (`Recipe.warmup_frac`), so its tokens grow with the target's.

`fit_horizon` measures a_B, a_D and m on the proxy with their standard errors; `ScalingRule.fitted` uses them, and
refuses a target far outside the batch sizes and token counts the fit saw unless told to extrapolate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MuPError
from ..rules import weight_decay_from_timescale
from .recipe import Recipe

# How far past the measured batch sizes / token counts a fitted rule goes: a note beyond the range, an error
# beyond this factor unless `allow_extrapolation`.
EXTRAPOLATION_LIMIT = 8.0
RULES = ("published", "fitted", "copy")


@dataclass(frozen=True)
class ScalingRule:
    """Exponents that move a recipe to another batch size and token count (see the module docstring).

    Usage: `PUBLISHED.apply(recipe, batch_size=64, tokens=4e6, proxy_params=1e6, target_params=8e6)`
    """

    name: str
    lr_batch: float  # η ∝ B^lr_batch at fixed tokens
    lr_tokens: float  # η ∝ D^lr_tokens at fixed batch
    timescale_tpp: float  # τ ∝ (tokens per parameter)^timescale_tpp
    source: str
    se: dict[str, float | None] | None = None  # standard errors of the fitted exponents
    batch_range: tuple[float, float] | None = None  # what a fitted rule measured
    tokens_range: tuple[float, float] | None = None

    @classmethod
    def fitted(cls, fit: dict[str, Any]) -> ScalingRule:
        """The rule `fit_horizon` measured; an exponent it could not measure (one batch size, one token count, no
        timescale axis) is taken from `PUBLISHED`, and the source says so."""
        lr, tau = fit.get("lr") or {}, fit.get("timescale") or {}
        taken = []
        values = {}
        for name, measured, published in (("lr_batch", lr.get("batch_exponent"), PUBLISHED.lr_batch),
                                          ("lr_tokens", lr.get("tokens_exponent"), PUBLISHED.lr_tokens),
                                          ("timescale_tpp", tau.get("tokens_exponent"), PUBLISHED.timescale_tpp)):
            values[name] = measured if measured is not None else published
            if measured is None:
                taken.append(name)
        se = {"lr_batch": lr.get("batch_exponent_se"), "lr_tokens": lr.get("tokens_exponent_se"),
              "timescale_tpp": tau.get("tokens_exponent_se")}
        source = (f"fitted on the proxy (width {fit.get('width')}, {len(fit.get('cells', []))} cells)"
                  + (f"; {', '.join(taken)} published (not measured)" if taken else ""))
        return cls("fitted", source=source, se=se, batch_range=_span(lr.get("batch_sizes")),
                   tokens_range=_span(lr.get("tokens")), **values)

    def apply(self, recipe: Recipe, batch_size: int, tokens: float, proxy_params: float, target_params: float,
              allow_extrapolation: bool = False, proxy: Recipe | None = None) -> tuple[Recipe, list[dict[str, Any]]]:
        """`recipe` (the proxy's, at the target's shape) moved to `batch_size` and `tokens`: (the recipe with the
        target's LR, weight-decay timescale, batch and steps, the moves made). `proxy_params` / `target_params`: the
        parameter counts whose tokens-per-parameter ratio moves the timescale. `proxy`: the recipe the proxy trained,
        whose batch and tokens the ratios start from (default: `recipe`'s; a target's sequence length differs).

        Each move is a dict: setting, rule, from, to, factor, why.
        """
        if batch_size < 1 or not (math.isfinite(tokens) and tokens > 0):
            raise MuPError(f"target batch size {batch_size!r} and tokens {tokens!r}: positive numbers.")
        self.check_range(batch_size, tokens, allow_extrapolation)
        proxy = proxy or recipe
        b_ratio, d_ratio = batch_size / proxy.batch_size, tokens / proxy.tokens
        tpp_ratio = d_ratio * proxy_params / target_params
        steps = max(1, math.ceil(tokens / (batch_size * recipe.seq_len)))
        lr = recipe.lr * b_ratio**self.lr_batch * d_ratio**self.lr_tokens
        why = f"× (batch {b_ratio:.3g}×)^{self.lr_batch:+.3g} × (tokens {d_ratio:.3g}×)^{self.lr_tokens:+.3g}"
        se_b, se_d = ((self.se or {}).get(k) for k in ("lr_batch", "lr_tokens"))
        spread = None
        if se_b is not None or se_d is not None:  # the fit's standard errors, propagated to the log2 move
            spread = math.hypot(math.log2(b_ratio) * (se_b or 0.0), math.log2(d_ratio) * (se_d or 0.0))
            why += f"; ± {spread:.2f} log2 from the fit's standard errors"
        moves = [{**_move("learning rate", self, recipe.lr, lr, why), "log2_factor_se": spread}]
        changes: dict[str, Any] = {"lr": lr, "batch_size": batch_size, "steps": steps}
        if (recipe.weight_decay or recipe.weight_decay_timescale) and self.name != "copy":  # copy keeps λ (or τ)
            tau = proxy.timescale * tpp_ratio**self.timescale_tpp
            moves.append(_move("weight-decay timescale (fraction of training)", self, proxy.timescale, tau,
                               f"× (tokens per parameter {tpp_ratio:.3g}×)^{self.timescale_tpp:+.3g}"))
            if recipe.weight_decay_timescale:  # the recipe's own vocabulary: a timescale stays a timescale ...
                changes["weight_decay_timescale"] = tau
            else:  # ... and a λ a λ, in its mode (independent: the decay per step is λ itself, as at an LR of 1)
                changes["weight_decay"] = weight_decay_from_timescale(
                    tau, 1.0 if recipe.weight_decay_mode == "independent" else lr, steps)  # refuses η·λ ≥ 1
        target = recipe.replace(**changes)  # validates: a timescale of one step or less is refused here
        if target.decay != proxy.decay:
            moves.append(_move("weight_decay λ", self, proxy.decay, target.decay,
                               f"the timescale at the target's LR and {steps} steps ({recipe.weight_decay_mode})"))
        warm = lambda r: r.warmup_steps * r.batch_size * r.seq_len  # noqa: E731
        moves.append({"setting": "warmup tokens", "rule": "fraction of training", "from": warm(proxy),
                      "to": warm(target), "factor": warm(target) / max(1, warm(proxy)),
                      "why": f"warmup stays {recipe.warmup_frac:g} of training"})
        return target, moves

    def check_range(self, batch_size: float, tokens: float, allow_extrapolation: bool = False) -> list[str]:
        """Notes for a target outside what a fitted rule measured; a `MuPError` past `EXTRAPOLATION_LIMIT` unless
        `allow_extrapolation`."""
        notes = []
        for what, value, span in (("batch size", batch_size, self.batch_range), ("tokens", tokens, self.tokens_range)):
            if span is None:
                continue
            lo, hi = span
            factor = max(value / hi, lo / value)
            if factor <= 1.0 + 1e-9:
                continue
            note = (f"the target's {what} {value:.4g} is {factor:.3g}× outside what the fit measured "
                    f"({lo:.4g}..{hi:.4g}): the {self.name} exponents are extrapolated")
            if factor > EXTRAPOLATION_LIMIT and not allow_extrapolation:
                raise MuPError(f"{note} more than {EXTRAPOLATION_LIMIT:g}×. Measure the proxy closer to the target "
                               f"(hf-mup sweep --batch-sizes / --tokens), use rule 'published', or accept it: "
                               "--allow-extrapolation (allow_extrapolation=True).")
            notes.append(note)
        return notes


def _move(setting: str, rule: ScalingRule, old: float, new: float, why: str) -> dict[str, Any]:
    factor = new / old if old else math.inf
    return {"setting": setting, "rule": rule.name, "from": old, "to": new, "factor": factor,
            "log2_factor": math.log2(factor) if 0 < factor < math.inf else None, "why": why}


def _span(values: Sequence[float] | None) -> tuple[float, float] | None:
    return (float(min(values)), float(max(values))) if values and len(set(values)) > 1 else None


PUBLISHED = ScalingRule(
    "published", lr_batch=0.5, lr_tokens=-0.32, timescale_tpp=-0.53,
    source="η ∝ √B (Malladi et al. 2022, Adam's square-root rule); η ∝ D^-0.32 (Bjorck et al. 2024, rule of thumb); "
           "τ ∝ TPP^-0.53 (Bergsma et al. 2025, Power Lines)")
COPY = ScalingRule("copy", lr_batch=0.0, lr_tokens=0.0, timescale_tpp=0.0,
                   source="plain μTransfer: the proxy's LR and timescale, copied")


def rule_named(name: str, fit: dict[str, Any] | None = None) -> ScalingRule:
    """"published", "copy", or "fitted" (which needs `fit`, `fit_horizon`'s result)."""
    if name == "published":
        return PUBLISHED
    if name == "copy":
        return COPY
    if name == "fitted":
        if not fit:
            raise MuPError("rule 'fitted' needs a fit: the horizon_fit.json an hf-mup sweep over --batch-sizes / "
                           "--tokens wrote (hf-mup transfer --fit PATH).")
        return ScalingRule.fitted(fit)
    raise MuPError(f"unknown scaling rule {name!r}: use one of {', '.join(RULES)}.")


# ------------------------------------------------------------------------------------------------- the fit


def curve_optimum(curve: dict[float, list[float]]) -> dict[str, Any]:
    """The optimum of a seed-mean loss curve over a log grid: the grid's argmin, refined by the parabola through it
    and its two neighbours (kept within them), and whether it sits at the grid's edge (then it is a bound only)."""
    mean = {x: sum(v) / len(v) for x, v in sorted(curve.items()) if v and all(math.isfinite(y) for y in v)}
    if not mean:
        return {"x": None, "grid_x": None, "loss": None, "at_edge": True}
    xs = sorted(mean)
    i = min(range(len(xs)), key=lambda j: mean[xs[j]])
    out = {"x": xs[i], "grid_x": xs[i], "loss": mean[xs[i]], "at_edge": i in (0, len(xs) - 1) or len(xs) < 3}
    if not out["at_edge"]:
        (x0, x1, x2), (y0, y1, y2) = xs[i - 1:i + 2], (mean[xs[i - 1]], mean[xs[i]], mean[xs[i + 1]])
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a > 0:
            out["x"] = min(max(-b / (2 * a), x0), x2)
    return out


def least_squares(xs: list[list[float]], ys: list[float]) -> tuple[list[float], list[float | None], float]:
    """Ordinary least squares y = c + Σ b_k x_k: (coefficients with the intercept first, their standard errors (None
    without residual degrees of freedom), the residual RMS)."""
    import numpy as np

    a = np.column_stack([np.ones(len(ys)), np.asarray(xs, dtype=float).reshape(len(ys), -1)])
    y = np.asarray(ys, dtype=float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ coef
    dof = len(y) - a.shape[1]
    rms = float(np.sqrt(np.mean(resid**2)))
    if dof <= 0:
        return [float(c) for c in coef], [None] * len(coef), rms
    cov = float(resid @ resid) / dof * np.linalg.pinv(a.T @ a)
    return [float(c) for c in coef], [float(math.sqrt(max(v, 0.0))) for v in np.diag(cov)], rms


def fit_horizon(rows: list[dict], metric: str = "val_loss") -> dict[str, Any]:
    """The LR optimum (and the timescale optimum) against batch size and tokens, from a grid's trial rows at one
    width (`hf_mup.lab.results.trial_rows`; the widest μP width if several).

    Usage: `fit = fit_horizon(trial_rows(study)); fit["lr"]["tokens_exponent"]`

    Each (batch, tokens, timescale) cell's optimum is `curve_optimum` of its seed-mean `metric` against log2 LR; the
    LR fit regresses log2 η* on log2 B and log2 D (the axes that vary) over the cells at the grid's most common
    timescale whose optimum is inside the LR grid. The timescale fit (where a cell has several) takes, per (batch,
    tokens), the timescale whose best LR gives the lowest loss, and regresses log2 τ* on log2 D: at one width D
    stands for tokens per parameter.
    """
    done = [r for r in rows if r["state"] == "COMPLETE" and r["parametrization"] == "mup"]
    if not done:
        raise MuPError("no complete μP trial to fit.")
    width = max(r["width"] for r in done)
    cells: dict[tuple, dict[float, list[float]]] = {}
    seen = set()
    for r in sorted(done, key=lambda r: r["number"]):
        key = (r["batch_size"], r["token_horizon"], r["timescale"], r["log2_lr"], r["seed"])
        if r["width"] != width or key in seen:
            continue
        seen.add(key)
        cells.setdefault(key[:3], {}).setdefault(r["log2_lr"], []).append(r[metric])
    table = []
    for (b, d, tau), curve in sorted(cells.items(), key=lambda kv: tuple(-1 if v is None else v for v in kv[0])):
        o = curve_optimum(curve)
        table.append({"batch_size": b, "tokens": d, "timescale": tau, "log2_lr": o["x"], "grid_log2_lr": o["grid_x"],
                      "loss": o["loss"], "at_edge": o["at_edge"], "n_seeds": min(map(len, curve.values())),
                      "curve": {f"{x:g}": sum(v) / len(v) for x, v in sorted(curve.items())}})
    taus = [c["timescale"] for c in table]
    common_tau = max(set(taus), key=lambda t: (taus.count(t), -1 if t is None else t))
    out: dict[str, Any] = {"metric": metric, "width": width, "n_params": _n_params(done, width), "cells": table,
                           "lr": _fit_lr([c for c in table if c["timescale"] == common_tau], common_tau),
                           "timescale": _fit_timescale(table)}
    out["summary"] = fit_summary(out)
    return out


def _n_params(rows: list[dict], width: int) -> int | None:
    return next((r["n_params"] for r in rows if r["width"] == width and r["n_params"]), None)


def _fit_lr(cells: list[dict], timescale: float | None) -> dict[str, Any]:
    used = [c for c in cells if c["log2_lr"] is not None and not c["at_edge"]]
    batches, tokens = sorted({c["batch_size"] for c in used}), sorted({c["tokens"] for c in used})
    axes = [("batch", batches), ("tokens", tokens)]
    varying = [name for name, values in axes if len(values) > 1]
    out: dict[str, Any] = {"timescale": timescale, "cells_used": len(used), "cells_at_edge": len(cells) - len(used),
                           "batch_sizes": batches, "tokens": tokens, "batch_exponent": None, "tokens_exponent": None,
                           "batch_exponent_se": None, "tokens_exponent_se": None, "intercept": None,
                           "residual_log2": None}
    if not varying or len(used) < len(varying) + 1:
        return out
    xs = [[math.log2(c["batch_size" if n == "batch" else "tokens"]) for n in varying] for c in used]
    coef, se, rms = least_squares(xs, [c["log2_lr"] for c in used])
    out.update(intercept=coef[0], residual_log2=rms)
    for name, b, s in zip(varying, coef[1:], se[1:]):
        out[f"{name}_exponent"], out[f"{name}_exponent_se"] = b, s
    return out


def _fit_timescale(cells: list[dict]) -> dict[str, Any] | None:
    by_bd: dict[tuple, dict[float, list[float]]] = {}
    for c in cells:
        if c["timescale"] is not None and c["loss"] is not None:
            by_bd.setdefault((c["batch_size"], c["tokens"]), {})[math.log2(c["timescale"])] = [c["loss"]]
    optima = []
    for (b, d), curve in sorted(by_bd.items()):
        if len(curve) > 1:
            o = curve_optimum(curve)
            optima.append({"batch_size": b, "tokens": d, "log2_timescale": o["x"], "at_edge": o["at_edge"],
                           "loss": o["loss"]})
    if not optima:
        return None
    out: dict[str, Any] = {"optima": optima, "tokens": sorted({o["tokens"] for o in optima}),
                           "tokens_exponent": None, "tokens_exponent_se": None}
    used = [o for o in optima if not o["at_edge"]]
    if len({o["tokens"] for o in used}) > 1:
        coef, se, rms = least_squares([[math.log2(o["tokens"])] for o in used], [o["log2_timescale"] for o in used])
        out.update(tokens_exponent=coef[1], tokens_exponent_se=se[1], intercept=coef[0], residual_log2=rms)
    return out


def _exponent(value: float | None, se: float | None) -> str:
    return "(not measured)" if value is None else f"{value:+.2f}" + ("" if se is None else f" ± {se:.2f}")


def fit_summary(fit: dict[str, Any]) -> str:
    """One line: the fitted exponents with their standard errors, and the cells they rest on."""
    lr, tau = fit["lr"], fit.get("timescale") or {}
    line = (f"η* ∝ B^{_exponent(lr['batch_exponent'], lr['batch_exponent_se'])} · "
            f"D^{_exponent(lr['tokens_exponent'], lr['tokens_exponent_se'])} ({lr['cells_used']} cells; "
            f"{lr['cells_at_edge']} with the optimum at the LR grid's edge left out)")
    if tau:
        line += f"; τ* ∝ D^{_exponent(tau.get('tokens_exponent'), tau.get('tokens_exponent_se'))}"
    return line


def plot_horizon(fit: dict[str, Any], path, title: str = "") -> None:
    """η* against tokens (one line per batch size) and against batch size (one per token count), with the fit; the
    timescale's optima beside them when measured."""
    from ..extras import require

    require("sweep", "matplotlib", what="the horizon plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr, tau = fit["lr"], fit.get("timescale")
    cells = [c for c in fit["cells"] if c["timescale"] == lr["timescale"] and c["log2_lr"] is not None]
    panels = 3 if tau else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=110)
    cmap = plt.get_cmap("viridis")
    for ax, (x_key, line_key, x_name) in zip(axes, (("tokens", "batch_size", "tokens"),
                                                    ("batch_size", "tokens", "batch size"))):
        lines = sorted({c[line_key] for c in cells})
        for i, value in enumerate(lines):
            pts = sorted((c[x_key], c["log2_lr"], c["at_edge"]) for c in cells if c[line_key] == value)
            color = cmap(0.85 * i / max(1, len(lines) - 1))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=color,
                    label=f"{line_key.replace('_', ' ')} {value:g}")
            ax.plot([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], "x", color="red", ms=9)
            if lr["intercept"] is not None:
                xs = sorted({p[0] for p in pts})
                other = math.log2(value)
                pred = [lr["intercept"] + (lr["batch_exponent"] or 0) * (other if line_key == "batch_size" else math.log2(x))
                        + (lr["tokens_exponent"] or 0) * (math.log2(x) if line_key == "batch_size" else other)
                        for x in xs]
                ax.plot(xs, pred, "-", color=color, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x_name)
        ax.set_ylabel("best log2 LR")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"η* ∝ D^a: a = {_exponent(lr['tokens_exponent'], lr['tokens_exponent_se'])}", fontsize=9)
    axes[1].set_title(f"η* ∝ B^a: a = {_exponent(lr['batch_exponent'], lr['batch_exponent_se'])}", fontsize=9)
    if tau:
        ax = axes[2]
        pts = sorted((o["tokens"], o["log2_timescale"], o["at_edge"]) for o in tau["optima"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="C1")
        ax.plot([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], "x", color="red", ms=9)
        if tau["tokens_exponent"] is not None:
            xs = sorted({p[0] for p in pts})
            ax.plot(xs, [tau["intercept"] + tau["tokens_exponent"] * math.log2(x) for x in xs], "-", color="C1")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel("best log2 timescale (fraction of training)")
        ax.set_title(f"τ* ∝ D^m: m = {_exponent(tau['tokens_exponent'], tau['tokens_exponent_se'])}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle((title + "; " if title else "") + "× = optimum at the LR grid's edge (not fitted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
