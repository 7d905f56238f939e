"""`MuPTrainer`: `transformers.Trainer` with μP optimizer groups.

Usage: `MuPTrainer(model=hf_mup.MuPModel.from_config(config, base_hidden_size=256), args=args, ...).train()`
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput

from .config import MuPConfig
from .errors import MuPError
from .model import MuPModel, is_mup, unwrap
from .optim import MUON_UNDER_ZERO, base_lr, check_optimizer, default_eps, mup_param_groups
from .plan import canonical_name
from .rules import MUON, optimizer_family, weight_decay_from_timescale

KINDS = ("hidden", "input", "readout", "down")
# How each of transformers' `lr_scheduler_type`s keeps μP's per-group LR ratios under MuPTrainer. "relative": it
# multiplies every group's initial LR by one factor (LambdaLR); "default_lr": the same, with an absolute end value
# read against optimizer.defaults["lr"], which MuPTrainer sets to η; "floors": per-group absolute floors and ceilings,
# which MuPTrainer gives as value × lr_mult. A type not listed here is refused (tests/core/test_schedulers.py enumerates
# transformers' SchedulerType, so a new one fails until it is added).
SCHEDULERS = {
    "linear": "relative", "cosine": "relative", "cosine_with_restarts": "relative", "constant": "relative",
    "constant_with_warmup": "relative", "inverse_sqrt": "relative", "warmup_stable_decay": "relative",
    "polynomial": "default_lr", "cosine_with_min_lr": "default_lr", "cosine_warmup_with_min_lr": "default_lr",
    "reduce_lr_on_plateau": "floors", "greedy": "floors",
}


class MuPTrainer(Trainer):
    """A drop-in `transformers.Trainer` for μP models.

    Usage: `trainer = MuPTrainer(model=model, args=TrainingArguments(..., optim="adamw_torch"), train_dataset=ds)`

    - Builds μP parameter groups for the optimizer `args.optim` names, with `args.learning_rate` as η and
      `args.weight_decay` applied in `mup_weight_decay_mode` ("width_independent", "coupled", "independent") to the
      parameters the Trainer decays (not biases and norms). HF schedulers then scale every group relatively.
    - `mup_weight_decay_timescale=τ` sets the decay as a timescale instead, a fraction of training: λ =
      1/(η·τ·max_steps) (`hf_mup.rules.weight_decay_from_timescale`), so the same τ means the same forgetting at any
      LR and length (Wang & Aitchison; Power Lines). `args.weight_decay` must then be 0.
    - PEFT adapters (LoRA, rsLoRA, DoRA) train by their μP rules (`hf_mup.rules`, "Adapters");
      `mup_adapters="plain"` trains them all at η instead, for comparison.
    - Refuses, with a `MuPError`, an optimizer passed through `optimizers=` that lacks μP groups.
    - Logs the learning rate of each kind of tensor (`learning_rate/hidden`, `/input`, `/readout`).
    A stock (non-μP) model is trained exactly as `Trainer` would, so SP baselines can share the script.
    """

    def __init__(self, *args: Any, mup_weight_decay_mode: str = "width_independent",
                 mup_weight_decay_timescale: float | None = None, mup_adapters: str = "mup", **kwargs: Any) -> None:
        self.mup_weight_decay_mode = mup_weight_decay_mode
        self.mup_adapters = mup_adapters
        self.mup_weight_decay_timescale = mup_weight_decay_timescale
        super().__init__(*args, **kwargs)
        if mup_weight_decay_timescale is not None:
            if self.args.weight_decay:
                raise MuPError(f"MuPTrainer(mup_weight_decay_timescale={mup_weight_decay_timescale:g}) with "
                               f"args.weight_decay={self.args.weight_decay:g}: give one (the timescale sets the decay; "
                               "leave weight_decay at 0).")
            if mup_weight_decay_mode != "width_independent":
                raise MuPError("mup_weight_decay_timescale needs mup_weight_decay_mode='width_independent': a timescale "
                               "is every group's lr·wd, which only that mode keeps equal.")
            if self.args.max_steps > 0:  # a timescale that is one step or less: refused before any work
                weight_decay_from_timescale(mup_weight_decay_timescale, self.args.learning_rate, self.args.max_steps)
        if getattr(self, "is_deepspeed_enabled", False):  # refuse an optimizer DeepSpeed builds; fold ZeRO-3 saves
            from .apply import fold_deepspeed_saves
            from .zero import check_config

            check_config(self.accelerator.state.deepspeed_plugin.deepspeed_config)
            fold_deepspeed_saves()
        if self.optimizer is not None and self.model is not None:
            check_optimizer(self.model, self.optimizer)
        self._model_divides_by_items = self.model is None or _loss_divides_by_items(self.model)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None, **kwargs: Any) -> TrainOutput:
        # (transformers types `hp_search_backend` by its initial None: the cast keeps mypy from calling the test dead)
        if trial is not None and cast(object, self.hp_search_backend) is not None and hasattr(trial, "suggest_float"):
            # transformers 5 calls model_init(trial) before sampling hp_space: sample first so the μP model is
            # built with the trial's multipliers (optuna returns the same value when asked again).
            self.hp_space(trial)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor | Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Trainer's loss, except for models whose forward ignores `num_items_in_batch` (BERT's and RoBERTa's
        heads compute a plain mean): the Trainer would still multiply their loss by the number of processes,
        training on that multiple (and clipping at a fraction of max_grad_norm). A token-level loss (masked LM) is
        computed here as the Trainer means it, summed and divided by the target count of all processes, so N
        processes train as one on the same global batch; other losses (a classifier's) keep their own mean (DDP
        averages it over processes)."""
        if num_items_in_batch is None or self._model_divides_by_items or self.label_smoother is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels, ids = inputs.get("labels"), inputs.get("input_ids")
        if labels is None or ids is None or labels.shape != ids.shape:
            # the model's own mean, not multiplied by the process count; divided here by the accumulation steps,
            # which the Trainer skips for a loss it takes to be normalised by num_items_in_batch
            loss, outputs = super().compute_loss(model, inputs, True, None)
            loss = loss / self.current_gradient_accumulation_steps
            return (loss, outputs) if return_outputs else loss
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten().to(logits.device),
                                                 ignore_index=-100, reduction="sum") / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages: the sum over processes / the global count
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.mup_weight_decay_timescale is not None and (
                self.optimizer is not None or opt_model is None or not is_mup(opt_model)):
            raise MuPError("mup_weight_decay_timescale sets the decay of the optimizer MuPTrainer builds for a μP "
                           "model; for an optimizer passed through optimizers= or a stock model, give weight_decay="
                           "hf_mup.weight_decay_from_timescale(τ, lr, steps) yourself.")
        if self.optimizer is not None or opt_model is None or not is_mup(opt_model):
            return super().create_optimizer(model)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            family = optimizer_family(optimizer_cls)
        else:
            family = optimizer_family(self.args.optim)
            # (transformers annotates PreTrainedModel; its own create_optimizer passes any nn.Module model here)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
                self.args, opt_model)  # type: ignore[arg-type]
        if family == MUON and getattr(self, "is_deepspeed_enabled", False):
            raise MuPError(MUON_UNDER_ZERO)
        decay = _decayed_names(opt_model, self.get_decay_parameter_names(opt_model))
        groups = mup_param_groups(
            opt_model,
            lr=self.args.learning_rate,
            weight_decay=self.mup_weight_decay(),
            optimizer=optimizer_cls if family == MUON else family,  # (a Muon's class says how it scales its LR)
            weight_decay_mode=self.mup_weight_decay_mode,
            no_decay=lambda name: name not in decay,
            eps=optimizer_kwargs.get("eps", default_eps(optimizer_cls)),
            adapters=self.mup_adapters,
            adjust_lr_fn=optimizer_kwargs.get("adjust_lr_fn") if family == MUON else None,
        )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        check_optimizer(opt_model, self.optimizer)
        return self.optimizer

    def mup_weight_decay(self) -> float:
        """The λ the optimizer gets: `args.weight_decay`, or the one `mup_weight_decay_timescale` gives over the run's
        steps (`state.max_steps` once training starts, else `args.max_steps`)."""
        if self.mup_weight_decay_timescale is None:
            return self.args.weight_decay
        steps = getattr(self.state, "max_steps", 0) or self.args.max_steps
        if steps <= 0:
            raise MuPError("mup_weight_decay_timescale needs the run's length: set args.max_steps, or build the "
                           "optimizer inside train().")
        return weight_decay_from_timescale(self.mup_weight_decay_timescale, self.args.learning_rate, steps)

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> torch.optim.lr_scheduler.LRScheduler:
        """The Trainer's scheduler, made to keep μP's per-group LR ratios (`SCHEDULERS` says how, for each type)."""
        optimizer = self.optimizer if optimizer is None else optimizer
        groups = getattr(optimizer, "param_groups", None) or [{}]
        if self.lr_scheduler is not None or "lr_mult" not in groups[0]:
            return super().create_scheduler(num_training_steps, optimizer)
        assert optimizer is not None  # (None has no μP groups: handed to the Trainer above)
        name = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        how = SCHEDULERS.get(name)
        if how is None:
            raise MuPError(
                f"hf_mup does not know whether lr_scheduler_type={name!r} keeps μP's per-group learning-rate ratios "
                f"(a scheduler with one absolute floor or ceiling for all groups breaks them). Use one of "
                f"{', '.join(sorted(SCHEDULERS))}, or pass a scheduler built for the μP groups through optimizers=."
            )
        # Schedulers that read optimizer.defaults["lr"] (polynomial's lr_end, cosine's min_lr) take it for the LR
        # every absolute value is relative to: make it η, whatever the optimizer was built with (torch's 1e-3 when
        # its groups carry their own LRs), so each group ends at the value × its lr_mult.
        inner = optimizer  # accelerate's and DeepSpeed's wrappers (a ZeRO optimizer has no defaults): torch's inside
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        inner.defaults["lr"] = base_lr(optimizer)
        if how == "floors":
            # (a str: a JSON dict, parsed by TrainingArguments)
            kwargs = dict(cast("dict[str, Any]", self.args.lr_scheduler_kwargs or {}))
            cls = (torch.optim.lr_scheduler.ReduceLROnPlateau if name == "reduce_lr_on_plateau"
                   else transformers.optimization.GreedyLR)
            for key in ("min_lr", "max_lr"):
                default = inspect.signature(cls).parameters.get(key)
                value = kwargs.get(key, default.default if default is not None else None)
                if isinstance(value, (int, float)):  # one floor or ceiling on η: one per group, × its lr_mult
                    kwargs[key] = [value * g["lr_mult"] for g in optimizer.param_groups]
            # (transformers annotates LambdaLR: it holds any scheduler, these two among them)
            self.lr_scheduler = cls(optimizer, **kwargs)  # type: ignore[assignment]
        return super().create_scheduler(num_training_steps, optimizer)

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


def _decayed_names(model: torch.nn.Module, decay_names: list[str]) -> set[str]:
    """The Trainer's decayed parameters by their names in the μP model inside any wrapper (PEFT's
    `base_model.model.`, torch.compile's `_orig_mod.`, DDP's `module.`), which is how `mup_param_groups` names them."""
    decay = set(decay_names)
    inner = {id(p): canonical_name(n) for n, p in unwrap(model).named_parameters()}
    return {inner[id(p)] for n, p in model.named_parameters() if n in decay and id(p) in inner}


def _loss_divides_by_items(model: torch.nn.Module) -> bool:
    """Whether the model's forward computes its loss with `self.loss_function` (which honours num_items_in_batch)."""
    try:
        return "loss_function" in inspect.getsource(type(unwrap(model)).forward)
    except (OSError, TypeError):
        return True  # source unavailable: trust transformers' own introspection


def mup_model_init(config: PretrainedConfig, base_hidden_size: int, model_class: type | str | None = None,
                   **fixed: Any) -> Callable[..., PreTrainedModel]:
    """A `model_init` for `Trainer.hyperparameter_search` that builds μP models from the trial's parameters.

    Usage: `MuPTrainer(model_init=mup_model_init(config, base_hidden_size=256), ...).hyperparameter_search(...)`

    A trial parameter named like a `MuPConfig` field (`output_mult`, `input_mult`, `attn_mult`, ...) goes to μP,
    one named like a model config attribute (`initializer_range`) to the config; `TrainingArguments` fields
    (`learning_rate`, ...) are left to the Trainer.
    """
    mup_fields = {f.name for f in dataclasses.fields(MuPConfig)}
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}

    def model_init(trial: Any = None) -> PreTrainedModel:
        params = _trial_params(trial)
        cfg = copy.deepcopy(config)
        for key, value in params.items():
            if key not in mup_fields and key not in trainer_fields and hasattr(cfg, key):
                setattr(cfg, key, value)
        options = {**fixed, **{k: v for k, v in params.items() if k in mup_fields}}
        return MuPModel.from_config(cfg, base_hidden_size=base_hidden_size, model_class=model_class, **options)

    return model_init


def _trial_params(trial: Any) -> dict[str, Any]:
    if trial is None:
        return {}
    if isinstance(trial, dict):  # ray / wandb pass a dict
        return trial
    return dict(getattr(trial, "params", {}))  # optuna
