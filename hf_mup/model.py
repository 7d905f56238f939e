"""The public entry points: `convert` (the one place a stock model becomes μP), `MuPModel.from_config` /
`from_pretrained`, `get_plan`, `is_mup`.

A μP checkpoint is a stock checkpoint plus `config.mup`: `save_pretrained` writes the *folded* weights (the stock
model with the μP model's outputs, see `hf_mup.apply`), so `AutoModel*.from_pretrained` and `pipeline` compute the
μP model's outputs, while `MuPModel.from_pretrained` loads them and unfolds them back into μP's parametrization.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import os
import warnings
from typing import Any, cast

import transformers
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from .apply import PLAN_ATTR, FoldEntry, apply_forward, apply_init, fold_entries, scale_parameters, sync
from .architectures import Architecture, get_architecture, supported_classes
from .config import FORMAT_VERSION, MuPConfig, format_version, resolve
from .errors import MuPError
from .plan import MuPPlan, canonical_name, make_plan, meta_model, supported_class_name

CONFIG_KEY = "mup"
# Keywords transformers' `_from_config` takes besides the model class's own constructor arguments.
HF_FROM_CONFIG_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "experts_implementation", "allow_all_kernels")

__all__ = ["MuPModel", "MuPPlan", "canonical_name", "convert", "get_plan", "is_mup", "unwrap"]


# ------------------------------------------------------------------------------------------------- finding it


def unwrap(model: nn.Module) -> nn.Module:
    """The μP transformers model inside any wrapper (DDP, FSDP, torch.compile, PEFT); for a stock model, the model
    inside DDP / accelerate / torch.compile wrappers."""
    for module in model.modules():
        if PLAN_ATTR in module.__dict__:
            return module
    while True:
        if isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
        elif isinstance(inner := getattr(model, "module", None), nn.Module):
            model = inner
        else:
            return model


def get_plan(model: nn.Module) -> MuPPlan | None:
    """The μP plan of a converted model (re-applied first if surgery changed the model); None for a stock model.

    Raises a `MuPError` for a model that carries μP settings without μP applied (a checkpoint opened by the stock
    loader): it computes the right outputs, but training it as it is would not be μP.
    """
    root = unwrap(model)
    if PLAN_ATTR in root.__dict__:
        return sync(root)
    if getattr(getattr(root, "config", None), CONFIG_KEY, None):
        raise MuPError(
            "This model's config has μP settings (config.mup) but μP is not applied to it: it was loaded with "
            "transformers' own from_pretrained, which gives the right outputs (the checkpoint holds folded weights) "
            "but not μP's training. Use hf_mup.MuPModel.from_pretrained(path), or hf_mup.convert(model) (same outputs)."
        )
    return None


def is_mup(model: nn.Module) -> bool:
    return get_plan(model) is not None


# ---------------------------------------------------------------------------------------------- conversion


def _translate(names: list[str], source_prefix: str, target: nn.Module) -> dict[str, str]:
    """Parameter names of a model of another class (e.g. the MLM that saved a checkpoint) -> names in `target`,
    across the base-model prefix transformers adds or strips when loading (`bert.` / `transformer.`)."""
    params = {canonical_name(n) for n, _ in target.named_parameters()}
    prefix = getattr(target, "base_model_prefix", "") or source_prefix
    out = {}
    for name in names:
        for candidate in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if candidate in params:
                out[name] = candidate
                break
    return out


def _fold_entries_as_saved(model: PreTrainedModel, plan: MuPPlan, settings: MuPConfig,
                           saved_by: str | None) -> list[FoldEntry]:
    """What folding with `settings` multiplies in `model`, as the class that saved the weights folds them (`saved_by`:
    a model of another class folds differently, e.g. a masked LM's tied readout into a norm this model lacks)."""
    if saved_by not in plan.arch.model_classes or saved_by == plan.model_class:  # (a user subclass: the same)
        return fold_entries(model, plan if settings == plan.mup else make_plan(model, settings, plan.arch))
    source_class: type[PreTrainedModel] = getattr(transformers, saved_by)
    source = meta_model(source_class, model.config)
    entries = fold_entries(source, make_plan(source, settings, plan.arch))
    names = _translate([e[0] for e in entries], source.base_model_prefix, model)
    return [(names[n], index, factor, offset) for n, index, factor, offset in entries if n in names]


def _convert(model: PreTrainedModel, mup: MuPConfig, weights: str, stored_as: MuPConfig | None = None,
             saved_by: str | None = None, fresh: set[str] | None = None, plan: MuPPlan | None = None,
             arch: Architecture | None = None) -> PreTrainedModel:
    """Make `model` μP in place. `weights`: "fresh" (just HF-initialised: rescale to μP's init), "folded" (stock or
    folded weights: unfold, same outputs) or "mup" (μP's own parametrization under the settings `stored_as`,
    format-1 checkpoints). Loaded weights keep their outputs whatever settings `mup` gives: they are unfolded under
    `mup` (format-1 weights are folded under `stored_as` first). `saved_by`: the class that saved them; `fresh`: the
    tensors a checkpoint did not have (a new head), initialised by the μP rules whatever `weights` says. `plan`: made
    already (on a meta-device twin, before allocating the model); `arch`: the config's, looked up already."""
    if PLAN_ATTR in model.__dict__:
        raise MuPError("This model is μP already; to change its settings, hf_mup.fold it first and convert again.")
    plan = plan or make_plan(model, mup, arch)
    if weights == "fresh":
        apply_init(model, plan)
    else:
        loaded = None if fresh is None else {n for n in map(canonical_name, dict(model.named_parameters()))
                                             if n not in fresh}
        if weights == "folded" or stored_as != mup:
            if weights == "mup":  # to the stock weights with the same outputs, then as "folded"
                assert stored_as is not None  # (given with weights="mup")
                scale_parameters(model, _fold_entries_as_saved(model, plan, stored_as, saved_by), only=loaded)
            scale_parameters(model, _fold_entries_as_saved(model, plan, mup, saved_by), inverse=True, only=loaded)
        if fresh:
            apply_init(model, plan, only=fresh)
    apply_forward(model, plan)
    setattr(model.config, CONFIG_KEY, mup.to_dict())
    from .optim import watch  # (optim imports this module)

    watch(model)
    if mup.input_mult != 1.0 and plan.arch.embeddings_feed_norm:
        warnings.warn(f"input_mult={mup.input_mult:g} has no effect on {plan.arch.model_type}: its embeddings are summed "
                      "into a LayerNorm, which undoes any common factor.", stacklevel=3)
    return model


def _reinitialize(model: PreTrainedModel) -> None:
    """Run the model's own HF init again, as on a freshly built model."""
    for t in [*model.modules(), *model.parameters(), *model.buffers()]:
        if hasattr(t, "_is_hf_initialized"):
            del t._is_hf_initialized
    model.init_weights()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated


def _stored(config: PretrainedConfig) -> dict[str, Any] | None:
    stored = getattr(config, CONFIG_KEY, None)
    if stored is not None and not isinstance(stored, dict):
        raise MuPError(f"config.mup must be a dict of μP settings, got {type(stored).__name__}.")
    return stored or None


def convert(model: PreTrainedModel, mup: MuPConfig | None = None, *, reinit: bool = False,
            **options: Any) -> PreTrainedModel:
    """Make a stock transformers model μP, in place, and return it. Its outputs do not change unless `reinit=True`.

    Usage: `model = hf_mup.convert(GPT2LMHeadModel.from_pretrained("gpt2"), base_hidden_size=256)` — a trained
    model, now in μP's parametrization, for continued pretraining or fine-tuning (`fold` is the inverse).
    `hf_mup.convert(model, base_hidden_size=256, reinit=True)`: a fresh μP initialisation instead.

    Settings: a `MuPConfig`, or its fields as keywords; the model's stored `config.mup` (a μP checkpoint opened with
    transformers' loader) is used and merged with them (explicit ones win, a conflict is logged).
    """
    stored = _stored(model.config)
    if mup is not None:
        options = {**mup.to_dict(), **options}
    _check_mup_keywords(options, "convert")
    mup = resolve(stored, options)
    if reinit:
        _reinitialize(model)
        return _convert(model, mup, "fresh")
    version = format_version(stored) if stored else FORMAT_VERSION
    stored_as = MuPConfig.from_dict(stored) if stored else mup
    return _convert(model, mup, "folded" if version >= 2 else "mup", stored_as,
                    saved_by=(getattr(model.config, "architectures", None) or [None])[0] if stored else None)


# --------------------------------------------------------------------------------------------------- keywords


def _check_mup_keywords(options: dict[str, Any], where: str, others: tuple[str, ...] = ()) -> None:
    fields = MuPConfig.field_names()
    bad = [k for k in options if k not in fields and k != "version"]
    if bad:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, fields + others, 1)) else repr(k)
                 for k in bad]
        raise MuPError(
            f"Unknown keyword(s) for {where}: {', '.join(hints)}. μP settings: {', '.join(fields)}."
            + (f" Passed on to transformers: {', '.join(others)}." if others else "")
        )


def _split_kwargs(kwargs: dict[str, Any], model_class: type[PreTrainedModel],
                  where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(μP settings, transformers keywords); anything else is a `MuPError` listing the valid names."""
    fields = set(MuPConfig.field_names())
    hf_names = HF_FROM_CONFIG_KWARGS + tuple(
        p for p in inspect.signature(model_class.__init__).parameters if p not in ("self", "config", "args", "kwargs")
    )
    mup = {k: v for k, v in kwargs.items() if k in fields}
    hf = {k: v for k, v in kwargs.items() if k in hf_names}
    _check_mup_keywords({k: v for k, v in kwargs.items() if k not in mup and k not in hf}, where, hf_names)
    return mup, hf


def _model_class(config: PretrainedConfig, model_class: type | str | None, arch: Architecture) -> type[PreTrainedModel]:
    if model_class is None:
        archs = getattr(config, "architectures", None) or [arch.model_classes[0]]
        model_class = next((a for a in archs if a in arch.model_classes), arch.model_classes[0])
    if isinstance(model_class, str):
        if model_class not in arch.model_classes:
            classes = arch.model_classes if arch.generic else supported_classes()
            raise MuPError(f"hf_mup does not support {model_class}. Supported classes: {', '.join(classes)}.")
        model_class = getattr(transformers, model_class)
    cls = cast("type[PreTrainedModel]", model_class)  # a transformers model class: checked next
    supported_class_name(cls, config, arch)
    return cls


class MuPModel:
    """Builds and loads μP models; what it returns are the stock transformers classes, converted in place.

    Usage: `model = hf_mup.MuPModel.from_config(GPT2Config(n_embd=1024, n_head=16), base_hidden_size=256)`
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Use MuPModel.from_config(...) or MuPModel.from_pretrained(...).")

    @staticmethod
    def from_config(
        config: PretrainedConfig,
        base_hidden_size: int | None = None,
        model_class: type | str | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """A freshly initialised μP model of `config`'s architecture.

        `model_class` defaults to `config.architectures[0]`, else the causal LM (GPT-2) / masked LM (BERT).
        `kwargs` are `MuPConfig` fields (`output_mult=8.0`, `zero_init_query=False`, ...), merged over the config's
        stored `config.mup` if it has one; transformers' keywords (`dtype=torch.bfloat16`,
        `attn_implementation="flash_attention_2"`, the model class's own arguments) are passed on.
        """
        config = copy.deepcopy(config)
        arch = get_architecture(config)  # looked up once, handed down
        cls = _model_class(config, model_class, arch)
        mup_kwargs, hf_kwargs = _split_kwargs(kwargs, cls, "MuPModel.from_config")
        mup = resolve(_stored(config), {"base_hidden_size": base_hidden_size, **mup_kwargs})
        plan = make_plan(meta_model(cls, config), mup, arch)  # planned (and refused if bad) before allocating the model
        model = cls._from_config(config, **hf_kwargs)  # type: ignore[no-untyped-call]  # unannotated in transformers
        return _convert(model, mup, "fresh", plan=plan)

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str], model_class: type | str | None = None,
                        base_hidden_size: int | None = None, **kwargs: Any) -> PreTrainedModel:
        """Load a μP checkpoint (or convert a stock one, given `base_hidden_size`), with the same outputs.

        Usage: `model = hf_mup.MuPModel.from_pretrained("ckpt")`,
        `hf_mup.MuPModel.from_pretrained("mlm_ckpt", model_class="BertForSequenceClassification")` (a new head,
        initialised by the μP rules), `hf_mup.MuPModel.from_pretrained("gpt2", base_hidden_size=256)` (a stock
        checkpoint, converted keeping its outputs). `MuPConfig` fields given here override the stored ones and keep
        the outputs (the weights are unfolded under the new settings, as `convert` does); other keywords go to
        transformers' `from_pretrained`.
        """
        fields = set(MuPConfig.field_names())
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **{
            k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs})
        stored = _stored(config)
        if stored is None and base_hidden_size is None:
            raise MuPError(
                f"The checkpoint {path!r} has no μP settings (config.mup): it was saved from a stock model. "
                "To continue from it in μP with the same outputs, give base_hidden_size=<the proxy's width> "
                "(MuPModel.from_pretrained(path, base_hidden_size=256)); to start afresh, use "
                "hf_mup.MuPModel.from_config(config, base_hidden_size=...)."
            )
        mup = resolve(stored, {"base_hidden_size": base_hidden_size, **overrides})
        saved_by = (getattr(config, "architectures", None) or [None])[0] if stored else None
        arch = get_architecture(config)
        cls = _model_class(config, model_class, arch)
        # (model, loading info) with output_loading_info=True, which transformers' return annotation leaves out
        model, info = cast("tuple[PreTrainedModel, dict[str, Any]]",
                           cls.from_pretrained(path, config=config, output_loading_info=True, **kwargs))
        fresh = {canonical_name(k) for k in info.get("missing_keys", ())}
        version = format_version(stored) if stored else FORMAT_VERSION
        stored_as = MuPConfig.from_dict(stored) if stored else mup
        return _convert(model, mup, "folded" if version >= 2 else "mup", stored_as, saved_by, fresh, arch=arch)
