"""The checks of `hf-mup zoo` (`hf_mup.lab.zoo`) on one model type, built tiny: the per-tensor LR oracle, the init,
the base-width invariant, folding, the attention factor and the coordinate check (each described in `zoo`).

Usage: `check_coords("mixtral", transformers.MixtralForCausalLM)`, `check_fold(cls, tiny_config("gemma", 128), True)`
"""
from __future__ import annotations

import inspect
import math
import tempfile
from typing import Any

import torch

from ..architectures.generic import FAMILY_WIDTH_FIELDS, WIDTH_FIELDS
from .coord_check import DEFAULT_BAND, loglog_slope

WIDTHS = (64, 128, 256, 512)
BASE = 64
HEAD_DIM = 16
# The coordinate check measures after these numbers of Adam steps: its band (DEFAULT_BAND) is calibrated for t <= 2
# (hf_mup/lab/coord_check.py); by t = 3 a correct μP model's slopes can leave it.
COORD_STEPS = (1, 2)
COORD_LR = 1e-2
SEQ, BATCH, VOCAB = 32, 4, 256
MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
# Per model type, what else a tiny config of it needs (sizes whose defaults do not fit 2 layers of heads of 16).
OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "gptj": {"rotary_dim": HEAD_DIM // 2},
    "codegen": {"rotary_dim": HEAD_DIM // 2},
    "dots1": {"n_shared_experts": 1},
    **{t: {"qk_rope_head_dim": HEAD_DIM, "qk_nope_head_dim": HEAD_DIM, "v_head_dim": HEAD_DIM, "kv_lora_rank": 32,
           "q_lora_rank": 32} for t in ("deepseek_v2", "deepseek_v3", "axk1", "youtu")},  # latent attention's ranks
}


def tiny_config(model_type: str, width: int, layers: int = 2, **overrides: Any) -> Any:
    """A small config of `model_type` (width `width`, heads of size 16, 2 layers, 4 experts where it has experts),
    passing each size under the name the config's constructor takes (`attribute_map`). A factorised embedding's size
    (ALBERT, ELECTRA) is not a width: it stays 32, as hf_mup's base and delta models keep it."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    aliases = dict(getattr(cls, "attribute_map", {}) or {})
    accepted = set(inspect.signature(cls.__init__).parameters)
    default = cls()
    heads = width // HEAD_DIM
    want: dict[str, Any] = {
        "hidden_size": width, "num_attention_heads": heads, "num_hidden_layers": layers, "vocab_size": VOCAB,
        "max_position_embeddings": 128, "num_key_value_heads": heads, "head_dim": HEAD_DIM, "num_experts_per_tok": 2,
        "embedding_size": 32, "type_vocab_size": 2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": getattr(default, "tie_word_embeddings", False),
        **{f: 2 * width for f in FAMILY_WIDTH_FIELDS.get(model_type, WIDTH_FIELDS)}, **{f: 4 for f in MOE_FIELDS},
        **OVERRIDES.get(model_type, {}),
        **overrides,
    }
    kwargs = {}
    for key, value in want.items():
        name = aliases.get(key, key)
        derived = isinstance(getattr(cls, name, None), property)  # (Falcon's head_dim: computed, not set)
        if (name in accepted or name in vars(default)) and not derived:
            kwargs[name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------- checks


def is_masked_lm(class_name: str) -> bool:
    """Whether transformers maps a model class as a masked LM (`FlaubertWithLMHeadModel` is one, without the name)."""
    from transformers.models.auto import modeling_auto as auto

    names = auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()
    return any(class_name == n or isinstance(n, tuple) and class_name in n for n in names)


def token_batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float() if _has_cache(model) else \
            model(input_ids=ids).logits.float()


def _has_cache(model: Any) -> bool:
    return "use_cache" in inspect.signature(model.forward).parameters


def _steps(model: Any, optimizer: torch.optim.Optimizer, ids: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def stock_model(cls: type, config: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return cls(config).eval()


def mup_model(cls: type, config: Any, seed: int, **options: Any) -> Any:
    import hf_mup

    torch.manual_seed(seed)
    return hf_mup.MuPModel.from_config(config, base_hidden_size=BASE, model_class=cls, **options).eval()


def check_oracle(cls: type, config: Any) -> dict[str, Any]:
    """Per-tensor LRs against microsoft/mup's MuAdamW and MuSGD (base and delta models from hf_mup's configs)."""
    import mup as msmup  # type: ignore[import-untyped]  # (microsoft/mup ships no types)

    import hf_mup
    from hf_mup.plan import base_configs_for, meta_model

    model = mup_model(cls, config, 0)
    plan = hf_mup.get_plan(model)
    assert plan is not None
    base, delta = (meta_model(cls, c) for c in base_configs_for(config, plan.mup, plan.arch))  # type: ignore[var-annotated]
    reference: Any = meta_model(cls, config)
    msmup.set_base_shapes(reference, base, delta=delta, rescale_params=False, do_assert=False)
    names = {id(p): n for n, p in reference.named_parameters()}
    # microsoft/mup reads a tensor's dims 0 and 1 as fan-out and fan-in (a conv weight's layout), which stacked
    # experts (experts, out, in) are not: its SGD LR for them is not a reference (its Adam LR, 1/m, is).
    stacked = {n for n, p in reference.named_parameters() if p.dim() == 3}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}  # (updated by the model, e.g. a bias
    # balancing the experts' load): in no optimizer group
    mismatched, distinct = [], set()
    for family, ref_cls in (("adamw", msmup.MuAdamW), ("sgd", msmup.MuSGD)):
        skip = frozen | (stacked if family == "sgd" else set())
        expected = {names[id(p)]: g["lr"] for g in ref_cls(reference.parameters(), lr=0.01).param_groups
                    for p in g["params"] if names[id(p)] not in skip}
        ours = {n: g["lr"] for g in hf_mup.mup_param_groups(model, lr=0.01, optimizer=family) for n in g["param_names"]}
        mismatched += [f"{family}:{n}" for n in expected if not math.isclose(ours.get(n, -1), expected[n], rel_tol=1e-9)]
        distinct |= {round(v, 9) for v in ours.values()}
    return {"ok": not mismatched and len(distinct) >= 2, "mismatched": mismatched[:5], "tensors": len(names)}


def check_init(cls: type, config: Any) -> dict[str, Any]:
    """Init std of each hidden weight against the stock model's × 1/√m; zero readouts and queries."""
    import hf_mup
    from hf_mup.rules import Kind

    stock, model = stock_model(cls, config, 0), mup_model(cls, config, 0)
    plan = hf_mup.get_plan(model)
    assert plan is not None
    stock_params = dict(stock.named_parameters())
    bad, checked = [], 0
    for name, p in model.named_parameters():
        rule = plan.rules.get(name)
        if rule is None or rule.kind is not Kind.HIDDEN or p.numel() < 2048 or p.dim() < 2:
            continue
        kept = p.detach() != 0  # (not the zero-initialised query rows of a fused q/k/v)
        if not kept.any():
            continue  # a zero init (the query)
        s, m = stock_params[name].detach()[kept].float().std().item(), p.detach()[kept].float().std().item()
        if s == 0:
            continue  # a constant stock init
        checked += 1
        if not math.isclose(m / s, rule.init_scale, rel_tol=0.05):
            bad.append(f"{name}: {m / s:.3f} vs {rule.init_scale:.3f}")
    readouts = [n for n in plan.readouts if n not in plan.tied_readouts and n not in plan.routers]
    nonzero = [n for n in readouts if model.get_submodule(n).weight.abs().max().item() != 0]
    return {"ok": not bad and not nonzero and checked > 0, "checked": checked, "bad": bad[:5] + nonzero}


def check_base_width(cls: type, config: Any) -> dict[str, Any]:
    """At width = base: μP = stock, at init and after 2 Adam steps (μP groups against plain AdamW)."""
    import hf_mup

    ids = token_batch()
    stock = stock_model(cls, config, 0)
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=config.hidden_size, model_class=cls,
                                        zero_init_query=False, zero_init_readout=False).eval()
    init = (logits_of(model, ids) - logits_of(stock, ids)).abs().max().item()
    _steps(stock, torch.optim.AdamW(stock.parameters(), lr=1e-3, weight_decay=0.0), ids, 2)
    _steps(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3), lr=1e-3, weight_decay=0.0), ids, 2)
    trained = (logits_of(model, ids) - logits_of(stock, ids)).abs().max().item()
    return {"ok": init < 1e-5 and trained < 1e-4, "init_diff": init, "trained_diff": trained}


def check_fold(cls: type, config: Any, causal: bool) -> dict[str, Any]:
    """After 2 steps: save_pretrained → stock AutoModel and MuPModel.from_pretrained logits; generate() tokens."""
    import transformers

    import hf_mup

    ids = token_batch()
    try:
        model = mup_model(cls, config, 0)
    except hf_mup.MuPError as e:  # (the other tying of a model that converts as it comes: refused is right too)
        return {"ok": True, "refused": str(e)[:200]}
    _steps(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-2), lr=1e-2), ids, 2)
    model.eval()
    want = logits_of(model, ids)
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        stock = auto.from_pretrained(tmp).eval()
        again = hf_mup.MuPModel.from_pretrained(tmp).eval()
    scale = want.abs().max().item() or 1.0
    stock_diff = (logits_of(stock, ids) - want).abs().max().item() / scale
    mup_diff = (logits_of(again, ids) - want).abs().max().item() / scale
    same_tokens = None
    if causal:
        prompt = ids[:1, :8]
        kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        with torch.no_grad():
            same_tokens = bool(torch.equal(model.generate(prompt, **kw), stock.generate(prompt, **kw)))
    ok = stock_diff < 1e-4 and mup_diff < 1e-4 and same_tokens is not False
    return {"ok": ok, "stock_diff": stock_diff, "mup_diff": mup_diff, "generate_equal": same_tokens}


def check_attention(cls: type, config: Any) -> dict[str, Any]:
    """μP's attention factor reaches the model: with `attn_mult` 2 (after 2 steps, so the query is not zero) changing
    each attention module's `scaling` changes the logits (it is read), and the factor folds into the checkpoint
    (the stock model gives the μP logits). A model whose scale is hard-coded must refuse `attn_mult` 2."""
    import transformers

    import hf_mup

    try:
        model = mup_model(cls, config, 0, attn_mult=2.0)
    except hf_mup.MuPError as e:  # right only where the scale is hard-coded or the factor cannot be folded
        return {"ok": "attn_mult=1" in str(e), "attn_mult_2": f"refused: {str(e)[:200]}"}
    ids = token_batch()
    _steps(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-2), lr=1e-2), ids, 2)
    model.eval()
    want = logits_of(model, ids)
    plan = hf_mup.get_plan(model)
    assert plan is not None
    modules = [model.get_submodule(n) for n in plan.attention if hasattr(model.get_submodule(n), "scaling")]
    for m in modules:
        m.scaling *= 1.5
    read = bool(modules) and not torch.allclose(logits_of(model, ids), want)
    for m in modules:
        m.scaling /= 1.5
    auto = transformers.AutoModelForMaskedLM if is_masked_lm(cls.__name__) else transformers.AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        stock = auto.from_pretrained(tmp).eval()
    diff = (logits_of(stock, ids) - want).abs().max().item() / (want.abs().max().item() or 1.0)
    return {"ok": read and diff < 1e-4, "scaling_read": read, "modules": len(modules), "stock_diff": diff}


def _token_share(model: Any, ids: torch.Tensor) -> float:
    """Mean |what the token embeddings add to the first hidden state|: a multiplier the model puts on its embeddings
    (CTRL's and Gemma's √hidden) shows in its slope against width, where positions added to it can hide it there."""
    table = model.get_input_embeddings().weight

    def first_hidden() -> torch.Tensor:
        return model(input_ids=ids, output_hidden_states=True).hidden_states[0].float()

    with torch.no_grad():
        full, saved = first_hidden(), table.detach().clone()
        table.zero_()
        without = first_hidden()
        table.copy_(saved)
    return (full - without).abs().mean().item()


def _activations(model: Any, ids: torch.Tensor) -> dict[str, float]:
    """Mean |x| of each layer's output (`hidden.i`), the logits and, in an MoE, each router's logits (`router.i`)."""
    moe = {"output_router_logits": True} if hasattr(model.config, "output_router_logits") else {}
    with torch.no_grad():
        try:
            out = model(input_ids=ids, output_hidden_states=True, **moe)
        except (IndexError, TypeError):  # (a model whose router logits are not returned this way: without them)
            out = model(input_ids=ids, output_hidden_states=True)
    stats = {f"hidden.{i}": h.float().abs().mean().item() for i, h in enumerate(out.hidden_states)}
    stats["logits"] = out.logits.float().abs().mean().item()
    for i, r in enumerate(getattr(out, "router_logits", None) or ()):
        if isinstance(r, torch.Tensor):
            stats[f"router.{i}"] = r.float().abs().mean().item()
    return stats


def check_coords(model_type: str, cls: type, widths: tuple[int, ...] = WIDTHS, seeds: tuple[int, ...] = (0, 1),
                 **overrides: Any) -> dict[str, Any]:
    """Coordinate check: each layer's output and the logits after `COORD_STEPS` Adam steps, against width (μP), and
    the stock model's logits with one LR (SP) beside it."""
    import hf_mup

    # (parametrization, step, activation) -> mean |activation| per width, averaged over seeds
    means: dict[tuple[str, int, str], list[float]] = {}
    for width in widths:
        config = tiny_config(model_type, width, **overrides)
        sums: dict[tuple[str, int, str], float] = {}
        for seed in seeds:
            ids = token_batch(seed)
            mup = mup_model(cls, config, seed)
            sp_model = stock_model(cls, config, seed)
            optimizers = {
                "mup": (mup, torch.optim.AdamW(hf_mup.mup_param_groups(mup, lr=COORD_LR), lr=COORD_LR,
                                               weight_decay=0.0)),
                "sp": (sp_model, torch.optim.AdamW(sp_model.parameters(), lr=COORD_LR, weight_decay=0.0))}
            share = ("mup", 0, "embeddings")  # the token embeddings' share of the first hidden state, at init
            sums[share] = sums.get(share, 0.0) + _token_share(mup, ids) / len(seeds)
            for kind, (model, optimizer) in optimizers.items():
                done = 0
                for step in COORD_STEPS:
                    _steps(model, optimizer, ids, step - done)
                    done = step
                    for key, value in _activations(model, ids).items():
                        sums[(kind, step, key)] = sums.get((kind, step, key), 0.0) + value / len(seeds)
        for sum_key, value in sums.items():
            means.setdefault(sum_key, []).append(value)
    slopes = {f"{key}@{step}": round(loglog_slope(widths, [max(x, 1e-30) for x in v]), 3)
              for (kind, step, key), v in means.items() if kind == "mup"}
    worst = max(slopes, key=lambda k: abs(slopes[k]))
    low, high = DEFAULT_BAND
    sp = round(loglog_slope(widths, means[("sp", COORD_STEPS[-1], "logits")]), 3)
    return {"ok": all(low <= v <= high for v in slopes.values()), "slopes": slopes, "worst": worst,
            "sp_logits_slope": sp, "widths": list(widths)}
