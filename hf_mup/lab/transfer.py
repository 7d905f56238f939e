"""μTransfer: turn a sweep's best proxy trial into the target's `Recipe`, with what tuning cost.

Usage:
    result = transfer(study, target_config, target_tokens=2e9)
    result.save("hparams.json")          # recipes/gpt2_wikitext.py --hparams hparams.json trains from it
    result.recipe                        # the proxy's recipe at the target's shape: everything it trained with,
                                         # moved to the target's batch and tokens by a scaling rule (default: published)

The target is a config of the proxy's architecture: GPT-2 or Llama (causal LMs) or BERT (masked LM).

Which trial: in tune mode, the complete, non-diverged trial with the lowest validation loss, or, where the top trials
were rerun with more seeds (`hf_mup.lab.search.confirm_top`), the one with the lowest seed-mean, its margin over the
runner-up set against the seeds' noise (`source.confirmed`, and a note). In grid mode, the μP
learning rate with the lowest seed-mean validation loss at the *widest* μP width of the grid (the width closest to
the target; under μP the optimum should not depend on it) with the grid's fixed multipliers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MuPError
from ..rules import timescale_of
from .recipe import Recipe, config_fields_of, shape_of
from .results import base_cell, confirmed_winner, trial_rows
from .scaling import rule_named


@dataclass(frozen=True)
class Transferred:
    """A transfer's result: the target's `recipe`, the proxy trial it came from (`source`), the tuning `cost` and
    `notes` on what may not transfer. `to_dict` / `save` give the `hparams.json` the recipes read."""

    recipe: Recipe
    source: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "source": self.source, "cost": self.cost, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transferred:
        if "recipe" not in d:
            raise MuPError("this hparams JSON has no 'recipe': it was written by an older hf_mup; run hf-mup transfer "
                           "again on the study.")
        return cls(Recipe.from_dict(d["recipe"]), d.get("source", {}), d.get("cost", {}), tuple(d.get("notes", ())))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Transferred:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """What `hf-mup transfer` prints: where the recipe came from, by which rule, what it trains with, the notes
        and the tuning cost."""
        r, src, cost = self.recipe, self.source, self.cost
        decay = (f"weight-decay timescale {r.weight_decay_timescale:.3g} of training (λ {r.decay:.4g})"
                 if r.weight_decay_timescale else f"weight_decay {r.weight_decay:g} ({r.weight_decay_mode})")
        rule = src.get("rule", {"name": "copy", "source": "copied"})
        lines = [f"from trial {src['trial']} of study {src['study']!r} (proxy width {src['proxy_width']}, batch "
                 f"{src.get('proxy_batch_size')}, {src.get('proxy_tokens', 0):,} tokens), {rule['name']} rule "
                 f"({rule['source']}): {r.optimizer} lr {r.lr:.4g}, betas {r.betas}, {decay}, batch {r.batch_size}, "
                 f"{r.steps:,} steps, {r.schedule} schedule, warmup {r.warmup_frac:g}, initializer_range "
                 f"{r.initializer_range:.4g}, "
                 + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.mup.items())]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"tuning cost: {cost['tuning_flops']:.3g} FLOPs over {cost['trials']} trials = "
                     f"{cost['fraction']:.3%} of the target's training ({cost['target_params']:,} params × "
                     f"{cost['target_tokens']:.3g} tokens × 6 = {cost['target_flops']:.3g} FLOPs)")
        return "\n".join(lines)

    def describe(self) -> str:
        """What `hf-mup inspect --hparams` prints: what the scaling rule moved, then `training_table`."""
        lines = [f"the {self.recipe.arch} recipe transferred from study {self.source.get('study')!r} (rule "
                 f"{self.source.get('rule', {}).get('name', 'copy')})"]
        lines += [f"  {m['setting']}: {m['from']:.4g} → {m['to']:.4g} ({m['rule']}: {m['why']})"
                  for m in self.source.get("moves", []) if m["from"] != m["to"]]
        return "\n".join([*lines, training_table(self.recipe)])


def best_trial(study) -> tuple[Recipe, dict[str, Any]]:
    """(the proxy recipe to copy, where it came from), by the rule in this module's docstring."""
    spec = study.user_attrs["spec"]
    rows = [r for r in trial_rows(study) if r["state"] == "COMPLETE" and not r["diverged"]]
    recipes = {t.number: t.user_attrs.get("recipe") for t in study.get_trials(deepcopy=False)}
    if spec["mode"] == "tune":
        if not rows:
            raise MuPError(f"study {study.study_name!r} has no complete, non-diverged trial to transfer from.")
        confirmed = confirmed_winner(rows)
        if confirmed is not None:  # the best seed-mean among the reruns of the search's top trials
            return Recipe.from_dict(recipes[confirmed["trial"]]), {
                "trial": confirmed["trial"], "proxy_width": rows[0]["width"], "val_loss": confirmed["val_loss"],
                "confirmed": confirmed}
        searched = sorted((r for r in rows if r["confirm_of"] is None), key=lambda r: r["val_loss"])
        best = searched[0]
        return Recipe.from_dict(recipes[best["number"]]), {
            "trial": best["number"], "proxy_width": best["width"], "val_loss": best["val_loss"],
            "train_loss": best["train_loss"],
            "margin": searched[1]["val_loss"] - best["val_loss"] if len(searched) > 1 else None}
    mup = [r for r in base_cell(rows) if r["parametrization"] == "mup"]
    if not mup:
        raise MuPError(f"grid study {study.study_name!r} has no complete μP trial to transfer from.")
    width = max(r["width"] for r in mup)
    by_point: dict[tuple, list[dict]] = {}  # (log2 LR, timescale): a horizon grid's base cell may vary both
    for r in mup:
        if r["width"] == width:
            by_point.setdefault((r["log2_lr"], r["timescale"] or 0.0), []).append(r)
    point = min(by_point, key=lambda x: sum(r["val_loss"] for r in by_point[x]) / len(by_point[x]))
    best = min(by_point[point], key=lambda r: r["val_loss"])
    val = sum(r["val_loss"] for r in by_point[point]) / len(by_point[point])
    return Recipe.from_dict(recipes[best["number"]]).replace(seed=0), {
        "trial": best["number"], "trials": sorted(r["number"] for r in by_point[point]), "proxy_width": width,
        "val_loss": val, "rule": "μP LR (and timescale) with the lowest seed-mean validation loss at the widest "
                                 "width (the smallest batch and token horizon of a horizon grid)"}


def noise_notes(source: dict[str, Any]) -> list[str]:
    """What a tune study's winner rests on: its margin over the runner-up against the seeds' noise."""
    c = source.get("confirmed")
    if c is None:
        margin = source.get("margin")
        return [] if margin is None else [
            f"the winner (trial {source['trial']}) leads the runner-up by {margin:.4f} in validation loss on one seed "
            "each: that margin may be noise. Rerun the top trials with more seeds before transferring: hf-mup sweep "
            "--mode tune ... --confirm-top 3 --confirm-seeds 3 (hf_mup.lab.search.confirm_top)"]
    if "margin" not in c:
        return [f"only trial {c['trial']} was rerun ({c['seeds']} seeds): no runner-up to compare it with"]
    line = (f"the winner (trial {c['trial']}, {c['seeds']} seeds, mean {c['val_loss']:.4f} ± {c['spread']:.4f}) leads "
            f"trial {c['runner_up']} by {c['margin']:.4f} (standard error of the difference {c['se']:.4f})")
    return [line + (": within noise, the two are not told apart; either is as good a transfer, or rerun with more "
                    "seeds" if c["within_noise"] else "")]


def transfer(study, target_config, target_tokens: float | None = None, batch_size: int | None = None,
             allow_depth_change: bool = False, rule: str = "published", fit: dict[str, Any] | None = None,
             allow_extrapolation: bool = False) -> Transferred:
    """The target's recipe: the best proxy trial's, at the target's shape, for `target_tokens` in batches of
    `batch_size` (default: the proxy's), and the tuning cost.

    Usage: `transfer(hf_mup.lab.storage.load_study("tune", url), GPT2Config(n_embd=1024, n_layer=2)).recipe`

    Everything the proxy trained with carries over: the LR, init and multipliers, μP settings, optimizer, β, ε,
    weight decay and its mode, schedule, warmup and clipping. The target's config gives the shape and any field it
    sets beyond it (an MLP size, key/value heads, rope settings: `Recipe.config`, a note where the proxy differed).

    Batch size and tokens: `rule` moves the LR, the weight-decay timescale and the warmup from the proxy's batch and
    tokens to the target's (`hf_mup.lab.scaling`): "published" (the papers' exponents, the default), "fitted" (the
    exponents `fit`, a `fit_horizon` result, measured on the proxy; past the measured range by more than
    `EXTRAPOLATION_LIMIT` refused unless `allow_extrapolation`) or "copy" (plain μTransfer). `source["moves"]`
    lists what moved, by which rule and by how much.

    Depth: a proxy tuned with depth scaling (`hf-mup sweep --base-layers`, CompleteP) transfers to any depth; without
    it a target of another depth is refused, since μP fixes the LR across width only, unless `allow_depth_change`
    (what Tensor Programs V did for BERT: copy and hope).

    Cost: 6·params·tokens summed over every trial that trained in the study, against 6·target params·`target_tokens`
    (default 20 tokens per parameter, Chinchilla's ratio); target params from the config built on the meta device.
    """
    from ..model import MuPModel

    spec = study.user_attrs["spec"]
    proxy = Recipe.from_dict(spec["recipe"])
    if target_config.model_type != proxy.arch:
        raise MuPError(f"study {study.study_name!r} tuned a {proxy.arch} proxy; the target config is a "
                       f"{target_config.model_type}: transfer needs the same architecture.")
    depth_scaled = proxy.mup.get("base_num_layers") is not None
    if target_config.num_hidden_layers != proxy.layers and not depth_scaled and not allow_depth_change:
        raise MuPError(
            f"The target has {target_config.num_hidden_layers} layers, the proxy of study {study.study_name!r} "
            f"{proxy.layers}: μP fixes the learning rate across width only, and without depth scaling the optimum "
            "moves with depth. Tune the proxy with depth scaling (hf-mup sweep --layers "
            f"{proxy.layers} --base-layers {proxy.layers}, i.e. MuPConfig(base_num_layers=...), CompleteP), give the "
            "target the proxy's depth, or copy the settings anyway, as Tensor Programs V did for BERT: hf-mup transfer "
            "--allow-depth-change (transfer(..., allow_depth_change=True))."
        )
    scaling = rule_named(rule, fit)
    best, source = best_trial(study)
    shape = shape_of(target_config)
    target = best.replace(**shape)
    fields = config_fields_of(target_config, target)  # what the target's config sets beyond its shape
    target = target.replace(config=fields)
    with torch.device("meta"):  # validates the base width against the target, allocates nothing
        model = MuPModel.from_config(target.model_config(), **target.mup_settings())
        proxy_params = sum(p.numel() for p in MuPModel.from_config(best.model_config(),
                                                                  **best.mup_settings()).parameters())
    n_params = sum(p.numel() for p in model.parameters())
    tokens = float(target_tokens) if target_tokens else 20.0 * n_params
    extrapolated = scaling.check_range(batch_size or best.batch_size, tokens, allow_extrapolation)
    target, moves = scaling.apply(target, batch_size or best.batch_size, tokens, proxy_params, n_params,
                                  allow_extrapolation, proxy=best)
    rows = [r for r in trial_rows(study) if r["flops"]]  # a configuration's legs (lab.halving): one trial, its cost
    cost: dict[str, Any] = {"trials": sum(r["resumes"] is None for r in rows),
                            "tuning_flops": float(sum(r["flops"] for r in rows)), "target_params": n_params,
                            "target_tokens": tokens, "target_flops": 6.0 * n_params * tokens}
    cost["fraction"] = cost["tuning_flops"] / cost["target_flops"]
    notes = [f"the target's config sets {k}={v!r}; the proxy trained with {best.config[k]!r}"
             for k, v in fields.items() if k in best.config and best.config[k] != v]
    if target.layers != best.layers:
        notes.append(f"the target's depth ({target.layers} layers) differs from the proxy's ({best.layers}): "
                     + (f"depth scaling (CompleteP, α = {best.mup.get('depth_alpha', 1.0):g}, base "
                        f"{best.mup['base_num_layers']} layers) carries the settings over" if depth_scaled else
                        "copied without depth scaling (allow_depth_change): the optimum may move"))
    for name in ("head_dim", "vocab_size", "seq_len"):
        if getattr(target, name) != getattr(best, name):
            notes.append(f"the target's {name} ({getattr(target, name)}) differs from the proxy's "
                         f"({getattr(best, name)}): μP transfers across width only, so the optimum may move")
    notes += extrapolated + noise_notes(source)
    if scaling.name != "copy" and (target.batch_size != best.batch_size or target.tokens != best.tokens):
        notes += [f"{m['setting']}: {_number(m['from'])} → {_number(m['to'])} ({m['rule']} rule: {m['why']})"
                  for m in moves if m["from"] != m["to"]]
        if scaling.name == "published":
            notes.append("the published exponents were fit on LLMs of 50M+ parameters over billions of tokens; at a "
                         "small scale the optimum can move otherwise (docs: Batch size and training length): measure "
                         "them on the proxy (hf-mup sweep --batch-sizes / --tokens) and use --rule fitted")
    elif target.batch_size != best.batch_size or target.tokens != best.tokens:
        notes.append(f"batch {best.batch_size} → {target.batch_size}, tokens {best.tokens:.3g} → {target.tokens:.3g} "
                     "with the proxy's LR and decay copied (rule 'copy'): the optimum may move with both")
    source = {"study": study.study_name, "mode": spec["mode"], "task": target.task, **source,
              "log2_lr": math.log2(best.lr), "base_width": best.base_width, "proxy_steps": best.steps,
              "proxy_batch_size": best.batch_size, "proxy_tokens": best.tokens, "proxy_params": proxy_params,
              "rule": {"name": scaling.name, "lr_batch": scaling.lr_batch, "lr_tokens": scaling.lr_tokens,
                       "timescale_tpp": scaling.timescale_tpp, "se": scaling.se, "source": scaling.source},
              "moves": moves}
    return Transferred(target, source, cost, tuple(notes))


def training_table(recipe: Recipe) -> str:
    """What `recipe` trains with, per μP group: LR, weight decay λ, the decay per step (lr·λ) and its timescale as a
    fraction of training; then the batch, steps, tokens and warmup. Built on the meta device: nothing is allocated.

    Usage: `print(training_table(Transferred.load("hparams.json").recipe))` (`hf-mup inspect --hparams`)
    """
    with torch.device("meta"):
        model = recipe.build_model("meta")
    rows: dict[tuple[str, float, float], int] = {}
    for g in recipe.param_groups(model):
        kind = g.get("mup_kind", "all")
        lr, wd = g["lr"], g.get("weight_decay", recipe.decay)
        key = (kind, lr, wd)
        rows[key] = rows.get(key, 0) + sum(p.numel() for p in g["params"])
    lines = [f"{'tensors':10s} {'params':>12s} {'LR':>10s} {'λ':>10s} {'lr·λ/step':>10s} {'timescale':>10s}"]
    for (kind, lr, wd), n in sorted(rows.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        tau = timescale_of(wd, lr, recipe.steps)
        lines.append(f"{kind:10s} {n:12,d} {lr:10.4g} {wd:10.4g} {lr * wd:10.3g} "
                     + (f"{tau:10.3g}" if math.isfinite(tau) else f"{'no decay':>10s}"))
    warmup = recipe.warmup_steps
    lines.append(f"batch {recipe.batch_size} × seq {recipe.seq_len}, {recipe.steps:,} steps = {recipe.tokens:,} tokens; "
                 f"warmup {warmup:,} steps = {warmup * recipe.batch_size * recipe.seq_len:,} tokens "
                 f"({recipe.warmup_frac:g} of training), then {recipe.schedule} to {recipe.final_lr_frac:g} of the LR")
    return "\n".join(lines)


def _number(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"
