"""μTransfer: turn a sweep's best proxy trial into the target model's μP settings and training arguments.

Usage:
    hparams, cost = transfer(study, target_config, target_tokens=2e9)
    Path("hparams.json").write_text(json.dumps(hparams))   # recipes/gpt2_wikitext.py --hparams hparams.json

The target is a config of the proxy's architecture: GPT-2 (causal LM) or BERT (masked LM, `source.task` says which).

Which trial: in tune mode, the complete, non-diverged trial with the lowest validation loss. In grid mode, the μP
learning rate with the lowest seed-mean validation loss at the *widest* μP width of the grid (the width closest to
the target; under μP the optimum should not depend on it) with the grid's fixed multipliers.
"""
from __future__ import annotations

import copy

import torch

from ..errors import MuPError
from .sweep import trial_rows


def best_trial(study) -> tuple[dict, dict]:
    """(hparams, source) of the proxy setting to copy, by the rule in this module's docstring."""
    spec = study.user_attrs["spec"]
    rows = [r for r in trial_rows(study) if r["state"] == "COMPLETE" and not r["diverged"]]
    if spec["mode"] == "tune":
        if not rows:
            raise MuPError(f"study {study.study_name!r} has no complete, non-diverged trial to transfer from.")
        best = min(rows, key=lambda r: r["val_loss"])
        hp = {k: best[k] for k in ("log2_lr", "initializer_range", "input_mult", "output_mult", "attn_mult")}
        return hp, {"trial": best["number"], "proxy_width": best["width"], "val_loss": best["val_loss"],
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
    hp = {"log2_lr": lr, **{k: spec[k] for k in ("initializer_range", "input_mult", "output_mult", "attn_mult")}}
    val = sum(r["val_loss"] for r in by_lr[lr]) / len(by_lr[lr])
    return hp, {"trial": best["number"], "trials": sorted(r["number"] for r in by_lr[lr]), "proxy_width": width,
                "val_loss": val, "rule": "μP LR with the lowest seed-mean validation loss at the widest width"}


def transfer(study, target_config, target_tokens: float | None = None,
             allow_depth_change: bool = False) -> tuple[dict, dict]:
    """The target's hparams JSON (`recipes/gpt2_wikitext.py --hparams` reads it) and the tuning cost.

    Usage: `hparams, cost = transfer(hf_mup.lab.sweep.load_study("tune", url), GPT2Config(n_embd=1024, n_layer=2))`,
    `transfer(study_of_a_bert_sweep, BertConfig(hidden_size=1024, num_attention_heads=64, vocab_size=257))`

    Depth: a proxy tuned with depth scaling (`hf-mup sweep --base-layers`, CompleteP) transfers to any depth; without
    it a target of another depth is refused, since μP fixes the LR across width only, unless `allow_depth_change`
    (what Tensor Programs V did for BERT: copy and hope).

    Cost: 6·params·tokens summed over every trial that trained in the study, against 6·target params·`target_tokens`
    (default 20 tokens per parameter, Chinchilla's ratio); target params from the config built on the meta device.
    """
    from ..model import MuPModel
    from .lm import lm_task

    spec = study.user_attrs["spec"]
    if target_config.model_type != spec["arch"]:
        raise MuPError(f"study {study.study_name!r} tuned a {spec['arch']} proxy; the target config is a "
                       f"{target_config.model_type}: transfer needs the same architecture.")
    settings = dict(spec.get("options", {}).get("mup", {}))  # the study's fixed μP settings (ablation knobs, depth)
    depth_scaled = settings.get("base_num_layers") is not None
    if target_config.num_hidden_layers != spec["layers"] and not depth_scaled and not allow_depth_change:
        raise MuPError(
            f"The target has {target_config.num_hidden_layers} layers, the proxy of study {study.study_name!r} "
            f"{spec['layers']}: μP fixes the learning rate across width only, and without depth scaling the optimum "
            "moves with depth. Tune the proxy with depth scaling (hf-mup sweep --layers "
            f"{spec['layers']} --base-layers {spec['layers']}, i.e. MuPConfig(base_num_layers=...), CompleteP), give the "
            "target the proxy's depth, or copy the settings anyway, as Tensor Programs V did for BERT: hf-mup transfer "
            "--allow-depth-change (transfer(..., allow_depth_change=True))."
        )
    hp, source = best_trial(study)
    target_config = copy.deepcopy(target_config)
    target_config.initializer_range = hp["initializer_range"]
    mup = {**settings, "base_hidden_size": spec["base_width"],
           **{k: hp[k] for k in ("output_mult", "input_mult", "attn_mult")}}
    with torch.device("meta"):  # validates the base width against the target, allocates nothing
        model = MuPModel.from_config(target_config, **mup)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = float(target_tokens) if target_tokens else 20.0 * n_params
    flops = [r["flops"] for r in trial_rows(study) if r["flops"]]
    cost = {"trials": len(flops), "tuning_flops": float(sum(flops)), "target_params": n_params,
            "target_tokens": tokens, "target_flops": 6.0 * n_params * tokens}
    cost["fraction"] = cost["tuning_flops"] / cost["target_flops"]
    notes = []
    head_dim = target_config.hidden_size // target_config.num_attention_heads
    if target_config.num_hidden_layers != spec["layers"]:
        notes.append(f"the target's depth ({target_config.num_hidden_layers} layers) differs from the proxy's "
                     f"({spec['layers']}): " + (f"depth scaling (CompleteP, α = {settings.get('depth_alpha', 1.0):g}, "
                     f"base {settings['base_num_layers']} layers) carries the settings over" if depth_scaled else
                     "copied without depth scaling (allow_depth_change): the optimum may move"))
    for name, proxy, target in (("head size", spec["head_dim"], head_dim),
                                ("vocabulary", spec["vocab_size"], target_config.vocab_size)):
        if proxy != target:
            notes.append(f"the target's {name} ({target}) differs from the proxy's ({proxy}): μP transfers across "
                         "width only, so the optimum may move")
    model_config = {"model_type": target_config.model_type, **target_config.to_diff_dict(),
                    "initializer_range": hp["initializer_range"]}
    model_config.pop("mup", None)
    hparams = {
        "mup": mup,
        "training_args": {"learning_rate": 2.0 ** hp["log2_lr"], "adam_beta1": 0.9, "adam_beta2": 0.95,
                          "max_grad_norm": spec["clip"], "weight_decay": 0.0},
        "model_config": model_config,
        "source": {"study": study.study_name, "mode": spec["mode"], "task": lm_task(target_config), **source,
                   "log2_lr": hp["log2_lr"], "base_width": spec["base_width"], "proxy_steps": spec["steps"],
                   "notes": notes, "tuning_cost": cost},
    }
    return hparams, cost
