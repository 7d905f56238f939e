"""DeepSpeed ZeRO support: imported only where DeepSpeed is in use (never by `import hf_mup`).

What ZeRO changes for μP, and what this module does about it:
- Under ZeRO-3 a parameter is an empty (0,) tensor with its real shape in `ds_shape` (planning reads it:
  `hf_mup.plan.param_shape`), and the values live in per-rank partitions: rescaling the init or unfolding loaded weights
  gathers them first (`gathered`).
- DeepSpeed consolidates ZeRO-3 weights itself (`engine._zero3_consolidated_16bit_state_dict`, behind
  `accelerator.get_state_dict`, `Trainer.save_model`, `save_16bit_model`), without the model's state-dict hooks:
  `install` makes that consolidated state dict the folded one, as `model.state_dict()` is.
- A ZeRO optimizer holds flat partitions, not the model's parameters: `param_group_of` maps each parameter to its
  μP group again for `check_optimizer`.
- A ZeRO checkpoint's fp32 consolidation (DeepSpeed's zero_to_fp32) gives μP's own, unfolded weights:
  `fp32_state_dict` gives the folded ones.
- An "optimizer" section in the DeepSpeed config makes DeepSpeed build one group of every parameter: refused
  (`check_config`).

Usage: `hf_mup.zero.disable_jit_ops()` before DeepSpeed initialises, on a machine without a C++ compiler.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeAlias

import torch
from torch import nn

from .errors import MuPError

_INSTALLED = "_hf_mup_folds"


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within it, ZeRO-3 parameters hold their full values; changes made on rank 0 are kept (and repartitioned).

    Every rank must enter it (it gathers). A no-op for parameters ZeRO-3 does not partition.
    """
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield


def disable_jit_ops() -> None:
    """Keep DeepSpeed from building C++ ops at run time that a CPU run does not need: its shared-memory collectives
    (built at `init_distributed`; gloo does the same). Call before DeepSpeed initialises. (DeepSpeed's own Adam is
    another JIT build: with hf_mup the optimizer is torch's, built from μP's groups.)"""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


# ------------------------------------------------------------------------------------------------------ saving


# DeepSpeed has no type information (no py.typed, no stubs): its engine and ZeRO optimizers are typed `Any` here.
StateDict: TypeAlias = dict[str, torch.Tensor]


def _fold_consolidated(engine: Any, state_dict: StateDict | None) -> StateDict | None:
    from .apply import PLAN_ATTR, fold_state_dict
    from .model import unwrap

    module = unwrap(engine.module)
    if state_dict is not None and PLAN_ATTR in module.__dict__:
        fold_state_dict(module, state_dict, "", {})
    return state_dict


def install() -> None:
    """Make DeepSpeed's ZeRO-3 consolidated state dict (what `accelerator.get_state_dict`, `Trainer.save_model` and
    `engine.save_16bit_model` write) the folded one for μP models; other models' are unchanged. Idempotent."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    consolidate = DeepSpeedEngine._zero3_consolidated_16bit_state_dict
    if getattr(consolidate, _INSTALLED, False):
        return

    @functools.wraps(consolidate)
    def folded(self: Any, *args: Any, **kwargs: Any) -> StateDict | None:
        return _fold_consolidated(self, consolidate(self, *args, **kwargs))

    setattr(folded, _INSTALLED, True)
    DeepSpeedEngine._zero3_consolidated_16bit_state_dict = folded


def fp32_state_dict(checkpoint_dir: str, tag: str | None = None, model: nn.Module | None = None) -> StateDict:
    """The fp32 weights of a ZeRO checkpoint, consolidated *and folded*: a stock model with them (and `config.mup`)
    computes the μP model's outputs, and `MuPModel.from_pretrained` / `load_state_dict` on a μP model unfold them.

    Usage: `torch.save(hf_mup.zero.fp32_state_dict("out/checkpoint-500"), ...)` — instead of DeepSpeed's
    zero_to_fp32 (`get_fp32_state_dict_from_zero_checkpoint`), which gives μP's own unfolded weights.
    `checkpoint_dir`: the folder holding `latest` (a Trainer checkpoint) and, unless `model` is given, the μP
    `config.json`; `model`: a μP model of the same architecture and settings (its plan says what to fold).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .apply import PLAN_ATTR, fold_state_dict
    from .model import unwrap

    state_dict: StateDict = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    if model is None:
        model = _meta_mup_model(checkpoint_dir)
    module = unwrap(model)
    if PLAN_ATTR not in module.__dict__:
        raise MuPError(f"fp32_state_dict needs a μP model (or a μP config.json in {checkpoint_dir!r}) to fold with.")
    fold_state_dict(module, state_dict, "", {})
    return state_dict


def _meta_mup_model(folder: str) -> nn.Module:
    """A μP model of the checkpoint's config on the meta device: its plan, no memory."""
    from transformers import AutoConfig

    from .apply import PLAN_ATTR
    from .architectures import get_architecture
    from .config import MuPConfig
    from .model import CONFIG_KEY, _model_class
    from .plan import make_plan, meta_model

    config = AutoConfig.from_pretrained(folder)
    stored = getattr(config, CONFIG_KEY, None)
    if not stored:
        raise MuPError(f"{folder!r} has no μP config.json (config.mup): pass the μP model as model=.")
    arch = get_architecture(config)
    model = meta_model(_model_class(config, None, arch), config)
    model.__dict__[PLAN_ATTR] = make_plan(model, MuPConfig.from_dict(stored), arch)
    return model


# --------------------------------------------------------------------------------------------- the optimizer


def is_zero_optimizer(optimizer: object) -> bool:
    return type(optimizer).__module__.startswith("deepspeed.") and (
        hasattr(optimizer, "bit16_groups") or hasattr(optimizer, "fp16_groups"))


def param_group_of(optimizer: Any) -> dict[int, dict[str, Any]]:
    """id(model parameter) -> its group dict, for a ZeRO optimizer (whose groups hold flat partitions)."""
    groups = optimizer.param_groups
    if not is_zero_optimizer(optimizer):
        return {id(p): g for g in groups for p in g["params"]}
    if hasattr(optimizer, "bit16_groups"):  # ZeRO-1/2: one list of parameters per group
        return {id(p): groups[i] for i, params in enumerate(optimizer.bit16_groups) for p in params}
    owner = getattr(optimizer, "sub_group_to_group_id", {})  # ZeRO-3: sub-groups of groups
    return {id(p): groups[owner.get(j, j)] for j, params in enumerate(optimizer.fp16_groups) for p in params}


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse DeepSpeed settings under which a μP model would not train as μP."""
    if config.get("optimizer"):
        raise MuPError(
            "The DeepSpeed config has an \"optimizer\" section: DeepSpeed would build it with every parameter in one "
            "group, at one learning rate, which is not μP. Leave the section out: MuPTrainer builds the optimizer "
            "from TrainingArguments (optim, learning_rate, weight_decay) with μP's groups and DeepSpeed wraps it "
            "(in a plain loop, pass torch.optim.AdamW(hf_mup.mup_param_groups(model, ...)) to prepare/initialize)."
        )
