"""`MuPTrainer`: `transformers.Trainer` with μP optimizer groups.

Usage: `MuPTrainer(model=hf_mup.MuPModel.from_config(config, base_hidden_size=256), args=args, ...).train()`
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from .config import MuPConfig
from .errors import MuPError
from .model import MuPModel, canonical_name, is_mup
from .optim import check_optimizer, mup_param_groups
from .rules import ADAM_LIKE, SGD_LIKE

# `TrainingArguments.optim` values whose update normalises the gradient entrywise (Adam-like μP rules) or not (SGD).
ADAM_LIKE_OPTIMS = {
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit",
    "adagrad", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
}
SGD_LIKE_OPTIMS = {"sgd"}
KINDS = ("hidden", "input", "readout")


def optimizer_family(optim: str) -> str:
    """The μP rule family ("adamw" or "sgd") of a `TrainingArguments.optim` name, or a `MuPError`."""
    optim = str(getattr(optim, "value", optim))
    if optim in ADAM_LIKE_OPTIMS:
        return ADAM_LIKE[0]
    if optim in SGD_LIKE_OPTIMS:
        return SGD_LIKE[0]
    raise MuPError(
        f"MuPTrainer cannot scale optim={optim!r} with μP: it is neither Adam-like nor SGD (or untested, e.g. "
        f"Adafactor's relative steps, Lion, schedule-free). Use one of {sorted(ADAM_LIKE_OPTIMS | SGD_LIKE_OPTIMS)}."
    )


class MuPTrainer(Trainer):
    """A drop-in `transformers.Trainer` for μP models.

    Usage: `trainer = MuPTrainer(model=model, args=TrainingArguments(..., optim="adamw_torch"), train_dataset=ds)`

    - Builds μP parameter groups for the optimizer `args.optim` names, with `args.learning_rate` as η and
      `args.weight_decay` applied in `mup_weight_decay_mode` ("width_independent", "coupled", "independent") to the
      parameters the Trainer decays (not biases and norms). HF schedulers then scale every group relatively.
    - Refuses, with a `MuPError`, an optimizer passed through `optimizers=` that lacks μP groups.
    - Logs the learning rate of each kind of tensor (`learning_rate/hidden`, `/input`, `/readout`).
    A stock (non-μP) model is trained exactly as `Trainer` would, so SP baselines can share the script.
    """

    def __init__(self, *args: Any, mup_weight_decay_mode: str = "width_independent", **kwargs: Any):
        self.mup_weight_decay_mode = mup_weight_decay_mode
        super().__init__(*args, **kwargs)
        if self.optimizer is not None and self.model is not None:
            check_optimizer(self.model, self.optimizer)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any):
        if trial is not None and self.hp_search_backend is not None and hasattr(trial, "suggest_float"):
            # transformers 5 calls model_init(trial) before sampling hp_space: sample first so the μP model is
            # built with the trial's multipliers (optuna returns the same value when asked again).
            self.hp_space(trial)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is not None or not is_mup(opt_model):
            return super().create_optimizer(model)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            family = ADAM_LIKE[0] if not issubclass(optimizer_cls, torch.optim.SGD) else SGD_LIKE[0]
        else:
            family = optimizer_family(self.args.optim)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        decay = {canonical_name(n) for n in self.get_decay_parameter_names(opt_model)}
        groups = mup_param_groups(
            opt_model,
            lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            optimizer=family,
            weight_decay_mode=self.mup_weight_decay_mode,
            no_decay=lambda name: name not in decay,
        )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        check_optimizer(opt_model, self.optimizer)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        if "learning_rate" in logs and groups and "lr_mult" in groups[0]:
            # The Trainer logs group 0's LR; schedulers scale all groups alike, so each kind's LR follows from it.
            eta = logs["learning_rate"] / groups[0]["lr_mult"]
            for kind in KINDS:
                group = next((g for g in groups if g.get("mup_kind") == kind), None)
                if group is not None:
                    logs[f"learning_rate/{kind}"] = eta * group["lr_mult"]
        super().log(logs, start_time)


def mup_model_init(config, base_hidden_size: int, model_class: type | str | None = None, **fixed: Any):
    """A `model_init` for `Trainer.hyperparameter_search` that builds μP models from the trial's parameters.

    Usage: `MuPTrainer(model_init=mup_model_init(config, base_hidden_size=256), ...).hyperparameter_search(...)`

    A trial parameter named like a `MuPConfig` field (`output_mult`, `input_mult`, `attn_mult`, ...) goes to μP,
    one named like a model config attribute (`initializer_range`) to the config; `TrainingArguments` fields
    (`learning_rate`, ...) are left to the Trainer.
    """
    mup_fields = {f.name for f in dataclasses.fields(MuPConfig)}
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}

    def model_init(trial=None):
        params = _trial_params(trial)
        cfg = copy.deepcopy(config)
        for key, value in params.items():
            if key not in mup_fields and key not in trainer_fields and hasattr(cfg, key):
                setattr(cfg, key, value)
        options = {**fixed, **{k: v for k, v in params.items() if k in mup_fields}}
        return MuPModel.from_config(cfg, base_hidden_size=base_hidden_size, model_class=model_class, **options)

    return model_init


def _trial_params(trial) -> dict[str, Any]:
    if trial is None:
        return {}
    if isinstance(trial, dict):  # ray / wandb pass a dict
        return trial
    return dict(getattr(trial, "params", {}))  # optuna
