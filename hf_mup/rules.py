"""The μP rules, in one table ("Table 8" of Tensor Programs V, the form microsoft/mup implements).

A tensor's *kind* follows from which of its dimensions grow with width (compared with the base model):

| kind    | width dims           | init std | Adam LR | SGD LR                  |
|---------|----------------------|----------|---------|-------------------------|
| hidden  | fan-in and fan-out   | σ/√m     | η/m     | η·fanout_m/fanin_m      |
| input   | fan-out only         | σ        | η       | η·m                     |
| readout | fan-in only          | σ or 0   | η       | η·m                     |
| scalar  | none                 | σ        | η       | η                       |

m is the fan-in multiplier (fan-out for input tensors). Forward multipliers (input_mult, output_mult/m,
the 1/d attention scale) are applied by `hf_mup.model`; they are not per-tensor.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import MuPError

ADAM_LIKE = ("adamw", "adam")
SGD_LIKE = ("sgd",)
OPTIMIZERS = ADAM_LIKE + SGD_LIKE


class Kind(str, enum.Enum):
    HIDDEN = "hidden"
    INPUT = "input"
    READOUT = "readout"
    SCALAR = "scalar"


@dataclass(frozen=True)
class TensorRule:
    """What μP does to one parameter tensor."""

    kind: Kind
    fanin_mult: float = 1.0
    fanout_mult: float = 1.0

    @property
    def width_mult(self) -> float:
        """The m of the rules table: fan-out multiplier for input tensors, fan-in multiplier otherwise."""
        return self.fanout_mult if self.kind is Kind.INPUT else self.fanin_mult

    @property
    def init_scale(self) -> float:
        """Factor on the stock HF init std (zero-inits are decided by the model, not here)."""
        return self.fanin_mult**-0.5 if self.kind is Kind.HIDDEN else 1.0

    def lr_mult(self, optimizer: str = "adamw") -> float:
        """Factor on the user's learning rate for this tensor."""
        if optimizer in ADAM_LIKE:
            return 1.0 / self.fanin_mult if self.kind is Kind.HIDDEN else 1.0
        if optimizer in SGD_LIKE:
            if self.kind is Kind.HIDDEN:
                return self.fanout_mult / self.fanin_mult
            return 1.0 if self.kind is Kind.SCALAR else self.width_mult
        raise MuPError(f"No μP learning-rate rule for optimizer {optimizer!r}; use one of {OPTIMIZERS}.")


def classify(
    shape: tuple[int, ...],
    base_shape: tuple[int, ...],
    delta_shape: tuple[int, ...],
    fan_in_dim: int | None,
    fan_out_dim: int,
) -> TensorRule:
    """Kind and multipliers of a tensor from its shape in the model, the base and a wider "delta" model.

    The width dimensions are those that differ between base and delta (so kinds are right even at base width);
    the multipliers are the model's sizes over the base's along them. `fan_in_dim` is None for tensors without
    one (embedding tables are looked up, not multiplied).
    """
    if not len(shape) == len(base_shape) == len(delta_shape):
        raise MuPError(f"Shape {shape}, base shape {base_shape} and delta shape {delta_shape} differ in rank.")
    width_dims = {i for i, (b, d) in enumerate(zip(base_shape, delta_shape)) if b != d}
    unexpected = width_dims - {fan_in_dim, fan_out_dim} | {
        i for i, (n, b) in enumerate(zip(shape, base_shape)) if n != b and i not in width_dims
    }
    if unexpected:
        raise MuPError(
            f"A parameter of shape {tuple(shape)} (base {tuple(base_shape)}) changes with width along dimension(s) "
            f"{sorted(unexpected)}, which is neither its fan-in nor its fan-out; hf_mup cannot scale it."
        )
    fanin_mult = shape[fan_in_dim] / base_shape[fan_in_dim] if fan_in_dim in width_dims else 1.0
    fanout_mult = shape[fan_out_dim] / base_shape[fan_out_dim] if fan_out_dim in width_dims else 1.0
    if fan_in_dim in width_dims and fan_out_dim in width_dims:
        kind = Kind.HIDDEN
    elif fan_out_dim in width_dims:
        kind = Kind.INPUT
    elif fan_in_dim in width_dims:
        kind = Kind.READOUT
    else:
        kind = Kind.SCALAR
    return TensorRule(kind, fanin_mult, fanout_mult)


def attention_scale_factor(attn_mult: float, head_dim: int, base_head_dim: int) -> float:
    """Factor on the stock 1/√d attention scale that gives μP's attn_mult·√d_base/d."""
    return attn_mult * (base_head_dim / head_dim) ** 0.5


def weight_decay_for_group(weight_decay: float, lr: float, lr_mult: float, mode: str) -> float:
    """The group's `weight_decay` such that torch's decoupled decay (lr·wd per step) follows `mode`.

    - width_independent: lr·wd is the same for every width (microsoft/mup's MuAdamW/MuSGD default).
    - coupled: the plain value (lr·wd shrinks with the group's LR).
    - independent: the decay per step is `weight_decay`, whatever the LR (Lingle's "independent WD").
    """
    if mode == "width_independent":
        return weight_decay / lr_mult
    if mode == "coupled":
        return weight_decay
    if mode == "independent":
        return weight_decay / (lr * lr_mult) if lr > 0 else 0.0
    raise MuPError(f"Unknown weight_decay_mode {mode!r}; use 'width_independent', 'coupled' or 'independent'.")
