"""The μP rules, in one table ("Table 8" of Tensor Programs V, the form microsoft/mup implements).

A tensor's *kind* follows from which of its dimensions grow with width (compared with the base model):

| kind    | width dims           | init std | Adam LR | SGD LR                  |
|---------|----------------------|----------|---------|-------------------------|
| hidden  | fan-in and fan-out   | σ/√m     | η/m     | η·fanout_m/fanin_m      |
| input   | fan-out only         | σ        | η       | η·m                     |
| readout | fan-in only          | σ or 0   | η       | η·m                     |
| scalar  | none                 | σ        | η       | η                       |
| down    | fan-in only, no 1/m  | σ/√m     | η/m     | η/m                     |
|         | forward multiplier   |          |         |                         |

m is the fan-in multiplier (fan-out for input tensors). Forward multipliers (input_mult, output_mult/m,
the 1/d attention scale) are applied by `hf_mup.model`; they are not per-tensor.

Depth (on when `MuPConfig.base_num_layers` is set): CompleteP, Dey et al. 2025 ("Don't be lazy", arXiv 2505.01618),
Table 1, with m_L = layers / base layers (transformer blocks) and α = `depth_alpha` (1: CompleteP):

| where                                     | forward   | Adam LR     | SGD LR        | Adam ε   | init                 |
|-------------------------------------------|-----------|-------------|---------------|----------|----------------------|
| each residual branch's output             | × m_L^-α  |             |               |          |                      |
| every tensor inside a block (weights,     |           | × m_L^(α-1) | × m_L^(2α-1)  | × m_L^-α | no depth factor      |
|   biases, norm gains)                     |           |             |               |          |                      |
| outside the blocks (embeddings, final     |           | × 1         | × 1           | × 1      |                      |
|   norm, readout, heads)                   |           |             |               |          |                      |

Sources: Table 1 (forward, Adam LR of hidden weights, biases and in-block norms, ε "in residual blocks", init); the
SGD exponent 2α−1 from the reference code's toy model (EleutherAI/nanoGPT-mup, branch `completep`,
relative_distance_from_linearization.ipynb: a branch's gradient carries its m_L^-α, so a plain gradient step needs
m_L^α more LR than Adam's); Lion takes Adam's rule (sign-based; the paper gives none). Weight decay has no depth
factor (Table 1: hidden λ·m_N), so "width_independent" divides by the width part of the LR multiplier only. A stock
init that itself depends on depth (GPT-2's c_proj, σ/√(2L)) is held at the base depth, σ/√(2·L_base), as
Megatron-LM's `depth_mup` recipe does (its output-projection init × m_L^0.5): at L = L_base the model is exactly the
width-only μP model.

Adapters (PEFT's LoRA, rsLoRA, DoRA; `hf_mup.adapters` reads their shapes off the layer they wrap): an adapter adds
s·B·A·x to a layer's output, with a rank r that stays fixed as the model widens. A (r × fan-in) maps the width to the
rank and no multiplier follows it: a "down" tensor, η/m for Adam (and SGD), its init PEFT's Kaiming ∝ 1/√fan-in,
which is σ/√m already. B (fan-out × r) maps the rank to the width: an "input" tensor, η for Adam, η·m for SGD, zero
init. An embedding's A (r × vocab) has no width dimension (scalar: η); its B is an input tensor. DoRA's magnitude
(one entry per output feature) is a vector along the fan-out: input. So at base width every adapter tensor trains at
η (plain LoRA) and, at m× the base, B's LR is m× A's: LoRA+'s ratio (Hayou et al. 2024, arXiv 2402.12354, Θ(width)
from the same infinite-width analysis), anchored at the base width instead of fixed. The forward scale s = α/r
(rsLoRA: α/√r) depends on r only, so it is the same at every width; keep r, α and use_rslora the same on the proxy
and the target. Adapters inside a block take the block's depth factors; on a residual branch B's output also carries
the branch multiplier (`hf_mup.apply`).

Adam's ε (`MuPConfig.eps_width_scaling`, on by default): × 1/m_N, m_N = hidden / base hidden, on every tensor with a
width dimension (all kinds but scalar), as CompleteP's Table 1 and reference code (which scales the one global ε by
1/m_N · m_L^-α) and Megatron-LM's μP recipe do. Under μP every such tensor's gradient, hence Adam's √v, shrinks as
1/m_N (benchmarks/adam_eps.py measures it), so a fixed ε would grow relative to the update with width. microsoft/mup
leaves ε alone: `eps_width_scaling=False`.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .errors import MuPError

# The two μP rule families: updates that normalise the gradient entrywise (Adam-like: Adam, AdamW, Adagrad,
# RMSprop, Lion's sign update, ...) and plain gradient steps (SGD). `optimizer_family` is the one place that decides
# which applies.
ADAM_LIKE = "adamw"
SGD_LIKE = "sgd"
# Muon (`hf_mup.MuonAdamW`, torch.optim.Muon): orthogonalised momentum for the hidden matrices, Adam's rules for the
# rest (embeddings, readout, norms, biases, 3-D expert tensors), as Muon is used.
MUON = "muon"
FAMILIES = (ADAM_LIKE, SGD_LIKE, MUON)
# torch.optim.Muon's `adjust_lr_fn`s (None is "original"); hf_mup's Muon factor undoes each one's width dependence.
MUON_ADJUST = ("original", "match_rms_adamw")

# Class names (lower case, with the bitsandbytes "paged" prefix and "8bit"/"32bit" suffixes removed) and
# `TrainingArguments.optim` names of each family.
# Lion (hf_mup.Lion, lion_pytorch's, bitsandbytes' Lion/Lion8bit/PagedLion...): each entry of its update is ±1, so
# Adam-like; Lingle (2024) found that μTransfer of the LR fails with it (README, hf_mup/lion.py).
_ADAM_CLASSES = {"adam", "adamw", "nadam", "radam", "adamax", "sparseadam", "adagrad", "rmsprop", "adamwfp8", "lion"}
_SGD_CLASSES = {"sgd"}
_MUON_CLASSES = {"muon", "muonadamw"}
_ADAM_OPTIMS = {
    "adamw", "adam", "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_apex_fused",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "adagrad", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    "lion", "lion_8bit", "lion_32bit", "paged_lion_8bit", "paged_lion_32bit",
}
_SGD_OPTIMS = {"sgd"}
_MUON_OPTIMS = {"muon"}
# Optimizers with no μP rule, and why (checked by substring of the lower-case name).
_REFUSED = {
    "adafactor": "Adafactor's relative step size and parameter scaling size each update by the tensor's RMS, which "
                 "μP's per-tensor learning rates do not model",
    "schedule_free": "schedule-free optimizers average iterates and set their own warmup; untested with μP",
    "schedulefree": "schedule-free optimizers average iterates and set their own warmup; untested with μP",
    "galore": "GaLore projects gradients to a low-rank subspace; untested with μP",
    "apollo": "APOLLO scales updates by projected statistics; untested with μP",
    "lomo": "LOMO fuses the update into the backward pass; untested with μP",
}


def _class_key(name: str) -> str:
    key = name.lower()
    key = key.removeprefix("paged")
    for suffix in ("8bit", "32bit", "4bit"):
        key = key.removesuffix(suffix)
    return key


def optimizer_family(optimizer: object) -> str:
    """The μP rule family (`"adamw"`, `"sgd"` or `"muon"`) of an optimizer class, instance, or name; a `MuPError`
    otherwise.

    Usage: `optimizer_family(torch.optim.Adamax)`, `optimizer_family("adamw_torch_fused")`, `optimizer_family(opt)`

    Names are `TrainingArguments.optim` values or the families themselves ("adamw", "adam", "sgd").
    """
    if isinstance(optimizer, str) or hasattr(optimizer, "value"):  # a name, or TrainingArguments' OptimizerNames
        name = str(getattr(optimizer, "value", optimizer))
        key, label = name.lower(), f"optim={name!r}"
        family = next((f for f, names in ((ADAM_LIKE, _ADAM_OPTIMS), (SGD_LIKE, _SGD_OPTIMS), (MUON, _MUON_OPTIMS))
                       if key in names), None)
    else:
        cls = optimizer if isinstance(optimizer, type) else type(optimizer)
        key, label = _class_key(cls.__name__), cls.__name__
        family = next((f for c in cls.__mro__ for f, names in ((ADAM_LIKE, _ADAM_CLASSES), (SGD_LIKE, _SGD_CLASSES),
                                                               (MUON, _MUON_CLASSES))
                       if _class_key(c.__name__) in names), None)
    if family is not None:
        return family
    reason = next((why for k, why in _REFUSED.items() if k in key), None)
    raise MuPError(
        f"hf_mup has no μP rule for the optimizer {label}"
        + (f": {reason}." if reason else ": μP's per-tensor learning rates depend on whether the update normalises the "
           "gradient entrywise (Adam-like) or not (SGD), and this optimizer is neither known one.")
        + " Use an Adam-like optimizer (e.g. optim='adamw_torch', torch.optim.AdamW) or SGD"
        + ("" if reason else ", or, if you know its family, build the groups with "
           "hf_mup.mup_param_groups(model, lr, optimizer='adamw' or 'sgd') and pass them to it yourself") + "."
    )


class Kind(str, enum.Enum):
    HIDDEN = "hidden"
    INPUT = "input"
    READOUT = "readout"
    SCALAR = "scalar"
    DOWN = "down"  # fan-in only, with no 1/m multiplier after it: a LoRA adapter's A (width → rank)


_FANIN_SCALED = (Kind.HIDDEN, Kind.DOWN)  # kinds whose init and Adam LR divide by the fan-in multiplier


@dataclass(frozen=True)
class TensorRule:
    """What μP does to one parameter tensor."""

    kind: Kind
    fanin_mult: float = 1.0
    fanout_mult: float = 1.0
    depth_mult: float = 1.0  # m_L for a tensor inside a block under depth scaling, else 1
    depth_alpha: float = 1.0
    stock_init_depth_power: float = 0.0  # the stock init std ∝ layers^-power (GPT-2's c_proj: 0.5)
    eps_width_mult: float = 1.0  # m_N where Adam's ε scales as 1/m_N (`MuPConfig.eps_width_scaling`), else 1
    fan_in_dim: int | None = None  # which dimensions of the tensor are its fan-in and fan-out (Muon's factor needs
    fan_out_dim: int | None = None  # its shape at the base width); None where unknown or absent

    @property
    def width_mult(self) -> float:
        """The m of the rules table: fan-out multiplier for input tensors, fan-in multiplier otherwise."""
        return self.fanout_mult if self.kind is Kind.INPUT else self.fanin_mult

    @property
    def init_scale(self) -> float:
        """Factor on the stock HF init std (zero-inits are decided by the model, not here)."""
        width = self.fanin_mult**-0.5 if self.kind in _FANIN_SCALED else 1.0
        depth: float = self.depth_mult**self.stock_init_depth_power  # (float ** float is typed Any: complex if < 0)
        return width * depth

    def width_lr_mult(self, optimizer: object = "adamw") -> float:
        """The width part of `lr_mult` (what weight decay's "width_independent" mode divides by)."""
        if _adam_like(optimizer):
            return 1.0 / self.fanin_mult if self.kind in _FANIN_SCALED else 1.0
        if self.kind in _FANIN_SCALED:
            return self.fanout_mult / self.fanin_mult
        return 1.0 if self.kind is Kind.SCALAR else self.width_mult

    def lr_mult(self, optimizer: object = "adamw") -> float:
        """Factor on the user's learning rate for this tensor, for an optimizer family, name or class."""
        adam = _adam_like(optimizer)
        depth: float = self.depth_mult ** (self.depth_alpha - 1 if adam else 2 * self.depth_alpha - 1)
        return self.width_lr_mult(optimizer) * depth

    def eps_mult(self, optimizer: object = "adamw") -> float:
        """Factor on Adam's ε for this tensor: 1/m_N (width) × m_L^-α (depth); 1 for SGD, which has none."""
        if not _adam_like(optimizer):
            return 1.0
        depth: float = self.depth_mult**-self.depth_alpha
        return 1.0 / self.eps_width_mult * depth

    def uses_muon(self, ndim: int) -> bool:
        """Whether Muon updates this tensor (a hidden matrix: 2-D, both fans growing with width); Adam's rules train
        the others (embeddings, readout, norms, biases, 3-D expert tensors) in a Muon optimizer."""
        return self.kind is Kind.HIDDEN and ndim == 2 and self.fan_in_dim is not None and self.fan_out_dim is not None

    def muon_width_lr_mult(self, shape: tuple[int, ...], adjust_lr_fn: str | None = None) -> float:
        """The width part of `muon_lr_mult` (what weight decay's "width_independent" mode divides by)."""
        assert self.fan_in_dim is not None and self.fan_out_dim is not None  # (uses_muon)
        base = [float(n) for n in shape]
        base[self.fan_in_dim] /= self.fanin_mult
        base[self.fan_out_dim] /= self.fanout_mult
        spectral = math.sqrt(self.fanout_mult / self.fanin_mult)
        factor = spectral * muon_adjust(base, adjust_lr_fn) / muon_adjust(shape, adjust_lr_fn)
        return float(f"{factor:.12g}")  # (tensors whose factors differ in the last bits share a group)

    def muon_lr_mult(self, shape: tuple[int, ...], adjust_lr_fn: str | None = None) -> float:
        """Factor on the user's learning rate for a hidden matrix that Muon updates with `adjust_lr_fn`.

        Muon's orthogonalised update O has a spectral norm of about 1, and torch scales it by `muon_adjust` of the
        shape. The spectral condition for feature learning (Yang, Simon & Bernstein 2023) asks for an update of
        spectral norm ∝ √(fan-out/fan-in); anchored at the base width, the factor is √(fanout_m/fanin_m) × torch's
        adjustment at the base shape over its adjustment at this shape. "original" (√max(1, A/B)) keeps a hidden
        matrix's ratio of dimensions, hence the factor 1: its LR transfers as it is; "match_rms_adamw" (0.2·√max(A,
        B)) grows as √m, which the factor 1/√m undoes. Depth: Adam's m_L^(α-1) (both updates are normalised).
        """
        depth: float = self.depth_mult ** (self.depth_alpha - 1)
        return self.muon_width_lr_mult(shape, adjust_lr_fn) * depth


def _adam_like(optimizer: object) -> bool:
    """Adam's rules apply: an Adam-like optimizer, or the tensors Muon leaves to its Adam (`TensorRule.uses_muon`)."""
    return optimizer_family(optimizer) in (ADAM_LIKE, MUON)


def muon_adjust(shape: tuple[int, ...] | list[float], adjust_lr_fn: str | None) -> float:
    """torch.optim.Muon's factor on the LR of a matrix of `shape` (its `_adjust_lr`): "original" (or None)
    √max(1, A/B), "match_rms_adamw" 0.2·√max(A, B), for shape (A, B)."""
    a, b = float(shape[0]), float(shape[1])
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, a / b))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    raise MuPError(f"Muon's adjust_lr_fn={adjust_lr_fn!r}: use 'original' or 'match_rms_adamw' (torch.optim.Muon's; "
                   "hf_mup's factor makes either transfer across width).")


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
    unexpected = width_dims - {fan_in_dim, fan_out_dim}  # (other dims may differ from the base: a new head's labels)
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
    return TensorRule(kind, fanin_mult, fanout_mult, fan_in_dim=fan_in_dim, fan_out_dim=fan_out_dim)


def attention_scale_factor(attn_mult: float, head_dim: int, base_head_dim: int, scale: str = "1/d") -> float:
    """Factor on the stock 1/√d attention scale that gives μP's attn_mult·√d_base/d (`scale` "1/d"), or the
    standard attn_mult/√d ("1/sqrt(d)")."""
    return attn_mult * ((base_head_dim / head_dim) ** 0.5 if scale == "1/d" else 1.0)


def weight_decay_for_group(weight_decay: float, lr: float, lr_mult: float, mode: str,
                           width_lr_mult: float | None = None) -> float:
    """The group's `weight_decay` such that torch's decoupled decay (lr·wd per step) follows `mode`.

    - width_independent: lr·wd is the same for every width (microsoft/mup's MuAdamW/MuSGD default); it divides by
      `width_lr_mult` (default `lr_mult`), the width part of the LR multiplier: depth changes lr·wd as it changes
      the LR (CompleteP's Table 1).
    - coupled: the plain value (lr·wd shrinks with the group's LR).
    - independent: the decay per step is `weight_decay`, whatever the LR (Lingle's "independent WD").
    """
    if mode == "width_independent":
        return weight_decay / (lr_mult if width_lr_mult is None else width_lr_mult)
    if mode == "coupled":
        return weight_decay
    if mode == "independent":
        return weight_decay / (lr * lr_mult) if lr > 0 else 0.0
    raise MuPError(f"Unknown weight_decay_mode {mode!r}; use 'width_independent', 'coupled' or 'independent'.")


def weight_decay_from_timescale(timescale: float, lr: float, steps: int) -> float:
    """AdamW's `weight_decay` λ whose timescale is `timescale` of training: λ = 1/(η·τ·steps).

    Usage: `args.weight_decay = weight_decay_from_timescale(0.5, lr=2**-8, steps=20_000)`

    AdamW's decay makes the weights an exponential moving average of the updates over τ_iter = 1/(η·λ) steps (Wang &
    Aitchison, arXiv 2405.13698); Power Lines (arXiv 2505.13738) write τ = B/(η·λ·D) = τ_iter/steps, a fraction of
    training. With `weight_decay_mode` "width_independent", every μP group's lr·wd is η·λ, so each group forgets on
    this timescale (CompleteP's depth factor aside). Refuses a timescale of one step or less (η·λ ≥ 1 would remove
    every weight each step).
    """
    if not (math.isfinite(timescale) and timescale > 0) or not (math.isfinite(lr) and lr > 0) or steps < 1:
        raise MuPError(f"weight-decay timescale {timescale!r}, LR {lr!r}, steps {steps!r}: the timescale and the LR "
                       "must be positive and finite, the steps at least 1.")
    if timescale * steps <= 1:
        raise MuPError(f"a weight-decay timescale of {timescale:g} of {steps} steps is {timescale * steps:.3g} step(s): "
                       "η·λ ≥ 1 would remove every weight each step. Give a timescale of more than 1/steps "
                       "(a fraction of training: 1 forgets over the whole run).")
    return 1.0 / (lr * timescale * steps)


def timescale_of(weight_decay: float, lr: float, steps: int) -> float:
    """The timescale (a fraction of training) of AdamW's `weight_decay` at LR `lr` over `steps`: 1/(η·λ·steps);
    inf without decay. The inverse of `weight_decay_from_timescale`."""
    return math.inf if weight_decay <= 0 else 1.0 / (lr * weight_decay * steps)
