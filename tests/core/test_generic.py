"""The generic description (hf_mup/architectures/generic.py): model families no short file describes, converted from
their own structure, or refused with the reason and the tensors' names."""
import math

import pytest
import torch
import transformers

import hf_mup
from hf_mup.lab.zoo_checks import tiny_config
from hf_mup.rules import Kind

BASE = 64


def _build(model_type, cls, width=128, meta=False, **options):
    config = tiny_config(model_type, width)
    torch.manual_seed(0)
    with torch.device("meta") if meta else torch.device("cpu"):
        return hf_mup.MuPModel.from_config(config, base_hidden_size=BASE, model_class=cls, **options)


def _step(model, lr=1e-2):
    ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=lr), lr=lr)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return ids


def _folded_logits_match(model, ids, tmp_path, auto=transformers.AutoModelForCausalLM):
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    stock = auto.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = stock(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gemma_divides_its_sqrt_width_embedding_scale_and_folds_into_one_plus_w_norms(tmp_path):
    model = _build("gemma", "GemmaForCausalLM", width=256)
    plan = hf_mup.get_plan(model)
    assert plan.input_mult == pytest.approx(math.sqrt(BASE / 256))  # Gemma's own × √hidden, divided by √(256/64)
    assert plan.tied_readouts == {"lm_head"} and plan.readout_norm == "model.norm"
    # The embeddings' output (Gemma's √hidden included) does not grow with width: the same at 64 and 256.
    sizes = []
    for width in (64, 256):
        m = _build("gemma", "GemmaForCausalLM", width=width)
        with torch.no_grad():
            sizes.append(m(input_ids=torch.arange(3, 35)[None], output_hidden_states=True).hidden_states[0].abs().mean())
    assert sizes[1] / sizes[0] == pytest.approx(1.0, rel=0.15)
    ids = _step(model)
    # the readout multiplier folds into (1 + w) of the final norm: the stock Gemma gives the μP logits
    _folded_logits_match(model, ids, tmp_path)


def test_mixture_of_experts_rules():
    model = _build("mixtral", "MixtralForCausalLM", base_intermediate_size=64)  # experts' width 256 → ratio 4
    plan = hf_mup.get_plan(model)
    gate_up = plan.rules["model.layers.0.mlp.experts.gate_up_proj"]  # (experts, 2·intermediate, hidden)
    down = plan.rules["model.layers.0.mlp.experts.down_proj"]  # (experts, hidden, intermediate)
    assert (gate_up.kind, gate_up.fanin_mult, gate_up.fanout_mult) == (Kind.HIDDEN, 2.0, 4.0)
    assert (down.kind, down.fanin_mult, down.fanout_mult) == (Kind.HIDDEN, 4.0, 2.0)
    assert gate_up.lr_mult("adamw") == 0.5 and down.lr_mult("adamw") == 0.25 and down.lr_mult("sgd") == 0.5
    # the router maps the width to the experts: a readout (1/m on its input, LR η), inside the block, not zeroed
    router = "model.layers.0.mlp.gate"
    assert router in plan.routers and plan.readouts[router] == 0.5
    assert plan.rules[f"{router}.weight"].lr_mult("adamw") == 1.0
    assert model.get_submodule(router).weight.abs().max() > 0
    assert model.lm_head.weight.abs().max() == 0  # the output readout still is
    out = model(input_ids=torch.arange(3, 19)[None], output_router_logits=True, labels=torch.arange(3, 19)[None])
    assert torch.isfinite(out.aux_loss) and torch.isfinite(out.loss)


def test_transposed_experts_read_their_fan_in_from_the_other_dimension():
    model = _build("gpt_oss", "GptOssForCausalLM", meta=True, base_intermediate_size=64)
    experts = model.model.layers[0].mlp.experts
    assert experts.is_transposed  # (experts, in, out)
    rule = hf_mup.get_plan(model).rules["model.layers.0.mlp.experts.down_proj"]  # (experts, intermediate, hidden)
    assert (rule.fanin_mult, rule.fanout_mult) == (4.0, 2.0)


def _blocks(heads, d, group, queries):
    """Rows of `queries` query blocks at the start of each group of `group` head-sized blocks."""
    return [g * group * d + i for g in range(heads // queries) for i in range(queries * d)]


@pytest.mark.parametrize("model_type, cls, child, overrides, layout", [
    ("gpt_neox", "GPTNeoXForCausalLM", "query_key_value", {}, "per_head"),  # [q_h | k_h | v_h] per head
    ("phi3", "Phi3ForCausalLM", "qkv_proj", {}, "first"),  # [q | k | v]
    ("falcon", "FalconForCausalLM", "query_key_value", {}, "first"),  # multi-query: [q | k | v]
    ("falcon", "FalconForCausalLM", "query_key_value", {"multi_query": False}, "per_head"),
    ("falcon", "FalconForCausalLM", "query_key_value", {"new_decoder_architecture": True, "num_kv_heads": 2},
     "groups"),  # per key/value group: [q q q q | k | v]
    ("gpt_bigcode", "GPTBigCodeForCausalLM", "c_attn", {}, "first"),  # multi-query
    ("gpt_bigcode", "GPTBigCodeForCausalLM", "c_attn", {"multi_query": False}, "per_head"),
])
def test_fused_qkv_zero_inits_exactly_the_query_rows(model_type, cls, child, overrides, layout):
    config = tiny_config(model_type, 128, **overrides)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=BASE, model_class=cls)
    heads, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    weight = getattr(model.get_submodule(hf_mup.get_plan(model).attention[0]), child).weight
    zero_rows = (weight.abs().amax(1) == 0).nonzero().flatten().tolist()
    expected = {"per_head": _blocks(heads, d, 3, 1), "first": list(range(heads * d)),
                "groups": _blocks(heads, d, heads // 2 + 2, heads // 2)}[layout]
    assert zero_rows == expected
    # the projection's other rows (keys, values) keep their init
    assert weight.shape[0] - len(expected) > 0 and (weight.abs().amax(1) > 0).sum() == weight.shape[0] - len(expected)


@pytest.mark.parametrize("model_type, cls", [("olmo2", "Olmo2ForCausalLM"), ("gemma3_text", "Gemma3ForCausalLM"),
                                             ("gpt_neox", "GPTNeoXForCausalLM"), ("phi3", "Phi3ForCausalLM")])
def test_attention_factor_folds_into_query_norms_and_fused_rows(model_type, cls, tmp_path):
    # attn_mult 2: a factor of 2 on the attention logits, folded into OLMo 2's full-width q_norm, Gemma 3's
    # per-head (1 + w) q_norm, or GPT-NeoX's interleaved query rows
    model = _build(model_type, cls, attn_mult=2.0)
    ids = _step(model)
    _folded_logits_match(model, ids, tmp_path)


def test_refuses_low_rank_projections_inside_blocks_with_their_names():
    with pytest.raises(hf_mup.MuPError, match=r"q_a_proj.weight maps the width to a fixed size"):
        _build("deepseek_v3", "DeepseekV3ForCausalLM", meta=True)


def test_refuses_a_width_dependent_embedding_scale_it_has_no_entry_for():
    with pytest.raises(hf_mup.MuPError, match=r"embeddings by a width-dependent factor \(biogpt.embed_tokens\)"):
        _build("biogpt", "BioGptForCausalLM", meta=True)


def test_a_hard_coded_attention_scale_is_refused_only_where_mup_changes_it():
    model = _build("roformer", "RoFormerForMaskedLM", meta=True)  # fixed head size: the stock scale is μP's
    assert not hf_mup.get_plan(model).attention_scale_factor != 1.0
    with pytest.raises(hf_mup.MuPError, match=r"hard-codes its attention scale"):
        _build("roformer", "RoFormerForMaskedLM", meta=True, attn_mult=2.0)


def test_encoder_decoders_are_refused_with_the_reason():
    with pytest.raises(hf_mup.MuPError, match=r"cannot describe model_type 'bart': it is an encoder-decoder"):
        hf_mup.MuPModel.from_config(transformers.BartConfig(d_model=64, encoder_attention_heads=4,
                                                            decoder_attention_heads=4), base_hidden_size=32)


def test_inspect_names_the_generic_description_and_the_routers():
    text = hf_mup.describe(_build("qwen2_moe", "Qwen2MoeForCausalLM", meta=True))
    assert "derived from the model" in text
    assert "MoE routers and gates" in text and "shared_expert_gate" in text or "mlp.gate" in text


def test_unverified_model_types_warn_and_failing_ones_are_refused(monkeypatch):
    from hf_mup.architectures import generic

    found = {"transformers": "5.x", "verified": [], "failing": {"llama_like": "coord_check: not ok"}}
    monkeypatch.setattr(generic, "verified", lambda: found)
    with pytest.warns(UserWarning, match=r"model_type 'phi3' is converted from its structure but was not verified"):
        _build("phi3", "Phi3ForCausalLM", meta=True)
    found["failing"]["phi3"] = "coord_check: not ok"
    with pytest.raises(hf_mup.MuPError, match=r"checks fail on model_type 'phi3'.*coord_check"):
        _build("phi3", "Phi3ForCausalLM", meta=True)


@pytest.mark.parametrize("model_type, expected", [
    ("gemma", "input_mult 0.5 on: model.embed_tokens (input_mult 1 × √(base / hidden)"),
    ("mixtral", "MoE routers and gates (readouts inside the blocks, stock init): input × 0.25 on 2 modules"),
    ("gpt_neox", "description: derived from the model"),
])
def test_hf_mup_inspect_shows_each_familys_rules(model_type, expected, tmp_path, capsys):
    from hf_mup.lab import cli

    path = tmp_path / "config.json"
    tiny_config(model_type, 256).to_json_file(path)
    assert cli.main(["inspect", str(path), "--base-hidden-size", "64"]) == 0
    out = capsys.readouterr().out
    assert expected in out and "hidden" in out


def test_one_plus_w_norms_are_found_from_their_forward(tmp_path):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P

    from hf_mup.architectures.generic import norm_offset

    assert [norm_offset(n(8)) for n in (GemmaRMSNorm, NemotronLayerNorm1P, LlamaRMSNorm, torch.nn.LayerNorm)] == \
        [1.0, 1.0, 0.0, 0.0]
    # Nemotron ties its readout to a (1 + w) LayerNorm: the readout's multiplier folds into 1 + w (and the bias)
    config = tiny_config("nemotron", 256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=BASE, model_class="NemotronForCausalLM")
    assert hf_mup.get_plan(model).readout_norm == "model.norm"
    _folded_logits_match(model, _step(model), tmp_path)
