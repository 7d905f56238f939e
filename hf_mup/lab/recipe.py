"""What a run trains with: one frozen, validated `Recipe` (model shape, μP settings, optimizer, weight decay, schedule,
clipping, batch, steps), which round-trips through JSON.

A sweep trial stores the recipe it trained with, `transfer` returns the target's, and the pipeline's rows,
`recipes/gpt2_wikitext.py --hparams` and the training loop (`hf_mup.lab.train`) take the optimizer, schedule and model
from it: a setting added here and read by `build_optimizer` / `build_scheduler` / `build_model` reaches them all.
(The Trainer's logistics, logging, evaluation and checkpoints, stay TrainingArguments'.)

Usage:
    recipe = Recipe(arch="gpt2", width=256, base_width=64, mup={"output_mult": 8.0}, lr=2**-7, steps=150)
    model = recipe.build_model()                   # μP (MuPModel) or the stock model, seeded by recipe.seed
    optimizer = recipe.build_optimizer(model)      # AdamW or Lion over μP's per-tensor groups (SP: plain groups)
    scheduler = recipe.build_scheduler(optimizer)  # warmup, then cosine or linear decay
    Recipe.from_json(recipe.to_json()) == recipe   # True
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ..errors import MuPError

ARCHS = ("gpt2", "bert", "llama", "mixtral")  # BERT trains as a masked LM, the others as causal LMs
# "mup_global_lr": a μP model trained with one LR for every tensor, deliberately broken (a coordinate check must
# catch it; hf_mup's first-step check would refuse it, so its group is marked unchecked).
PARAMETRIZATIONS = ("mup", "sp", "mup_global_lr")
# "muon": hf_mup.MuonAdamW (Muon on the hidden matrices, AdamW on the rest; torch's "match_rms_adamw" with μP's
# factor); "muon_torch": the same without μP's factor on Muon's groups (torch's LR scaling as it is: the ablation)
OPTIMIZERS = ("adamw", "lion", "muon", "muon_torch")
SCHEDULES = ("cosine", "linear")  # after the linear warmup, down to final_lr_frac of the LR
WEIGHT_DECAY_MODES = ("width_independent", "coupled", "independent")  # hf_mup.rules.weight_decay_for_group
SP_INITS = ("fixed", "fan_in")  # SP's init std: initializer_range, or 1/√width
LATER_FIELDS = ("weight_decay_timescale", "adapters")  # written only when set (Recipe.to_dict)
# How adapter tensors train: hf_mup's ADAPTER_RULES ("mup", "plain"), and "loraplus": plain, with B's LR × the ratio
# LoRA+ recommends (Hayou et al. 2024; PEFT's create_loraplus_optimizer takes it as loraplus_lr_ratio)
ADAPTERS, LORAPLUS_RATIO = ("mup", "plain", "loraplus"), 16.0
# transformers config fields the recipe's shape sets (lm_config): refused in Recipe.config
SHAPE_CONFIG_KEYS = frozenset({"vocab_size", "n_positions", "max_position_embeddings", "n_embd", "hidden_size", "n_layer",
                               "num_hidden_layers", "n_head", "num_attention_heads", "head_dim", "initializer_range"})


def _frozen(value: Any) -> Any:
    """JSON-shaped data made hashable and immutable: lists become tuples, dicts read-only mappings."""
    if isinstance(value, Mapping):
        return _FrozenDict({str(k): _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes (a frozen recipe's `config` / `mup`), equal to a plain dict of the same items."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a Recipe is frozen: use recipe.replace(...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse  # type: ignore

    def __reduce__(self) -> tuple[Any, ...]:  # copy, deepcopy and pickle rebuild it whole, never item by item
        return (type(self), (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self)))  # equal mappings have equal keys (8 == 8.0, so the values are left out)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Recipe:
    """What one run trains with. Every field is validated at construction; `replace` makes a validated copy.

    Usage: `Recipe(arch="llama", width=128, base_width=64, lr=2**-7, optimizer="lion", betas=(0.95, 0.98))`
    """

    # the model: a small GPT-2, BERT or Llama of hidden size `width` (`lm_config`)
    arch: str = "gpt2"
    width: int = 64
    layers: int = 2
    head_dim: int = 16
    seq_len: int = 64
    vocab_size: int = 2048
    initializer_range: float = 0.02
    config: Mapping[str, Any] = field(default_factory=dict)  # more transformers config fields, e.g. hidden_act
    # μP: "mup" (MuPModel with base width `base_width` and the MuPConfig fields in `mup`), "sp" (the stock model)
    parametrization: str = "mup"
    base_width: int | None = 64
    mup: Mapping[str, Any] = field(default_factory=dict)  # MuPConfig fields besides base_hidden_size
    sp_init: str = "fixed"
    # the optimizer: its LR (μP: the base LR that each tensor's multiplier scales), β, ε, weight decay
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    weight_decay_mode: str = "width_independent"
    # AdamW's decay as a timescale τ, a fraction of training (Wang & Aitchison; Power Lines' B/(ηλD)): weight_decay
    # becomes 1/(lr·τ·steps) (`hf_mup.rules.weight_decay_from_timescale`); 0: off, weight_decay applies
    weight_decay_timescale: float = 0.0
    decay_norms_and_biases: bool = False  # False: no decay on biases and norm weights (HF Trainer, Megatron-LM)
    adapters: str = "mup"  # how PEFT adapter tensors train (ADAPTERS): their μP rules, one LR, or LoRA+'s ratio
    # the schedule: linear warmup over warmup_frac of the steps, then `schedule` down to final_lr_frac of the LR
    schedule: str = "cosine"
    warmup_frac: float = 0.1
    final_lr_frac: float = 0.1
    clip: float = 1.0  # gradient-norm clipping, 0: none
    # the budget
    batch_size: int = 16
    steps: int = 150
    seed: int = 0  # the init, the batch order, the masks

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen(dict(self.config)))
        object.__setattr__(self, "mup", _frozen(dict(self.mup)))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        self._check()

    def _check(self) -> None:
        from ..config import MuPConfig

        def one_of(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                raise MuPError(f"Recipe {name}={getattr(self, name)!r}: use one of {', '.join(choices)}.")

        one_of("arch", ARCHS)
        one_of("parametrization", PARAMETRIZATIONS)
        one_of("optimizer", OPTIMIZERS)
        one_of("schedule", SCHEDULES)
        one_of("weight_decay_mode", WEIGHT_DECAY_MODES)
        one_of("sp_init", SP_INITS)
        one_of("adapters", ADAPTERS)
        for name in ("width", "layers", "head_dim", "vocab_size", "batch_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MuPError(f"Recipe {name}={value!r}: a positive whole number.")
        if self.seq_len < 2:
            raise MuPError(f"Recipe seq_len={self.seq_len}: at least 2.")
        if self.width % self.head_dim:
            raise MuPError(f"Recipe width {self.width} is not a multiple of head_dim {self.head_dim}.")
        if self.parametrization != "sp":
            if self.base_width is None or self.base_width < 1 or self.base_width % self.head_dim:
                raise MuPError(f"Recipe base_width={self.base_width!r}: μP needs a positive multiple of head_dim "
                               f"{self.head_dim} (the proxy's width, where μP equals SP).")
        unknown = set(self.mup) - set(MuPConfig.field_names()) | ({"base_hidden_size"} & set(self.mup))
        if unknown:
            raise MuPError(f"Recipe mup: unknown or misplaced setting(s) {sorted(unknown)} (the base width is "
                           f"base_width); use {', '.join(n for n in MuPConfig.field_names() if n != 'base_hidden_size')}.")
        MuPConfig.from_dict({"base_hidden_size": 1, **self.mup})  # the values, checked now rather than at build time
        shape = sorted(set(self.config) & SHAPE_CONFIG_KEYS)
        if shape:
            raise MuPError(f"Recipe config sets {shape}: the shape is the recipe's own (width, layers, head_dim, "
                           "seq_len, vocab_size, initializer_range); set those fields instead.")
        positive = {"lr": self.lr, "eps": self.eps, "initializer_range": self.initializer_range}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise MuPError(f"Recipe {name}={value!r}: a positive finite number.")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise MuPError(f"Recipe betas={self.betas!r}: two numbers in [0, 1).")
        if self.weight_decay_timescale:
            if self.weight_decay:
                raise MuPError(f"Recipe sets weight_decay={self.weight_decay:g} and weight_decay_timescale="
                               f"{self.weight_decay_timescale:g}: give one (the timescale sets the decay).")
            if self.weight_decay_mode != "width_independent":
                raise MuPError(f"Recipe weight_decay_timescale with weight_decay_mode={self.weight_decay_mode!r}: a "
                               "timescale is every group's lr·wd, which only 'width_independent' keeps equal.")
            from ..rules import weight_decay_from_timescale

            weight_decay_from_timescale(self.weight_decay_timescale, self.lr, self.steps)  # refuses η·λ >= 1
        if not (self.weight_decay >= 0 and self.clip >= 0 and 0 <= self.warmup_frac <= 1 and 0 <= self.final_lr_frac <= 1):
            raise MuPError("Recipe: weight_decay and clip must be >= 0, warmup_frac and final_lr_frac in [0, 1].")

    # ------------------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data (lists for tuples). A field added since studies were first stored is left out
        at its default (`LATER_FIELDS`), so a stored study's spec still matches the recipe that made it."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.name in LATER_FIELDS and getattr(self, f.name) == f.default)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The inverse of `to_dict`; an unknown key is an error that lists the known ones."""
        unknown = set(data) - set(cls.field_names())
        if unknown:
            raise MuPError(f"unknown Recipe field(s) {sorted(unknown)}; the fields are {', '.join(cls.field_names())}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> Recipe:
        """A validated copy with `changes`; `mup` and `config` given here are merged into the recipe's."""
        for name in ("mup", "config"):
            if name in changes:
                changes[name] = {**getattr(self, name), **changes[name]}
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------- the model

    @property
    def task(self) -> str:
        """"masked_lm" for BERT, else "causal_lm": what the run trains."""
        return "masked_lm" if self.arch == "bert" and not self.config.get("is_decoder") else "causal_lm"

    @property
    def tokens(self) -> int:
        """Tokens the run reads: steps × batch × sequence length."""
        return self.steps * self.batch_size * self.seq_len

    @property
    def warmup_steps(self) -> int:
        """The linear warmup's length in steps, as `lr_lambda` counts it."""
        return warmup_steps(self.steps, self.warmup_frac)

    def model_config(self) -> Any:
        """The transformers config of the recipe's shape (`hf_mup.lab.lm.lm_config`)."""
        std = self.width**-0.5 if self.parametrization == "sp" and self.sp_init == "fan_in" else self.initializer_range
        return lm_config(self.arch, self.width, self.layers, self.head_dim, self.seq_len, self.vocab_size,
                         initializer_range=std, **_plain(self.config))  # plain dicts: transformers may edit them

    def mup_settings(self) -> dict[str, Any]:
        """The `MuPModel.from_config` keywords: base_hidden_size and the `mup` fields."""
        return {"base_hidden_size": self.base_width, **self.mup}

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model (seeded by `seed`): MuPModel for μP, the stock class for SP (`build_model`)."""
        return build_model(self.model_config(), self.parametrization, self.base_width, self.mup, self.seed, device)

    # ---------------------------------------------------------------------------------- optimizer, schedule

    @property
    def decay(self) -> float:
        """AdamW's weight_decay λ the run applies: `weight_decay`, or the one `weight_decay_timescale` gives."""
        from ..rules import weight_decay_from_timescale

        if self.weight_decay_timescale:
            return weight_decay_from_timescale(self.weight_decay_timescale, self.lr, self.steps)
        return self.weight_decay

    @property
    def timescale(self) -> float:
        """The decay's timescale as a fraction of training: 1/(decay per step · steps), the decay per step being
        lr·λ (in "independent" mode λ itself; in "coupled" mode the base LR's group's); inf without decay."""
        from ..rules import timescale_of

        lr = 1.0 if self.weight_decay_mode == "independent" else self.lr
        return self.weight_decay_timescale or timescale_of(self.weight_decay, lr, self.steps)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for `model` (`param_groups`, with the recipe's settings)."""
        return param_groups(model, self.parametrization, self.lr, self.optimizer, self.decay,
                            self.weight_decay_mode, self.decay_norms_and_biases, self.eps, self.adapters)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW, Lion or Muon with AdamW over `param_groups(model)`, with the recipe's β, ε and weight decay."""
        from ..lion import Lion
        from ..muon import MuonAdamW

        groups = self.param_groups(model)
        if self.optimizer == "lion":
            return Lion(groups, lr=self.lr, betas=self.betas, weight_decay=self.decay)
        if self.optimizer.startswith("muon"):  # (Newton-Schulz in float32 off the GPU: CPUs emulate bfloat16)
            cuda = any(p.is_cuda for p in model.parameters())
            return MuonAdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.decay,
                             ns_dtype=torch.bfloat16 if cuda else torch.float32)
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.decay)

    def lr_factor(self) -> Callable[[int], float]:
        """The schedule as a factor on each group's own LR (μP groups stay relative): `LambdaLR`'s lambda."""
        return lr_lambda(self.steps, self.warmup_frac, self.final_lr_frac, self.schedule)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor())


def lm_config(arch: str, width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048,
              **kw):
    """A small GPT-2, BERT, Llama or Mixtral config of hidden size `width`: fixed head size (heads = width /
    head_dim), MLP 4× (Mixtral: 4 experts of 2×, 2 per token), dropout 0, positions = `seq_len`. `kw`: more config
    fields (e.g. `initializer_range`, `eos_token_id`).

    Usage: `config = lm_config("bert", 256, layers=2, head_dim=16, seq_len=32, vocab_size=512)`
    """
    from transformers import BertConfig, GPT2Config, LlamaConfig, MixtralConfig

    if width <= 0 or width % head_dim:
        raise MuPError(f"width {width} is not a positive multiple of the head size {head_dim}.")
    if arch == "gpt2":
        kw = {"bos_token_id": 0, "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **kw}
        return GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers,
                          n_head=width // head_dim, **kw)
    if arch == "bert":
        kw = {"pad_token_id": 0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              "intermediate_size": 4 * width, **kw}
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, hidden_size=width,
                          num_hidden_layers=layers, num_attention_heads=width // head_dim, **kw)
    if arch == "llama":  # pre-norm RMSNorm, SwiGLU MLP, rotary positions, untied lm_head, no biases
        kw = {"bos_token_id": 0, "eos_token_id": 0, "num_key_value_heads": width // head_dim,
              "intermediate_size": 4 * width, **kw}
        return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, hidden_size=width,
                           num_hidden_layers=layers, num_attention_heads=width // head_dim, head_dim=head_dim, **kw)
    if arch == "mixtral":  # Llama's shape with a mixture of 4 experts (2 per token) of MLP width 2×, router aux loss
        kw = {"bos_token_id": 0, "eos_token_id": 0, "num_key_value_heads": width // head_dim,
              "intermediate_size": 2 * width, "num_local_experts": 4, "num_experts_per_tok": 2,
              "output_router_logits": True, "router_aux_loss_coef": 0.01, **kw}
        return MixtralConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, hidden_size=width,
                             num_hidden_layers=layers, num_attention_heads=width // head_dim, head_dim=head_dim, **kw)
    raise MuPError(f"arch {arch!r} is not supported here; use one of {', '.join(ARCHS)}.")


def gpt2_config(width: int, layers: int = 2, head_dim: int = 16, seq_len: int = 64, vocab_size: int = 2048, **kw):
    """`lm_config("gpt2", ...)`. Usage: `config = gpt2_config(256, layers=2, head_dim=16, seq_len=64, vocab_size=256)`"""
    return lm_config("gpt2", width, layers, head_dim, seq_len, vocab_size, **kw)


def lm_task(config: Any) -> str:
    """"masked_lm" for a BERT config (unless it is a decoder), else "causal_lm": the one place that decides."""
    return "masked_lm" if config.model_type == "bert" and not getattr(config, "is_decoder", False) else "causal_lm"


def model_class(config: Any) -> Any:
    """The one chooser of model classes: `AutoModelForMaskedLM` for a masked LM (`lm_task`), else
    `AutoModelForCausalLM`."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if lm_task(config) == "masked_lm" else AutoModelForCausalLM


def build_model(config: Any, parametrization: str, base_width: int | None, mup: Mapping[str, Any], seed: int = 0,
                device: str | torch.device = "cpu") -> Any:
    """The one model builder, seeded by `seed`: the stock class of `config` (`model_class`) for SP, `MuPModel` with
    base width `base_width` and the MuPConfig fields `mup` otherwise ("mup", "mup_global_lr").

    Usage: `model = build_model(lm_config("gpt2", 256), "mup", base_width=64, mup={"output_mult": 8.0})`
    """
    from ..model import MuPModel

    torch.manual_seed(seed)
    if parametrization == "sp":
        model = model_class(config).from_config(config)
    else:
        model = MuPModel.from_config(config, base_hidden_size=base_width, **mup)
    if config.model_type != "bert":
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's name matches no loss; this is the one it falls back to
    return model.to(device)


def param_groups(model: nn.Module, parametrization: str, lr: float, optimizer: str = "adamw",
                 weight_decay: float = 0.0, weight_decay_mode: str = "width_independent",
                 decay_norms_and_biases: bool = False, eps: float | None = None,
                 adapters: str = "mup") -> list[dict[str, Any]]:
    """The one builder of "μP groups or plain groups": `mup_param_groups` for a μP model; for SP one LR, with weight
    decay off on biases and norm weights unless `decay_norms_and_biases`; "mup_global_lr" one group at one LR,
    marked unchecked (it is broken on purpose). `adapters` (a μP model's PEFT adapters): "mup", "plain", or
    "loraplus" (plain, B's LR × `LORAPLUS_RATIO`; those groups are marked unchecked: no μP rule gives them).
    `optimizer` "muon": Muon's groups (`use_muon`) for the hidden matrices — under SP every 2-D weight but the
    embeddings and the output layer, as Muon is used — and AdamW's for the rest; "muon_torch": μP's groups with
    Muon's at the plain LR (marked unchecked).

    Usage: `groups = param_groups(model, "sp", lr=1e-4, weight_decay=0.01)`
    """
    from ..optim import mup_param_groups, no_decay_predicate

    no_decay = () if decay_norms_and_biases else None  # None: biases and norm weights (the Trainer's rule)
    muon = optimizer.startswith("muon")
    if parametrization == "mup":
        groups = mup_param_groups(model, lr=lr, optimizer="muon" if muon else optimizer, weight_decay=weight_decay,
                                  weight_decay_mode=weight_decay_mode, no_decay=no_decay, eps=eps,
                                  adapters="mup" if adapters == "loraplus" else adapters)
        for g in groups if adapters == "loraplus" else []:
            if g.get("mup_adapter"):  # B (input: rank → width) at the ratio, A and embedding A at η; ε unscaled
                ratio = LORAPLUS_RATIO if g["mup_kind"] == "input" else 1.0
                g.update(lr=lr * ratio, lr_mult=ratio, weight_decay=weight_decay if g["weight_decay"] else 0.0,
                         mup_adapter="loraplus", mup_unchecked=True)
                if "eps" in g:
                    g.update(eps=g["eps"] / g["eps_mult"], eps_mult=1.0)
        for g in groups if optimizer == "muon_torch" else []:
            if g["use_muon"]:
                g.update(lr=lr, lr_mult=1.0, weight_decay=weight_decay if g["weight_decay"] else 0.0, mup_unchecked=True)
        return groups
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = cast(Any, model).get_output_embeddings()  # Muon leaves the embedding tables and the output layer to AdamW
    outer = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | (
        {id(head.weight)} if head is not None else set())
    by_muon = (lambda p: p.ndim == 2 and id(p) not in outer) if muon else (lambda p: False)
    if parametrization == "mup_global_lr":
        return [{"params": ps, "lr": lr, "mup_unchecked": True, **({"use_muon": use} if muon else {})}
                for use in (True, False) if (ps := [p for _, p in params if by_muon(p) == use])]
    skip = no_decay_predicate(model, no_decay) if weight_decay and not decay_norms_and_biases else (lambda n: False)
    groups = []
    for use_muon in (True, False):
        for decays in (True, False):
            ps = [p for n, p in params if by_muon(p) == use_muon and skip(n) != decays]
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": weight_decay if decays else 0.0,
                               **({"use_muon": use_muon} if muon else {})})
    return groups


def warmup_steps(steps: int, warmup_frac: float) -> int:
    """`round(warmup_frac · steps)`, at least 1: the warmup `lr_lambda` runs."""
    return max(1, round(warmup_frac * steps))


def lr_lambda(steps: int, warmup_frac: float = 0.1, final_lr_frac: float = 0.1,
              schedule: str = "cosine") -> Callable[[int], float]:
    """Linear warmup over `round(warmup_frac · steps)` steps (at least 1), then cosine (or linear) decay to
    `final_lr_frac`: a factor on each group's own LR."""
    if schedule not in SCHEDULES:
        raise MuPError(f"unknown schedule {schedule!r}: use {' or '.join(SCHEDULES)}.")
    warmup = warmup_steps(steps, warmup_frac)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
        return final_lr_frac + (1 - final_lr_frac) * shape

    return f


def config_fields_of(config: Any, recipe: Recipe) -> dict[str, Any]:
    """The fields a transformers config sets explicitly (against its class's defaults) that `recipe`'s model would not
    have, shape aside: e.g. a target's intermediate_size, num_key_value_heads or rope settings, for `Recipe.config`."""
    skip = SHAPE_CONFIG_KEYS | {"architectures", "transformers_version", "model_type", "mup", "dtype", "torch_dtype"}
    mine, defaults = recipe.model_config().to_dict(), type(config)().to_dict()
    return {k: v for k, v in config.to_dict().items()
            if k not in skip and not k.startswith("_") and defaults.get(k) != v and mine.get(k) != v}


def shape_of(config: Any) -> dict[str, Any]:
    """The recipe's shape fields of a transformers config of a supported architecture (the target of a transfer)."""
    if config.model_type not in ARCHS:
        raise MuPError(f"a {config.model_type} config: recipes describe {', '.join(ARCHS)} models.")
    heads = config.num_attention_heads
    return {"arch": config.model_type, "width": config.hidden_size, "layers": config.num_hidden_layers,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
            "vocab_size": config.vocab_size,
            "seq_len": getattr(config, "n_positions", None) or config.max_position_embeddings}
