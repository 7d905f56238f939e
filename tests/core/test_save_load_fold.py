"""save/load and fold keep the logits; tying survives; SDPA is the kernel and receives the μP scale."""
import copy
import json
import math

import pytest
import torch
import transformers
from conftest import logits, make_config

import hf_mup
from hf_mup.lab import cli

OPTIONS = {"input_mult": 2.0, "output_mult": 3.0, "attn_mult": 1.5}
CLASSES = ["GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2Model",
           "BertForMaskedLM", "BertForSequenceClassification", "BertModel",
           "RobertaForMaskedLM", "RobertaForSequenceClassification", "LlamaForCausalLM",
           "LlamaForSequenceClassification", "LlamaModel", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def _trained_like(model_class, width=128, **options):
    """A μP model whose weights are all non-zero (as after training), so that folding has something to fold."""
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(make_config(model_class, width), base_hidden_size=64, model_class=model_class,
                                        **{**OPTIONS, **options})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("model_class", CLASSES)
def test_save_load_same_logits(model_class, tokens, tmp_path):
    model = _trained_like(model_class)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mup"] == hf_mup.MuPConfig(base_hidden_size=64, **OPTIONS).to_dict()
    assert (tmp_path / "model.safetensors").exists()
    loaded = hf_mup.MuPModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    # The file holds folded weights (× 1.5, 3/m, ...), unfolded on load: float32 rounding, not bits, may differ.
    torch.testing.assert_close(logits(loaded, tokens), logits(model, tokens), rtol=1e-5, atol=1e-5)
    assert hf_mup.get_plan(loaded).readouts == hf_mup.get_plan(model).readouts
    out = loaded.get_output_embeddings()
    if out is not None and model.config.tie_word_embeddings and "Classification" not in model_class:
        assert out.weight is loaded.get_input_embeddings().weight  # still tied


@pytest.mark.parametrize("model_class", CLASSES)
def test_fold_same_logits_stock_model(model_class, tokens, tmp_path):
    model = _trained_like(model_class)
    expected = logits(model, tokens)
    folded = hf_mup.fold(copy.deepcopy(model))
    assert not hasattr(folded.config, "mup")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in folded.modules())
    torch.testing.assert_close(logits(folded, tokens), expected, rtol=1e-4, atol=1e-5)
    # It is a plain transformers checkpoint now: the stock loader gives the same logits.
    folded.save_pretrained(tmp_path)
    assert "mup" not in json.loads((tmp_path / "config.json").read_text())
    stock = getattr(transformers, model_class).from_pretrained(tmp_path)
    torch.testing.assert_close(logits(stock, tokens), expected, rtol=1e-4, atol=1e-5)
    for module in stock.modules():  # standard attention scale
        if hasattr(module, "scaling") and hasattr(module, "head_dim"):
            assert module.scaling == module.head_dim**-0.5


def test_fold_keeps_tying(tokens):
    folded = hf_mup.fold(_trained_like("GPT2LMHeadModel"))
    assert folded.lm_head.weight is folded.transformer.wte.weight


def test_fold_cli(tokens, tmp_path):
    model = _trained_like("BertForMaskedLM")
    model.save_pretrained(tmp_path / "ckpt")
    assert cli.main(["fold", str(tmp_path / "ckpt"), str(tmp_path / "plain")]) == 0
    stock = transformers.BertForMaskedLM.from_pretrained(tmp_path / "plain")
    torch.testing.assert_close(logits(stock, tokens), logits(model, tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_class", ["GPT2LMHeadModel", "BertForMaskedLM", "LlamaForCausalLM"])
def test_sdpa_receives_the_mup_scale(model_class, tokens, monkeypatch):
    # width 128 with base 64 and base head size 8 vs the model's 16: scale = attn_mult · √8 / 16.
    model = hf_mup.MuPModel.from_config(make_config(model_class, 128), base_hidden_size=64, model_class=model_class,
                                        base_head_dim=8, attn_mult=1.5)
    assert model.config._attn_implementation == "sdpa"
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    logits(model, tokens)
    assert seen == [pytest.approx(1.5 * math.sqrt(8) / 16)] * model.config.num_hidden_layers


def test_readout_multiplier_in_forward(tokens):
    """The tied readout reads output_mult/m × its input: logits are that factor of the stock computation."""
    model = _trained_like("GPT2LMHeadModel", width=256, output_mult=3.0)
    hidden = model.transformer(tokens).last_hidden_state
    expected = hidden @ model.transformer.wte.weight.T * (3.0 / 4)
    torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)


def test_convert_existing_model_reinitialises(tokens):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", 256))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(1.0)  # "trained" weights are replaced
    hf_mup.convert(model, hf_mup.MuPConfig(base_hidden_size=64), reinit=True)  # asked for: never by default
    assert hf_mup.is_mup(model) and model.config.mup["base_hidden_size"] == 64
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert c_fc.std().item() == pytest.approx(0.02 / 2, rel=0.05)  # σ/√m, m = 4
    assert not model.transformer.h[0].attn.c_attn.weight[:, :256].any()  # zero query
    assert model.lm_head.weight is model.transformer.wte.weight


def test_pickled_model_keeps_mup(tokens, tmp_path):
    """torch.save of the whole module (what some tools do) keeps the plan, hooks and attention scale."""
    model = _trained_like("GPT2LMHeadModel")
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.testing.assert_close(logits(loaded, tokens), logits(model, tokens), rtol=0, atol=0)
    hf_mup.check_optimizer(loaded, torch.optim.AdamW(hf_mup.mup_param_groups(loaded, lr=1e-3)))
