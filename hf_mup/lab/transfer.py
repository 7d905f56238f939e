"""μTransfer: turn a sweep's best proxy trial into the target's `Recipe`, with what tuning cost.

Usage:
    result = transfer(study, target_config, target_tokens=2e9)
    result.save("hparams.json")          # recipes/gpt2_wikitext.py --hparams hparams.json trains from it
    result.recipe                        # the proxy's recipe at the target's shape: everything it trained with

The target is a config of the proxy's architecture: GPT-2 or Llama (causal LMs) or BERT (masked LM).

Which trial: in tune mode, the complete, non-diverged trial with the lowest validation loss. In grid mode, the μP
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
from .recipe import Recipe, config_fields_of, shape_of
from .results import trial_rows


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


def best_trial(study) -> tuple[Recipe, dict[str, Any]]:
    """(the proxy recipe to copy, where it came from), by the rule in this module's docstring."""
    spec = study.user_attrs["spec"]
    rows = [r for r in trial_rows(study) if r["state"] == "COMPLETE" and not r["diverged"]]
    recipes = {t.number: t.user_attrs.get("recipe") for t in study.get_trials(deepcopy=False)}
    if spec["mode"] == "tune":
        if not rows:
            raise MuPError(f"study {study.study_name!r} has no complete, non-diverged trial to transfer from.")
        best = min(rows, key=lambda r: r["val_loss"])
        return Recipe.from_dict(recipes[best["number"]]), {
            "trial": best["number"], "proxy_width": best["width"], "val_loss": best["val_loss"],
            "train_loss": best["train_loss"]}
    mup = [r for r in rows if r["parametrization"] == "mup"]
    if not mup:
        raise MuPError(f"grid study {study.study_name!r} has no complete μP trial to transfer from.")
    width = max(r["width"] for r in mup)
    by_lr: dict[float, list[dict]] = {}
    for r in mup:
        if r["width"] == width:
            by_lr.setdefault(r["log2_lr"], []).append(r)
    lr = min(by_lr, key=lambda x: sum(r["val_loss"] for r in by_lr[x]) / len(by_lr[x]))
    best = min(by_lr[lr], key=lambda r: r["val_loss"])
    val = sum(r["val_loss"] for r in by_lr[lr]) / len(by_lr[lr])
    return Recipe.from_dict(recipes[best["number"]]).replace(seed=0), {
        "trial": best["number"], "trials": sorted(r["number"] for r in by_lr[lr]), "proxy_width": width,
        "val_loss": val, "rule": "μP LR with the lowest seed-mean validation loss at the widest width"}


def transfer(study, target_config, target_tokens: float | None = None, batch_size: int | None = None,
             allow_depth_change: bool = False) -> Transferred:
    """The target's recipe: the best proxy trial's, at the target's shape, for `target_tokens` in batches of
    `batch_size` (default: the proxy's), and the tuning cost.

    Usage: `transfer(hf_mup.lab.storage.load_study("tune", url), GPT2Config(n_embd=1024, n_layer=2)).recipe`

    Everything the proxy trained with carries over: the LR, init and multipliers, μP settings, optimizer, β, ε,
    weight decay and its mode, schedule, warmup and clipping. The target's config gives the shape and any field it
    sets beyond it (an MLP size, key/value heads, rope settings: `Recipe.config`, a note where the proxy differed).

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
    best, source = best_trial(study)
    shape = shape_of(target_config)
    target = best.replace(**shape, batch_size=batch_size or best.batch_size)
    fields = config_fields_of(target_config, target)  # what the target's config sets beyond its shape
    target = target.replace(config=fields)
    with torch.device("meta"):  # validates the base width against the target, allocates nothing
        model = MuPModel.from_config(target.model_config(), **target.mup_settings())
    n_params = sum(p.numel() for p in model.parameters())
    tokens = float(target_tokens) if target_tokens else 20.0 * n_params
    target = target.replace(steps=max(1, math.ceil(tokens / (target.batch_size * target.seq_len))))
    flops = [r["flops"] for r in trial_rows(study) if r["flops"]]
    cost: dict[str, Any] = {"trials": len(flops), "tuning_flops": float(sum(flops)), "target_params": n_params,
                            "target_tokens": tokens, "target_flops": 6.0 * n_params * tokens}
    cost["fraction"] = cost["tuning_flops"] / cost["target_flops"]
    notes = [f"the target's config sets {k}={v!r}; the proxy trained with {best.config[k]!r}"
             for k, v in fields.items() if k in best.config and best.config[k] != v]
    if target.layers != best.layers:
        notes.append(f"the target's depth ({target.layers} layers) differs from the proxy's ({best.layers}): "
                     + (f"depth scaling (CompleteP, α = {best.mup.get('depth_alpha', 1.0):g}, base "
                        f"{best.mup['base_num_layers']} layers) carries the settings over" if depth_scaled else
                        "copied without depth scaling (allow_depth_change): the optimum may move"))
    for name in ("head_dim", "vocab_size", "seq_len", "batch_size"):
        if getattr(target, name) != getattr(best, name):
            notes.append(f"the target's {name} ({getattr(target, name)}) differs from the proxy's "
                         f"({getattr(best, name)}): μP transfers across width only, so the optimum may move")
    source = {"study": study.study_name, "mode": spec["mode"], "task": target.task, **source,
              "log2_lr": math.log2(best.lr), "base_width": best.base_width, "proxy_steps": best.steps}
    return Transferred(target, source, cost, tuple(notes))
