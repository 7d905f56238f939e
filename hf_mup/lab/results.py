"""A study's results: one row per trial, the per-width LR optima and their drift, `results.csv` / `results.json`,
and the Figure-1 plot (loss against log2 LR, one curve per width, μP beside SP).

Usage:
    summary = report(study, "out")          # results.csv, results.json, lr_transfer.png (grid mode)
    summary["drift"]["train_loss"]["mup"]   # how far the best log2 LR moves across widths
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

DIVERGED_VALUE = 1e3  # the objective of a diverged trial (its losses are recorded as +inf)
STATES = ("COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL")


def trial_rows(study) -> list[dict]:
    """One flat dict per trial (any state): its point or tuned values and what it recorded."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a, hp = t.user_attrs, t.user_attrs.get("hparams", {})
        row = {"number": t.number, "state": t.state.name, "parametrization": t.params.get("parametrization", "mup"),
               "width": t.params.get("width", study.user_attrs["spec"]["recipe"]["width"]),
               "seed": t.params.get("seed", a.get("seed", 0)), "log2_lr": t.params.get("log2_lr"),
               "confirm_of": a.get("confirm_of"),  # a tune trial's rerun with another seed (search.confirm_top)
               "rung": a.get("rung"), "resumes": a.get("resumes")}  # successive halving's legs (lab.halving)
        row["lr"] = 2.0 ** row["log2_lr"] if row["log2_lr"] is not None else None
        recipe = a.get("recipe") or study.user_attrs["spec"]["recipe"]
        row["batch_size"] = recipe["batch_size"]  # the horizon grid's cell (grid_points' optional axes)
        row["token_horizon"] = t.params.get("tokens", recipe["steps"] * recipe["batch_size"] * recipe["seq_len"])
        row["timescale"] = recipe.get("weight_decay_timescale") or None
        for k in ("initializer_range", "input_mult", "output_mult", "attn_mult"):
            row[k] = hp.get(k)
        for k in ("train_loss", "val_loss"):
            v = a.get(k)
            row[k] = math.inf if v == "inf" else v
        for k in ("diverged", "steps_run", "n_params", "tokens", "flops", "seconds"):
            row[k] = a.get(k)
        row["value"] = t.value
        rows.append(row)
    return rows


def confirmed_winner(rows: list[dict]) -> dict | None:
    """Among trials with reruns (`confirm_top`; `rows`: `trial_rows` of complete, non-diverged trials, with their
    `confirm_of`), the best seed-mean validation loss: the winner's number, mean, seeds, the runner-up's mean, the
    margin, the standard error of the difference, and whether the margin is within noise (under 2 standard errors).
    None when nothing was confirmed."""
    groups: dict[int, list[float]] = {}
    for r in rows:
        original = r["number"] if r.get("confirm_of") is None else r["confirm_of"]
        groups.setdefault(original, []).append(r["val_loss"])
    confirmed = {n: v for n, v in groups.items() if len(v) > 1}
    if not confirmed:
        return None

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    def var(v: list[float]) -> float:
        return sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)

    ranked = sorted(confirmed, key=lambda n: mean(confirmed[n]))
    win = confirmed[ranked[0]]
    out = {"trial": ranked[0], "val_loss": mean(win), "seeds": len(win), "spread": math.sqrt(var(win)),
           "candidates": len(confirmed)}
    if len(ranked) > 1:
        run = confirmed[ranked[1]]
        se = math.sqrt(var(win) / len(win) + var(run) / len(run))
        out.update(runner_up=ranked[1], runner_up_val_loss=mean(run), margin=mean(run) - mean(win), se=se,
                   within_noise=mean(run) - mean(win) < 2 * se)
    return out


def trial_line(study) -> str:
    """One line on the study's latest finished trial, for logs without progress bars.

    Usage: `run_tune(..., progress=False, after_trial=lambda st: print(trial_line(st)))`
    """
    finished = [r for r in trial_rows(study) if r["state"] in ("COMPLETE", "FAIL")
                or (r["state"] == "PRUNED" and r["val_loss"] is not None)]  # stopped early, or paused at a rung
    if not finished:
        return f"study {study.study_name!r}: no finished trial yet"
    r = max(finished, key=lambda r: r["number"])
    done = sum(x["state"] == "COMPLETE" for x in finished)
    point = f"{r['parametrization']} width {r['width']} seed {r['seed']}, log2 LR {r['log2_lr']:.2f}" \
        if r["log2_lr"] is not None else f"width {r['width']}"
    if r["state"] == "FAIL":
        result = "failed"
    elif r["diverged"]:
        result = "diverged"
    else:
        result = f"train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}"
    if r["state"] == "PRUNED":
        result += f" at rung {r['rung']}" if r["rung"] is not None else f", pruned after {r['steps_run']} steps"
    seconds = f" ({r['seconds']:.0f} s)" if r["seconds"] is not None else ""
    return f"trial {r['number']} ({point}): {result}{seconds}; {done} complete"


def cell_of(row: dict) -> tuple:
    """A grid row's (batch size, token horizon, timescale): one cell of a horizon grid."""
    return row["batch_size"], row["token_horizon"], row["timescale"] or 0.0


def base_cell(rows: list[dict], one_timescale: bool = False) -> list[dict]:
    """The complete rows at the grid's smallest batch size and, at it, the smallest token horizon (every row of a
    grid over widths and LRs only); with `one_timescale`, only those at its most common timescale. `transfer`
    picks its LR and timescale here, Figure 1 plots the most common timescale; `fit_horizon` reads every cell."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        return []
    base = min(cell_of(r)[:2] for r in done)
    done = [r for r in done if cell_of(r)[:2] == base]
    if one_timescale:
        taus = [cell_of(r)[2] for r in done]
        common = max(sorted(set(taus)), key=taus.count)
        done = [r for r in done if cell_of(r)[2] == common]
    return done


def lr_optima(rows: list[dict], metric: str = "train_loss") -> dict:
    """Per parametrization: the seed-mean loss curve of each width, its argmin log2 LR, and the drift across widths
    (at the grid's `base_cell`)."""
    out: dict[str, Any] = {}
    done = base_cell(rows, one_timescale=True)
    for param in sorted({r["parametrization"] for r in done}):
        curves: dict[int, dict[float, list[float]]] = {}
        seen = set()
        for r in sorted(done, key=lambda r: r["number"]):
            key = (r["width"], r["log2_lr"], r["seed"])
            if r["parametrization"] != param or key in seen:
                continue
            seen.add(key)  # a point run twice (a race between workers) counts once
            curves.setdefault(r["width"], {}).setdefault(r["log2_lr"], []).append(r[metric])
        widths: dict[int, dict[str, Any]] = {}
        for w, curve in sorted(curves.items()):
            mean = {x: sum(v) / len(v) for x, v in sorted(curve.items())}
            finite = {x: m for x, m in mean.items() if math.isfinite(m)}
            best = min(finite, key=lambda x: finite[x]) if finite else None
            widths[w] = {"log2_lr": best, "loss": finite[best] if best is not None else None,
                         "n_seeds": min(map(len, curve.values())),
                         "curve": {f"{x:g}": (m if math.isfinite(m) else None) for x, m in mean.items()}}
        argmins = [v["log2_lr"] for v in widths.values() if v["log2_lr"] is not None]
        out[param] = {"optimum": widths, "drift": max(argmins) - min(argmins) if argmins else None}
    return out


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def report(study, out: str | Path, stem: str = "results", plot_name: str | None = "lr_transfer.png",
           metric: str = "train_loss", extra: dict | None = None) -> dict:
    """Write `<stem>.csv` and `<stem>.json` (every trial) and, for a grid, the Figure-1 plot; returns the JSON dict.

    Usage: `summary = report(study, "out")`
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    spec = study.user_attrs["spec"]
    if rows:
        with open(out / f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    result = {"study": study.study_name, "spec": spec,
              "counts": {s: sum(r["state"] == s for r in rows) for s in STATES},
              "objective": f"validation loss; diverged trials score {DIVERGED_VALUE:g} and record +inf (null)",
              **(extra or {})}
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if spec["mode"] == "grid":
        result["optimum"] = {m: lr_optima(rows, m) for m in ("train_loss", "val_loss")}
        result["drift"] = {m: {p: v["drift"] for p, v in o.items()} for m, o in result["optimum"].items()}
        result["plot_metric"] = metric
        if plot_name and done:
            plot_lr_transfer(result["optimum"][metric], spec, out / plot_name, metric)
        if len({cell_of(r) for r in done}) > 1:  # a horizon grid: η* (and τ*) against batch and tokens, fitted
            from .scaling import fit_horizon, plot_horizon

            result["horizon_fit"] = fit = fit_horizon(rows, metric)
            (out / "horizon_fit.json").write_text(json.dumps(_json_safe(fit), indent=1, ensure_ascii=False))
            if plot_name:
                plot_horizon(fit, out / "horizon.png", f"{spec['recipe']['arch']} width {fit['width']}, {metric}")
    else:
        from .search import param_importance, plot_slices

        ok = [r for r in done if not r["diverged"]]
        result["best"] = min(ok, key=lambda r: r["val_loss"]) if ok else None
        result["importance"] = param_importance(study)  # which settings matter (None: too few trials)
        if plot_name and ok:
            plot_slices(study, out / "tune_slices.png", result["importance"])
    timing: dict[str, list[float]] = {}
    for r in done:
        timing.setdefault(f"{r['parametrization']}/w{r['width']}", []).append(r["seconds"])
    result["seconds_per_trial"] = {k: round(sum(v) / len(v), 2) for k, v in sorted(timing.items())}
    result["trials"] = rows
    (out / f"{stem}.json").write_text(json.dumps(_json_safe(result), indent=1, ensure_ascii=False))
    return result


def plot_width_curves(ax, optimum: dict, widths: list, cmap, label: str = "width", star: int = 13) -> None:
    """Loss against log2 LR, one curve per width of `optimum` (`lr_optima`'s), a star at each width's best LR."""
    for w, o in optimum.items():
        color = cmap(0.85 * widths.index(w) / max(1, len(widths) - 1))
        xs = [(float(x), v) for x, v in o["curve"].items() if v is not None]
        if xs:
            ax.plot(*zip(*xs), "o-", ms=3, lw=1.3, color=color, label=f"{label} {w}")
        if o["log2_lr"] is not None:
            ax.plot(o["log2_lr"], o["loss"], "*", ms=star, color=color, markeredgecolor="black")


def plot_lr_transfer(optima: dict, spec: dict, path: Path, metric: str = "train_loss") -> None:
    """Figure 1 of Tensor Programs V: loss against log2 LR, one curve per width, μP and SP side by side."""
    from ..extras import require

    require("sweep", "matplotlib", what="the LR-transfer plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in ("mup", "sp") if p in optima]
    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 4.5), dpi=120, squeeze=False, sharey=True)
    widths = sorted({w for p in params for w in optima[p]["optimum"]})
    cmap = plt.get_cmap("viridis")
    values = [v for p in params for o in optima[p]["optimum"].values() for v in o["curve"].values() if v is not None]
    for ax, param in zip(axes[0], params):
        plot_width_curves(ax, optima[param]["optimum"], widths, cmap)
        recipe = spec["recipe"]
        name = (f"μP (base width {recipe['base_width']}, output_mult {recipe['mup'].get('output_mult', 1.0):g})"
                if param == "mup" else "SP")
        drift = optima[param]["drift"]
        ax.set_title(f"{name}: optimum drift {drift:g}" if drift is not None else name, fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if values:
        low = min(values)
        axes[0][0].set_ylim(low - 0.05, min(max(values), low + 2.5) + 0.05)
    axes[0][0].set_ylabel(f"{'training' if metric == 'train_loss' else 'validation'} loss (seed mean)")
    r, d = spec["recipe"], spec["data"]
    text = d["dataset"] or Path(d["train_file"] or "WikiText-2").name
    tokens = "bytes" if d["tokenizer"] == "bytes" else f"BPE {d['vocab_size']}"
    names = {"gpt2": "GPT-2", "bert": "BERT masked LM", "llama": "Llama", "mixtral": "Mixtral (MoE)"}
    model = names.get(r["arch"], r["arch"])
    optimizer = {"adamw": "AdamW", "lion": "Lion", "muon": "Muon (μP)", "muon_torch": "Muon (torch's LR)"}.get(
        r["optimizer"], r["optimizer"])
    fig.suptitle(f"{model}, {r['layers']} layers, head size {r['head_dim']}, seq {r['seq_len']}, {text} as "
                 f"{tokens}, {r['steps']} {optimizer} steps, batch {r['batch_size']}; ★ = best LR per width",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------- the pipeline's report


def table_markdown(table: list[dict], tasks: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(("model", "hyperparameters", "pretraining val loss", *tasks)) + " |",
             "|" + "---|" * (3 + len(tasks))]
    for e in table:
        cells = [f"{100 * e[t]['accuracy']:.1f} ± {100 * e[t]['spread']:.1f}" if t in e else "–" for t in tasks]
        lines.append("| " + " | ".join((e["model"], e["hyperparameters"], f"{e['pretrain_val_loss']:.3f}", *cells))
                     + " |")
    return "\n".join(lines) + "\n"


def regret_markdown(regret: dict | None) -> str:
    if not regret:
        return ""
    return (f"\nRegret of μTransfer: {regret['regret']:+.3f} nats ({regret['mutransfer_loss']:.3f} against the best "
            f"full-width SP grid row {regret['best_sp_grid_row']}, {regret['best_sp_grid_loss']:.3f}); the published-LR "
            f"baseline reaches {regret['published_lr_loss']:.3f}: μTransfer "
            f"{'beats' if regret['beats_published'] else 'does not beat'} it.\n")


def plot_curves(pretrain: dict, path: Path) -> None:
    from ..extras import require

    require("sweep", "matplotlib", what="the pipeline's report (pretrain_curves.png)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, result in pretrain.items():
        train = [(h["step"], h["loss"]) for h in result["history"] if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in result["history"] if "eval_loss" in h]
        line, = ax.plot(*zip(*train), lw=1, alpha=0.6, label=f"{row} (train)")
        if evals:
            ax.plot(*zip(*evals), "o-", color=line.get_color(), label=f"{row} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
