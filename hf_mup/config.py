"""`MuPConfig`: the μP settings of a model, stored in the HF config as `config.mup` (a plain dict with a format version).

Format versions of `config.mup`:
- 1 (hf_mup 0.1, no "version" key): the checkpoint's weights are μP's own (unfolded); only hf_mup can open it.
- 2: the checkpoint's weights are *folded* — the stock model they make computes the μP model's outputs — so
  `AutoModel*.from_pretrained` and `pipeline` are right, and `MuPModel.from_pretrained` unfolds them.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from .errors import MuPError

logger = logging.getLogger("hf_mup")

FORMAT_VERSION = 2
READOUT_INITS = ("mup", "standard")
ATTENTION_SCALES = ("1/d", "1/sqrt(d)")
VERSION_KEY = "version"


@dataclass(frozen=True)
class MuPConfig:
    """μP settings. Only `base_hidden_size` is required; the rest default to the values of Tensor Programs V.

    Usage: `MuPConfig(base_hidden_size=256, output_mult=8.0)`

    - `base_hidden_size`: width of the base (proxy) model the hyperparameters are tuned at.
    - `base_intermediate_size`: MLP width of the base model; derived as intermediate × base/hidden when None.
    - `base_num_attention_heads` / `base_head_dim`: the base's attention shape. When both are None the head size
      is kept fixed and the number of heads scales with width.
    - `base_num_key_value_heads`: key/value heads of the base model (grouped-query attention). When None the base
      keeps the model's query/key-value ratio, and one key/value head (multi-query) stays one.
    - `input_mult`: multiplier on every embedding output. (BERT sums its embeddings into a LayerNorm, which undoes
      any common factor: there `input_mult` has no effect.)
    - `output_mult`: the readout sees `output_mult / m` × its input, m = hidden / base hidden.
    - `attn_mult`: attention logits are scaled by `attn_mult · √d_base / d_head` (1/d attention).
    - `zero_init_query`: initialise the query projection to zero.
    - `zero_init_readout`: initialise an untied readout (`lm_head`, `score`, `classifier`) to zero.
    - `readout_init`: with `zero_init_readout=False`, "mup" (the stock init; with the `output_mult / m` multiplier
      the readout's effective std falls as 1/m) or "standard" (effective std falls as 1/√m, as in standard
      parametrization: Lingle's "SP unembedding init" ablation).
    - `attention_scale`: "1/d" (μP: attention logits scaled by `attn_mult · √d_base / d`) or "1/sqrt(d)" (the
      standard `attn_mult / √d`). The two differ only when the head size changes with width.
    - `trainable_norm_gains`: False fixes every norm's gain (its `weight`) where it is, 1 at init: no gradient, no
      optimizer slot (Lingle's baseline has no gains).
    - `base_num_layers`: depth of the base (proxy) model; turns on depth scaling (CompleteP, Dey et al. 2025): each
      residual branch's output × (base_num_layers / num_layers)^depth_alpha, with the LR and Adam ε of the tensors
      inside the blocks scaled to match (`hf_mup.rules`). None (the default): μP across width only.
    - `depth_alpha`: the depth exponent α in [0.5, 1]; 1 is CompleteP, 0.5 the "lazy" depth-μP.
    - `eps_width_scaling`: Adam's ε × 1/m_N (m_N = hidden / base hidden) on every tensor with a width dimension,
      as CompleteP (Table 1, and its reference code) and Megatron-LM's μP recipe do: in μP the gradients, so Adam's
      √v, shrink as 1/m_N, and a fixed ε would grow relative to them. False: ε is not scaled with width
      (microsoft/mup). Depth scaling's ε factor applies either way.
    """

    base_hidden_size: int
    base_intermediate_size: int | None = None
    base_num_attention_heads: int | None = None
    base_head_dim: int | None = None
    base_num_key_value_heads: int | None = None
    input_mult: float = 1.0
    output_mult: float = 1.0
    attn_mult: float = 1.0
    zero_init_query: bool = True
    zero_init_readout: bool = True
    readout_init: str = "mup"
    attention_scale: str = "1/d"
    trainable_norm_gains: bool = True
    base_num_layers: int | None = None
    depth_alpha: float = 1.0
    eps_width_scaling: bool = True

    def __post_init__(self) -> None:
        for name in ("base_hidden_size", "base_intermediate_size", "base_num_attention_heads", "base_head_dim",
                     "base_num_key_value_heads", "base_num_layers"):
            value = getattr(self, name)
            if value is None and name != "base_hidden_size":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise MuPError(f"{name} must be a positive integer, got {value!r}.")
            object.__setattr__(self, name, int(value))
        for name in ("input_mult", "output_mult", "attn_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise MuPError(f"{name} must be a positive finite number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        alpha: object = self.depth_alpha  # checked as given, whatever its type (the cast: typeshed's Real has no >=)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.5 <= cast(float, alpha) <= 1.0:
            raise MuPError(f"depth_alpha must be a number in [0.5, 1] (1: CompleteP, 0.5: depth-μP), got {alpha!r}.")
        object.__setattr__(self, "depth_alpha", float(alpha))
        for name in ("zero_init_query", "zero_init_readout", "trainable_norm_gains", "eps_width_scaling"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise MuPError(f"{name} must be True or False, got {value!r}.")
        for name, choices in (("readout_init", READOUT_INITS), ("attention_scale", ATTENTION_SCALES)):
            if getattr(self, name) not in choices:
                raise MuPError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}.")
        if self.readout_init != "mup" and self.zero_init_readout:
            raise MuPError(f"readout_init={self.readout_init!r} sets a non-zero readout init: give "
                           "zero_init_readout=False with it.")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The settings plus the format version: what `config.mup` holds."""
        return {**dataclasses.asdict(self), VERSION_KEY: FORMAT_VERSION}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MuPConfig:
        """Settings from `config.mup` or keyword arguments; the format version, if present, is checked and dropped."""
        data = dict(data)
        format_version(data)
        data.pop(VERSION_KEY, None)
        unknown = set(data) - set(cls.field_names())
        if unknown:
            raise MuPError(f"Unknown μP settings {sorted(unknown)}; the μP settings are {list(cls.field_names())}.")
        if "base_hidden_size" not in data:
            raise MuPError("base_hidden_size is missing: give base_hidden_size=<the proxy's width>.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_string(cls, text: str) -> MuPConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> MuPConfig:
        return MuPConfig.from_dict({**dataclasses.asdict(self), **changes})


def _named_settings_only(init: Callable[..., None]) -> Callable[..., None]:
    """MuPConfig's dataclass __init__, refusing an unknown keyword with a MuPError that suggests the setting meant
    (a bare TypeError otherwise); dataclasses.replace / asdict and the fields are unchanged."""
    @functools.wraps(init)
    def __init__(self: MuPConfig, *args: Any, **kwargs: Any) -> None:
        fields = MuPConfig.field_names()
        unknown = [k for k in kwargs if k not in fields]
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, fields, 1)) else repr(k)
                     for k in unknown]
            raise MuPError(f"Unknown μP setting(s) for MuPConfig: {', '.join(hints)}. "
                           f"μP settings: {', '.join(fields)}.")
        init(self, *args, **kwargs)

    return __init__


# (mypy refuses assigning to a method: replacing the dataclass __init__ with its checked wrapper is the point)
MuPConfig.__init__ = _named_settings_only(MuPConfig.__init__)  # type: ignore[method-assign]


def format_version(stored: Mapping[str, Any]) -> int:
    """The format version of a stored `config.mup` (1 when it has none); a newer one than this hf_mup is an error."""
    version = stored.get(VERSION_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MuPError(f"config.mup has an invalid format version {version!r}.")
    if version > FORMAT_VERSION:
        raise MuPError(
            f"config.mup has format version {version}, newer than this hf_mup understands ({FORMAT_VERSION}): "
            "upgrade hf_mup (pip install -U hf_mup)."
        )
    return version


def resolve(stored: Mapping[str, Any] | None, explicit: Mapping[str, Any]) -> MuPConfig:
    """The μP settings from a stored `config.mup` merged with explicit ones: explicit wins, and a conflict is logged.

    Usage: `mup = resolve(config.mup, {"output_mult": 4.0})`
    """
    explicit = {k: v for k, v in explicit.items() if v is not None}  # None: not given
    if not stored:
        if "base_hidden_size" not in explicit:
            raise MuPError(
                "Give base_hidden_size=<the proxy's width>, e.g. MuPModel.from_config(config, base_hidden_size=256) "
                "(the config has no stored μP settings, config.mup)."
            )
        return MuPConfig.from_dict(explicit)
    base = dataclasses.asdict(MuPConfig.from_dict(stored))
    for key, value in explicit.items():
        if key in base and base[key] != value:
            logger.warning("hf_mup: %s=%r overrides the stored config.mup value %r.", key, value, base[key])
    return MuPConfig.from_dict({**base, **explicit})
