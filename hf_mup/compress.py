"""Compression of folded (stock) checkpoints, for "train big, then compress" (Li et al. 2020): unstructured magnitude
pruning with `torch.nn.utils.prune`, weight-only int8 / int4 quantization with torchao (through transformers'
`TorchAoConfig`, so the result saves and loads in plain transformers), and the inference size as stored.

Usage:
    model = AutoModelForCausalLM.from_pretrained("folded")           # or hf_mup.fold(mup_model)
    hf_mup.compress.prune(model, 0.5)                                 # 50% of the Linear weights, globally
    hf_mup.compress.save_compressed(model, "out", bits=8)             # int8 weights, saved with save_pretrained
    report = hf_mup.compress.size_report(AutoModelForCausalLM.from_pretrained("out"))

Which weights: every `nn.Linear` / GPT-2 `Conv1D` weight (attention, MLP, an untied readout, a classifier);
embeddings (and a readout tied to them) only with `include_embeddings=True`. Biases and norms stay dense.
Quantization covers `nn.Linear` weights (torchao's rule): GPT-2's Conv1D layers are refused for quantization.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

if TYPE_CHECKING:
    from transformers import TorchAoConfig

from .errors import MuPError

SCOPES = ("global", "layer")
BITS = (8, 4)
INT4_GROUP_SIZE = 32
MARK = "compression"  # the config key recording what was done (sparsity, bits, scope)


# ------------------------------------------------------------------------------------------------ choosing weights


def _check_stock(model: nn.Module) -> None:
    from .apply import PLAN_ATTR
    from .model import unwrap

    if PLAN_ATTR in unwrap(model).__dict__:
        raise MuPError(
            "This is a live μP model: its multipliers live in hooks and attention scales, which pruning or quantizing "
            "the weights would not see. Fold it first: hf_mup.compress.prune(hf_mup.fold(model), ...), or load its "
            "checkpoint with transformers' own from_pretrained (a μP checkpoint holds folded weights)."
        )


def prunable(model: nn.Module, include_embeddings: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, module) of every weight compression touches: Linear / Conv1D weights, embeddings if asked. A weight
    shared by several modules (a tied readout) is listed once, under the first module that owns it."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen: set[int] = set()
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        linear = isinstance(module, (nn.Linear, Conv1D))
        embedding = isinstance(module, nn.Embedding) or id(weight) in embedding_ids
        if (linear and not embedding) or (embedding and include_embeddings):
            seen.add(id(weight))
            out.append((name, module))
    return out


# ----------------------------------------------------------------------------------------------------- pruning


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise MuPError(f"sparsity must be a fraction in [0, 1) (0.5 prunes half of the weights), got {sparsity!r}.")
    return float(sparsity)


def _prune_step(targets: list[tuple[str, nn.Module]], sparsity: float, scope: str) -> None:
    """Bring the masks to `sparsity` (of each weight, or of all together): prune exactly round(sparsity · n) entries,
    counting those pruned already (torch's masks prune an absolute count among the still-unpruned entries)."""
    def pruned(module: nn.Module) -> int:
        return int((cast(torch.Tensor, module.weight_mask) == 0).sum()) if hasattr(module, "weight_mask") else 0

    if scope == "global":
        total = sum(cast(torch.Tensor, m.weight).numel() for _, m in targets)  # (`prunable`: Parameters)
        amount = round(sparsity * total) - sum(pruned(m) for _, m in targets)
        torch_prune.global_unstructured([(m, "weight") for _, m in targets], torch_prune.L1Unstructured,
                                        amount=max(0, amount))
    else:
        for _, module in targets:
            amount = round(sparsity * cast(torch.Tensor, module.weight).numel()) - pruned(module)
            # (torch leaves l1_unstructured unannotated)
            torch_prune.l1_unstructured(module, "weight", amount=max(0, amount))  # type: ignore[no-untyped-call]


def prune(model: nn.Module, sparsity: float, scope: str = "global", include_embeddings: bool = False,
          steps: int = 1, finetune: Callable[[nn.Module, int], None] | None = None) -> dict[str, Any]:
    """Unstructured magnitude pruning of a stock model, in place and permanent; returns `size_report(model)`.

    Usage: `prune(model, 0.9)`, `prune(model, 0.9, scope="layer")`,
    `prune(model, 0.9, steps=3, finetune=lambda m, step: train_a_little(m))` (iterative, as Li et al.)

    `scope`: "global" removes the smallest |w| over all chosen weights together; "layer" the same fraction of each.
    Exactly round(sparsity · n) entries are zeroed (n: all chosen weights, or each one). `steps` > 1 prunes in steps
    that each remove the same fraction of what is left (1 − (1 − s)^(k/steps)), calling `finetune(model, k)` after
    each step but the last; the masks hold pruned weights at zero while it trains.
    """
    sparsity = _check_sparsity(sparsity)
    _check_stock(model)
    if scope not in SCOPES:
        raise MuPError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise MuPError(f"steps must be a positive integer, got {steps!r}.")
    targets = prunable(model, include_embeddings)
    if not targets:
        raise MuPError(f"{type(model).__name__} has no Linear, Conv1D (or, with include_embeddings, embedding) weights "
                       "to prune.")
    for k in range(1, steps + 1):
        _prune_step(targets, 1.0 - (1.0 - sparsity) ** (k / steps), scope)
        if finetune is not None and k < steps:
            finetune(model, k)
    for _, module in targets:
        # permanent: the zeros are in `weight`, the mask and hook are gone (torch leaves `remove` unannotated)
        torch_prune.remove(module, "weight")  # type: ignore[no-untyped-call]
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, MARK, {**getattr(config, MARK, {}), "sparsity": sparsity, "scope": scope,
                               "include_embeddings": include_embeddings})
    return size_report(model)


# ------------------------------------------------------------------------------------------------ quantization


def quantization_config(bits: int) -> TorchAoConfig:
    """transformers' `TorchAoConfig` for weight-only int8 (per output channel) or int4 (groups of 32), symmetric, so
    that a pruned zero stays an exact zero."""
    if bits not in BITS:
        raise MuPError(f"bits must be one of {BITS} (weight-only int8 or int4), got {bits!r}.")
    from .extras import require

    require("compress", "torchao", what=f"int{bits} quantization (torchao)")
    from torchao.quantization import IntxWeightOnlyConfig, MappingType
    from torchao.quantization.granularity import PerAxis, PerGroup
    from transformers import TorchAoConfig

    granularity = PerAxis(0) if bits == 8 else PerGroup(INT4_GROUP_SIZE)
    # (torch.int4 exists at run time, torch >= 2.6, but not in torch's type stubs)
    weight_dtype = torch.int8 if bits == 8 else torch.int4  # type: ignore[attr-defined]
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=weight_dtype,
                                              granularity=granularity, mapping_type=MappingType.SYMMETRIC))


def quantized_layers(model: nn.Module, qconfig: TorchAoConfig | None = None) -> list[tuple[str, nn.Linear]]:
    """(name, module) of the layers transformers' torchao loader quantizes: its `nn.Linear` layers, less those it
    keeps in full precision (the output embeddings, tied weights, the last module: `get_modules_to_not_convert`)."""
    skips: list[str] = []
    convert = None
    try:
        from transformers.quantizers.base import HfQuantizer
        from transformers.quantizers.quantizers_utils import should_convert_module

        skips = HfQuantizer.get_modules_to_not_convert(  # (a module it cannot read: the except below)
            cast(PreTrainedModel, model), getattr(qconfig, "modules_to_not_convert", None),
            getattr(model, "_keep_in_fp32_modules", None))
        convert = should_convert_module
    except (ImportError, AttributeError, TypeError):  # another transformers: check every Linear (stricter)
        pass
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)
            and (convert is None or convert(f"{name}.weight", skips))]


def check_quantizable(model: nn.Module, bits: int) -> None:
    """Refuse, before any work, a model that weight-only quantization to `bits` cannot handle: GPT-2's Conv1D layers
    (torchao quantizes nn.Linear), and for int4 a quantized Linear whose in-features are not a multiple of the group
    size (INT4_GROUP_SIZE), which fails deep inside transformers' loader. Works on a meta-device model too."""
    convs = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    if convs:
        raise MuPError(
            f"{type(model).__name__} computes with GPT-2's Conv1D layers (e.g. {convs[0]!r}), which torchao's weight-only "
            "quantization does not cover (it quantizes nn.Linear). Prune it (that works), or quantize a Llama-family, "
            "BERT or RoBERTa model."
        )
    if bits == 4:
        bad = [(n, m.in_features) for n, m in quantized_layers(model) if m.in_features % INT4_GROUP_SIZE]
        if bad:
            name, fan_in = bad[0]
            others = f" (and {len(bad) - 1} more: {', '.join(n for n, _ in bad[1:4])}{', ...' if len(bad) > 4 else ''})" \
                if len(bad) > 1 else ""
            raise MuPError(
                f"int4 quantizes each Linear weight in groups of {INT4_GROUP_SIZE} inputs, but layer {name!r} has "
                f"{fan_in} in-features, not a multiple of the group size {INT4_GROUP_SIZE}{others}. Use int8 (bits=8, "
                f"--bits 8: one scale per output channel, any size), or a model whose widths are multiples of "
                f"{INT4_GROUP_SIZE}."
            )


def save_compressed(model: PreTrainedModel, out: str | Path, bits: int | None = None,
                    **save_kwargs: Any) -> dict[str, Any]:
    """Save a (pruned) stock model, quantized to `bits` if given, as a transformers checkpoint that
    `AutoModel*.from_pretrained(out)` loads as it is (quantized weights as torchao tensors); returns the saved
    model's `size_report`, also written to `out/compression.json`.

    Usage: `prune(model, 0.5); save_compressed(model, "out", bits=4)`

    The result is a stock checkpoint: its config keeps no μP settings (`config.mup`), since μP's loader would unfold
    pruned or quantized weights into something else.
    """
    import json

    _check_stock(model)
    if bits is not None:  # everything that can refuse, before anything is written
        qconfig = quantization_config(bits)
        check_quantizable(model, bits)
    out = Path(out)
    stored_mup = model.config.__dict__.pop("mup", None)  # not a μP checkpoint any more
    try:
        if bits is None:
            model.save_pretrained(out, **save_kwargs)
            report = size_report(model)
        else:
            with tempfile.TemporaryDirectory() as tmp:  # transformers quantizes while loading: save, load quantized
                model.save_pretrained(tmp)
                quantized = type(model).from_pretrained(tmp, quantization_config=qconfig)
            setattr(quantized.config, MARK, {**getattr(model.config, MARK, {}), "bits": bits})
            quantized.save_pretrained(out, **save_kwargs)
            report = size_report(quantized)
    finally:
        if stored_mup is not None:
            model.config.mup = stored_mup
    (out / "compression.json").write_text(json.dumps(report, indent=1))
    return report


def _config_and_class(path: str | Path, local: bool = True) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    """(config without μP settings, its transformers class) of a checkpoint (`local`: a folder here), weights
    untouched."""
    import transformers
    from transformers import AutoConfig

    if local and not (Path(path) / "config.json").is_file():
        raise MuPError(f"{path}: no checkpoint folder (a folder with config.json, e.g. one save_pretrained wrote) "
                       "is there.")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise MuPError(f"{path}: cannot read its config.json ({str(e).strip().splitlines()[0]}).") from None
    config.__dict__.pop("mup", None)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise MuPError(f"{path}: config.architectures names no transformers class ({names}); load the model yourself "
                       "and call hf_mup.compress.prune / save_compressed on it.")
    return config, cls


def check_checkpoint(path: str | Path, sparsity: float = 0.0, bits: int | None = None,
                     scope: str = "global") -> None:
    """Everything `hf-mup compress` could refuse, checked before any weight is read: the folder and its class, the
    sparsity and scope, torchao for `bits`, and the layers quantization needs (on the model built on the meta device).

    Usage: `check_checkpoint("ckpt", sparsity=0.5, bits=4)`
    """
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise MuPError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}.")
    config, cls = _config_and_class(path)
    if bits is not None:
        quantization_config(bits)  # bits in BITS, torchao installed
        with torch.device("meta"):  # the shapes only: nothing is allocated or read
            skeleton = cls(config)
        check_quantizable(skeleton, bits)


def load(path: str | Path) -> PreTrainedModel:
    """The stock transformers model of a checkpoint (its `config.architectures[0]` class): a folded μP checkpoint, a
    stock one or a compressed one. μP settings are dropped: compression works on the folded weights."""
    config, cls = _config_and_class(path, local=Path(path).exists())
    return cls.from_pretrained(path, config=config)


# ---------------------------------------------------------------------------------------------------- accounting


def _bits_of(t: torch.Tensor) -> int | None:
    """The bits per value of a torchao-quantized tensor (None for a plain one)."""
    if not hasattr(t, "qdata"):
        return None
    target = getattr(t, "target_dtype", None) or t.qdata.dtype
    # (torch.int4 / uint4 exist at run time, torch >= 2.6, but not in torch's type stubs)
    bits: int = {torch.int8: 8, torch.uint8: 8, torch.int4: 4, torch.uint4: 4}.get(  # type: ignore[attr-defined]
        target, t.qdata.element_size() * 8)
    return bits


def tensor_size(t: torch.Tensor) -> dict[str, Any]:
    """Params, nonzeros, bits and bytes of one tensor as an inference format stores it:
    - dense float: numel × its element size;
    - sparse (when smaller): nonzero values plus a bitmask of numel bits;
    - quantized: numel × bits / 8, packed (nonzeros × bits / 8 plus the bitmask when sparse and smaller), plus its
      scales (and zero points); `stored_bytes` is what torchao keeps in memory and on disk (its CPU int4 holds each
      4-bit value in a byte).
    """
    bits = _bits_of(t)
    values = t.dequantize() if bits is not None else t.detach()
    numel = values.numel()
    nonzeros = int((values != 0).sum())
    mask_bytes = math.ceil(numel / 8)
    if bits is None:
        value_bits = t.element_size() * 8
        extra = 0
        stored = numel * t.element_size()
    else:
        assert hasattr(t, "qdata")  # (`_bits_of` found it: a torchao tensor)
        value_bits = bits
        extra = sum(getattr(t, a).numel() * getattr(t, a).element_size()
                    for a in ("scale", "zero_point") if isinstance(getattr(t, a, None), torch.Tensor))
        stored = t.qdata.numel() * t.qdata.element_size() + extra
    dense = math.ceil(numel * value_bits / 8)
    sparse = math.ceil(nonzeros * value_bits / 8) + mask_bytes
    return {"shape": list(values.shape), "params": numel, "nonzeros": nonzeros, "bits": value_bits,
            "format": ("quantized " if bits else "") + ("sparse" if sparse < dense else "dense"),
            "bytes": min(dense, sparse) + extra, "stored_bytes": stored}


def size_report(model: nn.Module) -> dict[str, Any]:
    """Per-tensor and total inference size of a model (shared tensors counted once), embeddings and readout included.

    Usage: `hf_mup.compress.size_report(model)["total"]["bytes"]`
    """
    tensors: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue  # a tied weight
        seen.add(id(t))
        if t.is_floating_point() or hasattr(t, "qdata"):  # weights (not integer or boolean buffers: masks, ids)
            tensors[name] = tensor_size(t)
    total = {k: sum(r[k] for r in tensors.values()) for k in ("params", "nonzeros", "bytes", "stored_bytes")}
    total["sparsity"] = 1.0 - total["nonzeros"] / total["params"] if total["params"] else 0.0
    config = getattr(model, "config", None)
    return {"total": total, "compression": dict(getattr(config, MARK, {}) or {}), "tensors": tensors}


def format_report(report: dict[str, Any]) -> str:
    """A short text summary of `size_report` (for `hf-mup inspect` / `hf-mup compress`)."""
    t = report["total"]
    formats: dict[str, int] = {}
    for r in report["tensors"].values():
        formats[r["format"]] = formats.get(r["format"], 0) + r["bytes"]
    return (f"{t['params']:,} parameters, {t['nonzeros']:,} nonzero (sparsity {t['sparsity']:.1%}); inference size "
            f"{t['bytes']:,} bytes (" + ", ".join(f"{k} {v:,}" for k, v in sorted(formats.items()))
            + f"); as torchao stores it {t['stored_bytes']:,} bytes"
            + (f"; compression: {report['compression']}" if report["compression"] else ""))
