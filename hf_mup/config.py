"""`MuPConfig`: the μP settings of a model, stored in the HF config as `config.mup` (a plain dict)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import MuPError


@dataclass
class MuPConfig:
    """μP settings. Only `base_hidden_size` is required; the rest default to the values of Tensor Programs V.

    Usage: `MuPConfig(base_hidden_size=256, output_mult=8.0)`

    - `base_hidden_size`: width of the base (proxy) model the hyperparameters are tuned at.
    - `base_intermediate_size`: MLP width of the base model; derived as intermediate × base/hidden when None.
    - `base_num_attention_heads` / `base_head_dim`: the base's attention shape. When both are None the head size
      is kept fixed and the number of heads scales with width.
    - `input_mult`: multiplier on every embedding output.
    - `output_mult`: the readout sees `output_mult / m` × its input, m = hidden / base hidden.
    - `attn_mult`: attention logits are scaled by `attn_mult · √d_base / d_head` (1/d attention).
    - `zero_init_query`: initialise the query projection to zero.
    - `zero_init_readout`: initialise an untied readout (`lm_head`, `score`, `classifier`) to zero.
    """

    base_hidden_size: int
    base_intermediate_size: int | None = None
    base_num_attention_heads: int | None = None
    base_head_dim: int | None = None
    input_mult: float = 1.0
    output_mult: float = 1.0
    attn_mult: float = 1.0
    zero_init_query: bool = True
    zero_init_readout: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.base_hidden_size, int) or self.base_hidden_size <= 0:
            raise MuPError(f"base_hidden_size must be a positive integer, got {self.base_hidden_size!r}.")
        for name in ("input_mult", "output_mult", "attn_mult"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise MuPError(f"{name} must be a positive number, got {value!r}.")
            setattr(self, name, float(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MuPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MuPError(f"Unknown μP settings {sorted(unknown)}; known ones are {sorted(known)}.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_string(cls, text: str) -> "MuPConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "MuPConfig":
        return dataclasses.replace(self, **changes)
