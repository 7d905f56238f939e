"""The Llama family (Llama, Mistral, Qwen2, Qwen3): grouped- and multi-query attention across widths, Qwen3's head
norms, tied and untied readouts through fold and generate(), and the ablation knobs of Lingle (2024) in MuPConfig."""
import copy
import json

import pytest
import torch
import transformers
from conftest import logits, make_config

import hf_mup
from hf_mup.lab import cli
from hf_mup.plan import base_configs_for


def _trained_like(config, model_class="LlamaForCausalLM", **options):
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class=model_class,
                                        **{"output_mult": 3.0, "attn_mult": 1.5, "input_mult": 2.0, **options})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _rules(model):
    return hf_mup.get_plan(model).rules


# --------------------------------------------------------------------------------------- key/value heads


def test_grouped_query_heads_scale_with_width_keeping_the_ratio():
    config = make_config("LlamaForCausalLM", 256)  # 16 query heads, 8 key/value heads, head size 16
    base, delta = base_configs_for(config, hf_mup.MuPConfig(base_hidden_size=64))
    assert (base.num_attention_heads, base.num_key_value_heads, base.head_dim) == (4, 2, 16)
    assert (delta.num_attention_heads, delta.num_key_value_heads, delta.head_dim) == (8, 4, 16)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64)
    k = _rules(model)["model.layers.0.self_attn.k_proj.weight"]
    assert (k.kind.value, k.fanin_mult, k.fanout_mult) == ("hidden", 4.0, 4.0)


def test_multi_query_attention_keeps_one_key_value_head_and_the_hidden_rule():
    """One key/value head at every width: k/v have a fixed fan-out and a width fan-in. They are not readouts: σ/√m
    init and η/m Adam LR, as Lingle's MQA (measured on the init and on the optimizer groups)."""
    config = make_config("LlamaForCausalLM", 256, num_key_value_heads=1)
    base, delta = base_configs_for(config, hf_mup.MuPConfig(base_hidden_size=64))
    assert base.num_key_value_heads == delta.num_key_value_heads == 1
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64)
    plan = hf_mup.get_plan(model)
    for proj in ("k_proj", "v_proj"):
        rule = plan.rules[f"model.layers.0.self_attn.{proj}.weight"]
        assert (rule.kind.value, rule.fanin_mult, rule.fanout_mult) == ("hidden", 4.0, 1.0)
        std = getattr(model.model.layers[0].self_attn, proj).weight.std().item()
        assert std == pytest.approx(0.02 / 2, rel=0.05)  # σ/√m, m = 4
    assert set(plan.readouts) == {"lm_head"}  # k/v are not readouts: no multiplier on their input
    lrs = {n: g["lr"] for g in hf_mup.mup_param_groups(model, lr=1.0) for n in g["param_names"]}
    assert lrs["model.layers.0.self_attn.k_proj.weight"] == 0.25
    assert lrs["model.layers.0.self_attn.q_proj.weight"] == 0.25 and lrs["lm_head.weight"] == 1.0


def test_a_key_value_ratio_the_base_cannot_keep_is_refused():
    config = make_config("LlamaForCausalLM", 256, num_key_value_heads=2)  # 16:2 = 8:1; the base has 4 heads
    with pytest.raises(hf_mup.MuPError, match="cannot keep the ratio 8:1.*base_num_key_value_heads"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=64)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, base_num_key_value_heads=1)
    assert base_configs_for(config, hf_mup.get_plan(model).mup)[0].num_key_value_heads == 1
    with pytest.raises(hf_mup.MuPError, match="does not divide"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=64, base_num_key_value_heads=3)


def test_qwen3_head_norms_are_not_width_scaled_and_heads_need_not_fill_the_width():
    """Qwen3's q_norm/k_norm are head-size vectors (scalar rule); heads × head size may differ from the width."""
    config = transformers.Qwen3Config(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                                      intermediate_size=512, num_hidden_layers=2, vocab_size=128)  # 8 × 32 ≠ 128
    assert config.num_attention_heads * config.head_dim != config.hidden_size
    model = _trained_like(config, "Qwen3ForCausalLM")
    rules = _rules(model)
    assert rules["model.layers.0.self_attn.q_norm.weight"].kind.value == "scalar"
    assert rules["model.layers.0.self_attn.q_proj.weight"].fanout_mult == 2.0
    tokens = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    folded = hf_mup.fold(copy.deepcopy(model))  # the attention scale goes into q_norm, which q_proj feeds
    torch.testing.assert_close(logits(folded, tokens), logits(model, tokens), rtol=1e-4, atol=1e-5)
    with pytest.raises(hf_mup.MuPError, match="fixed head size only"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=64, base_head_dim=8)
    with pytest.raises(hf_mup.MuPError, match="not a whole number"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=40)  # 8 × 40 / 128 heads


# ------------------------------------------------------------------------------------ readouts and generate


@pytest.mark.parametrize("model_class, tied", [("LlamaForCausalLM", False), ("LlamaForCausalLM", True),
                                               ("Qwen3ForCausalLM", False), ("MistralForCausalLM", True)])
def test_folded_checkpoint_generates_the_mup_models_tokens(model_class, tied, tmp_path):
    model = _trained_like(make_config(model_class, 128, tie_word_embeddings=tied), model_class)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    prompt = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    expected = model.generate(prompt, **kw)
    hf_mup.fold(copy.deepcopy(model)).save_pretrained(tmp_path / "folded")
    stock = getattr(transformers, model_class).from_pretrained(tmp_path / "folded")
    torch.testing.assert_close(logits(stock, prompt), logits(model, prompt), rtol=1e-4, atol=1e-5)
    assert torch.equal(stock.generate(prompt, **kw), expected)
    if tied:  # the readout multiplier went into the final RMSNorm, the weight stays shared
        assert stock.lm_head.weight is stock.model.embed_tokens.weight
        assert not torch.allclose(stock.model.norm.weight, model.model.norm.weight)


# ------------------------------------------------------------------------------------------ the knobs


def test_fixed_norm_gains_get_no_gradient_no_optimizer_slot_and_survive_save_load(tmp_path):
    config = make_config("Qwen3ForCausalLM", 128)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, trainable_norm_gains=False)
    gains = [n for n, p in model.named_parameters() if "norm" in n]
    assert len(gains) == 2 * 4 + 1  # per layer: input, post-attention, q and k norms; and the final norm
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in gains)
    groups = hf_mup.mup_param_groups(model, lr=1e-2)
    assert not set(gains) & {n for g in groups for n in g["param_names"]}
    opt = torch.optim.AdamW(groups)
    hf_mup.check_optimizer(model, opt)
    tokens = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(tokens, labels=tokens).loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], torch.ones_like(params[n])) for n in gains)  # fixed at 1
    assert all(params[n].grad is None and params[n] not in opt.state for n in gains)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mup"]["trainable_norm_gains"] is False
    loaded = hf_mup.MuPModel.from_pretrained(tmp_path)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if n in gains)
    torch.testing.assert_close(logits(loaded, tokens), logits(model, tokens), rtol=1e-5, atol=1e-5)
    # Folded, it is a stock checkpoint (the attention scale sits in q_norm's gain there).
    stock = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(stock, tokens), logits(model, tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale, expected", [("1/d", 1.5 * 8**0.5 / 16), ("1/sqrt(d)", 1.5 / 16**0.5)])
def test_attention_scale_exponent(scale, expected, monkeypatch):
    """Head size 16 at base head size 8: μP's attn_mult·√d_base/d against the standard attn_mult/√d."""
    model = hf_mup.MuPModel.from_config(make_config("LlamaForCausalLM", 128), base_hidden_size=64, base_head_dim=8,
                                        base_num_key_value_heads=4, attn_mult=1.5, attention_scale=scale)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: seen.append(kw.get("scale")) or sdpa(*a, **kw))
    logits(model, torch.randint(1, 128, (1, 8)))
    assert seen == [pytest.approx(expected)] * 2


@pytest.mark.parametrize("width", [128, 512])
def test_standard_readout_init_falls_as_one_over_sqrt_width(width):
    """μP's readout init (the stock σ under the output_mult/m multiplier) falls as 1/m; Lingle's "SP unembedding
    init" as 1/√m: measured on the effective weight (raw std × multiplier), m = width / 64."""
    m = width / 64
    effective = {}
    for init in ("mup", "standard"):
        torch.manual_seed(0)
        model = hf_mup.MuPModel.from_config(make_config("LlamaForCausalLM", width), base_hidden_size=64,
                                            zero_init_readout=False, readout_init=init)
        effective[init] = model.lm_head.weight.std().item() * hf_mup.get_plan(model).readouts["lm_head"]
    assert effective["mup"] == pytest.approx(0.02 / m, rel=0.05)
    assert effective["standard"] == pytest.approx(0.02 / m**0.5, rel=0.05)
    with pytest.raises(hf_mup.MuPError, match="zero_init_readout=False"):
        hf_mup.MuPConfig(base_hidden_size=64, readout_init="standard")
    with pytest.raises(hf_mup.MuPError, match="attention_scale must be one of"):
        hf_mup.MuPConfig(base_hidden_size=64, attention_scale="1/d^2")


def test_projection_biases_and_squared_relu():
    """Llama with attention_bias / mlp_bias and a squared-ReLU MLP (hidden_act="relu2"): biases are vectors (LR η),
    the query bias starts at zero with the query, and the model trains."""
    config = make_config("LlamaForCausalLM", 128, attention_bias=True, mlp_bias=True, hidden_act="relu2")
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64)
    rules = _rules(model)
    for name in ("self_attn.q_proj.bias", "self_attn.o_proj.bias", "mlp.down_proj.bias", "mlp.gate_proj.bias"):
        assert rules[f"model.layers.0.{name}"].kind.value == "input"
        assert rules[f"model.layers.0.{name}"].lr_mult("adamw") == 1.0
    assert not model.model.layers[0].self_attn.q_proj.bias.any()
    tokens = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-2))
    losses = []
    for _ in range(5):
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_inspect_shows_the_knobs(tmp_path, capsys):
    config = make_config("LlamaForCausalLM", 128, num_key_value_heads=1)
    hf_mup.MuPModel.from_config(config, base_hidden_size=64, trainable_norm_gains=False,
                                attention_scale="1/sqrt(d)").save_pretrained(tmp_path)
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("trainable_norm_gains: False", "attention_scale: 1/sqrt(d)", "num_key_value_heads: 1",
                 "model.layers.0.self_attn.k_proj.weight"):
        assert text in out, text
