"""μP state that cannot go silently wrong: checkpoints opened by stock loaders, module surgery, wrappers, pretrained
starts, settings."""
import copy
import json
import logging
import math
import warnings

import pytest
import torch
import transformers
from conftest import VOCAB, free_port, logits, make_config

import hf_mup
from hf_mup.config import FORMAT_VERSION

# Multipliers that are not 1 (and not powers of two), so that a lost one shows in the outputs.
OPTIONS = {"output_mult": 3.0, "attn_mult": 1.5, "input_mult": 2.0}


def _trained_like(model_class, width=128, config_kw=None, **options):
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(make_config(model_class, width, **(config_kw or {})), base_hidden_size=64,
                                        model_class=model_class, **{**OPTIONS, **options})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- stock loaders and files


@pytest.mark.parametrize("model_class, auto", [("GPT2LMHeadModel", transformers.AutoModelForCausalLM),
                                               ("BertForMaskedLM", transformers.AutoModelForMaskedLM),
                                               ("GPT2ForSequenceClassification",
                                                transformers.AutoModelForSequenceClassification)])
def test_stock_auto_loader_gives_the_mup_outputs(model_class, auto, tokens, tmp_path):
    model = _trained_like(model_class, config_kw={"tie_word_embeddings": False}) if model_class == "GPT2LMHeadModel" else \
        _trained_like(model_class)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mup"]["version"] == FORMAT_VERSION
    stock = auto.from_pretrained(tmp_path)
    assert not hf_mup.is_mup(hf_mup.fold(copy.deepcopy(model)))
    close(logits(stock, tokens), logits(model, tokens))
    # A stock-loaded μP checkpoint computes the right outputs but must not be *trained* as if it were μP.
    with pytest.raises(hf_mup.MuPError, match=r"loaded with transformers' own from_pretrained.*hf_mup.convert"):
        hf_mup.mup_param_groups(stock, lr=1e-3)
    # hf_mup.convert on it gives the μP model back (same outputs, same plan).
    again = hf_mup.convert(stock)
    close(logits(again, tokens), logits(model, tokens))
    assert hf_mup.get_plan(again).readouts == hf_mup.get_plan(model).readouts


def test_pipeline_generates_what_the_mup_model_generates(tmp_path):
    from hf_mup.lab import data

    tokenizer = data.train_tokenizer([data.wikitext_dir() / "valid.txt"], vocab_size=VOCAB + 128, max_chars=200_000)
    model = _trained_like("GPT2LMHeadModel", config_kw={"vocab_size": len(tokenizer)})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompt = " The game"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    model.eval()
    expected = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    pipe = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
    text = pipe(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0]["generated_text"]
    assert text == tokenizer.decode(expected[0])


def test_state_dict_is_the_stock_models(tokens):
    """state_dict() is folded, load_state_dict() unfolds: μP ↔ μP and μP → stock both keep the outputs."""
    model = _trained_like("GPT2LMHeadModel", config_kw={"tie_word_embeddings": False})
    state = model.state_dict()
    stock = transformers.GPT2LMHeadModel(model.config)
    stock.load_state_dict(state)
    close(logits(stock, tokens), logits(model, tokens))
    twin = hf_mup.MuPModel.from_config(model.config)  # config.mup: same settings, fresh weights
    twin.load_state_dict(state)
    close(logits(twin, tokens), logits(model, tokens))
    for name, p in model.named_parameters():
        torch.testing.assert_close(twin.get_parameter(name), p, rtol=1e-6, atol=0)
    # The model's own parameters are untouched by state_dict().
    assert state["lm_head.weight"].data_ptr() != model.lm_head.weight.data_ptr()


def test_format_1_checkpoint_still_loads(tokens, tmp_path):
    """hf_mup 0.1 wrote μP's own weights and no version: they load unchanged."""
    model = _trained_like("GPT2LMHeadModel")
    native = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.save_pretrained(tmp_path, state_dict=native)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mup"]["version"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = hf_mup.MuPModel.from_pretrained(tmp_path)
    close(logits(loaded, tokens), logits(model, tokens))
    config["mup"]["version"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_mup.MuPError, match="newer than this hf_mup.*upgrade"):
        hf_mup.MuPModel.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ module surgery


def test_resize_token_embeddings_untied_keeps_the_readout_multiplier(tokens):
    model = _trained_like("GPT2LMHeadModel", config_kw={"tie_word_embeddings": False})
    before = logits(model, tokens)
    old_opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3))
    model.resize_token_embeddings(VOCAB + 8)
    with pytest.warns(UserWarning, match=r"readout 'lm_head' was replaced.*re-applied"):
        after = logits(model, tokens)
    close(after[..., :VOCAB], before)
    # The optimizer built before the resize holds the old lm_head: check_optimizer names the new one.
    with pytest.raises(hf_mup.MuPError, match=r"in no optimizer group.*lm_head.weight"):
        hf_mup.check_optimizer(model, old_opt)
    hf_mup.check_optimizer(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3)))


def test_resize_token_embeddings_tied_keeps_input_mult(tokens):
    model = _trained_like("GPT2LMHeadModel")
    before = logits(model, tokens)
    model.resize_token_embeddings(VOCAB + 8)  # replaces the weight (in place here), or the module: either way
    close(logits(model, tokens)[..., :VOCAB], before)
    assert model.lm_head.weight is model.transformer.wte.weight
    model.set_input_embeddings(torch.nn.Embedding(VOCAB + 8, 128))  # a new module: its input_mult is re-applied
    with pytest.warns(UserWarning, match=r"embedding 'transformer.wte' was replaced"):
        model(tokens)
    assert hf_mup.apply._has_hook(model.transformer.wte._forward_hooks, hf_mup.apply.ScaleOutput, 2.0)


def test_replaced_head_gets_the_multiplier(tokens):
    model = _trained_like("GPT2ForSequenceClassification")
    model.score = torch.nn.Linear(128, 5, bias=False)
    hidden = model.transformer(tokens).last_hidden_state
    with pytest.warns(UserWarning, match=r"readout 'score' was replaced"):
        out = model(tokens).logits
    plan = hf_mup.get_plan(model)
    assert plan.readouts["score"] == pytest.approx(3.0 / 2)
    expected = (hidden[:, -1] * 1.5) @ model.score.weight.T  # the last token's (no padding in `tokens`)
    close(out, expected)


def test_get_plan_restores_a_changed_attention_scale():
    model = _trained_like("BertForMaskedLM", input_mult=1.0)
    attn = model.bert.encoder.layer[0].attention.self
    good = attn.scaling
    attn.scaling = attn.mup_stock_scaling  # e.g. code that resets the module
    with pytest.warns(UserWarning, match="does not have the μP scale"):
        hf_mup.get_plan(model)
    assert attn.scaling == good


@pytest.mark.slow
def test_torch_compile_and_gradient_checkpointing_keep_mup(tokens):
    model = _trained_like("GPT2LMHeadModel")
    expected = logits(model, tokens)
    model.activation_checkpointing_enable()
    model.train()
    model(tokens, labels=tokens).loss.backward()  # checkpointed backward runs
    close(logits(model, tokens), expected)
    compiled = torch.compile(model, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spurious surgery warning through the compiled module
        close(logits(compiled, tokens), expected)
    assert hf_mup.get_plan(compiled) is hf_mup.get_plan(model)


def test_peft_lora_on_a_mup_model(tokens):
    peft = pytest.importorskip("peft")
    model = _trained_like("GPT2LMHeadModel", input_mult=1.0)
    expected = logits(model, tokens)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    assert any(n.startswith("base_model.model.") for n, _ in lora.named_parameters())
    close(logits(lora, tokens), expected)  # B = 0 at start: the μP model's outputs, multipliers in place
    plan = hf_mup.get_plan(lora)
    assert plan.readouts == {"lm_head": pytest.approx(3.0 / 2)}
    groups = hf_mup.mup_param_groups(lora, lr=1e-3)
    # only the adapters train (the base is frozen), by their μP rules: A (width → rank) down, B input
    assert {(g["mup_kind"], g["mup_adapter"]) for g in groups} == {("down", "mup"), ("input", "mup")}
    hf_mup.check_optimizer(lora, torch.optim.AdamW(groups))
    # A LoRA adapter on the readout would bypass its multiplier: refused, named.
    other = _trained_like("GPT2LMHeadModel", input_mult=1.0, config_kw={"tie_word_embeddings": False})
    wrapped = peft.get_peft_model(other, peft.LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(hf_mup.MuPError, match=r"LoRA adapter wraps the readout 'lm_head'"):
        wrapped(tokens)


# ----------------------------------------------------------------------------------------------- pretrained starts


@pytest.mark.parametrize("model_class", ["GPT2LMHeadModel", "BertForMaskedLM", "GPT2ForSequenceClassification"])
def test_convert_keeps_a_trained_stock_model_and_fold_inverts_it(model_class, tokens):
    torch.manual_seed(0)
    stock = getattr(transformers, model_class)(make_config(model_class, 128))
    expected = logits(stock, tokens)
    weights = {n: p.detach().clone() for n, p in stock.named_parameters()}
    model = hf_mup.convert(stock, base_hidden_size=64, **OPTIONS)  # reinit=False: never re-initialised unasked
    assert hf_mup.is_mup(model)
    close(logits(model, tokens), expected)
    plain = hf_mup.fold(model)
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, weights[name], rtol=1e-6, atol=0)


def test_from_pretrained_stock_checkpoint_with_base_width(tokens, tmp_path):
    stock = transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", 128))
    stock.save_pretrained(tmp_path)
    with pytest.raises(hf_mup.MuPError, match=r"no μP settings.*base_hidden_size=<the proxy's width>"):
        hf_mup.MuPModel.from_pretrained(tmp_path)
    model = hf_mup.MuPModel.from_pretrained(tmp_path, base_hidden_size=64, output_mult=4.0)
    close(logits(model, tokens), logits(stock, tokens))
    assert hf_mup.get_plan(model).readouts == {"lm_head": 2.0}


def test_mlm_checkpoint_as_sequence_classifier(tokens, tmp_path):
    """The fine-tuning path: the body keeps its μP, the new head and pooler get μP's init."""
    mlm = _trained_like("BertForMaskedLM", input_mult=1.0)
    mlm.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    config.num_labels = 3
    cls = hf_mup.MuPModel.from_pretrained(tmp_path, model_class="BertForSequenceClassification", config=config)
    plan = hf_mup.get_plan(cls)
    assert plan.readouts == {"classifier": pytest.approx(3.0 / 2)}
    assert not cls.classifier.weight.any()  # zero-initialised readout
    pooler = cls.bert.pooler.dense.weight
    assert pooler.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.1)  # hidden: σ/√m, m = 2
    cls.eval(), mlm.eval()
    with torch.no_grad():
        close(cls.bert(tokens).last_hidden_state, mlm.bert(tokens).last_hidden_state)
    for name, p in cls.bert.named_parameters():
        if not name.startswith("pooler"):
            torch.testing.assert_close(p, mlm.bert.get_parameter(name), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------------ settings


def test_stored_settings_merge_with_explicit_ones(caplog):
    config = make_config("GPT2LMHeadModel", 128)
    config.mup = hf_mup.MuPConfig(base_hidden_size=32, output_mult=8.0, attn_mult=2.0).to_dict()
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64)
    assert model.config.mup["output_mult"] == 8.0 and model.config.mup["attn_mult"] == 2.0
    assert model.config.mup["base_hidden_size"] == 64
    assert "base_hidden_size=64 overrides the stored config.mup value 32" in caplog.text


@pytest.mark.parametrize("model_class", ["GPT2LMHeadModel", "LlamaForCausalLM"])
@pytest.mark.parametrize("override", [{"output_mult": 6.0}, {"attn_mult": 0.5, "input_mult": 3.0},
                                      {"base_num_layers": 1}, {"base_hidden_size": 32}])
def test_settings_override_at_load_time_keeps_the_outputs(model_class, override, tokens, tmp_path, caplog):
    """A setting changed at load time re-splits the weights between tensors and multipliers (as `convert` of a stock
    checkpoint does): the loaded model computes what was saved, and trains under the new settings."""
    model = _trained_like(model_class)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hf_mup"):
        loaded = hf_mup.MuPModel.from_pretrained(tmp_path, **override)
    key, value = next(iter(override.items()))
    assert f"{key}={value!r} overrides the stored config.mup value" in caplog.text
    assert all(loaded.config.mup[k] == v for k, v in override.items())
    changed = max((p - model.get_parameter(n)).abs().max().item() for n, p in loaded.named_parameters())
    assert changed > 1e-3  # the μP weights are not the saved model's: the function is
    close(logits(loaded, tokens), logits(model, tokens))
    if "output_mult" in override:
        assert hf_mup.get_plan(loaded).readouts["lm_head"] == 3.0


def test_format_1_checkpoint_with_an_override_keeps_the_outputs(tokens, tmp_path):
    model = _trained_like("LlamaForCausalLM")
    model.save_pretrained(tmp_path, state_dict={n: p.detach().clone() for n, p in model.named_parameters()})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mup"]["version"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = hf_mup.MuPModel.from_pretrained(tmp_path, output_mult=6.0, base_num_layers=1)
    close(logits(loaded, tokens), logits(model, tokens))


@pytest.mark.parametrize("field, value", [("output_mult", float("nan")), ("input_mult", float("inf")),
                                          ("attn_mult", True), ("attn_mult", -1.0), ("zero_init_query", "no"),
                                          ("zero_init_readout", 1), ("base_hidden_size", 64.0),
                                          ("base_head_dim", 0), ("base_intermediate_size", True)])
def test_strict_validation(field, value):
    with pytest.raises(hf_mup.MuPError, match=field):
        hf_mup.MuPConfig(**{"base_hidden_size": 64, field: value})


def test_misspelled_keyword_lists_the_valid_fields():
    with pytest.raises(hf_mup.MuPError, match=r"'output_mul' \(did you mean 'output_mult'\?\).*μP settings: base_hidden"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64, output_mul=8.0)
    with pytest.raises(hf_mup.MuPError, match=r"'zero_query'.*zero_init_query"):
        hf_mup.convert(transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", 64)), base_hidden_size=64,
                       zero_query=False)
    # transformers' own keywords still pass through.
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16


def test_user_subclass_and_mismatched_class():
    class MyGPT2(transformers.GPT2LMHeadModel):
        pass

    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64, model_class=MyGPT2)
    assert type(model) is MyGPT2 and hf_mup.get_plan(model).readouts == {"lm_head": 0.5}
    with pytest.raises(hf_mup.MuPError, match=r"BertForMaskedLM is a 'bert' model but the config is 'gpt2'"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64,
                                    model_class=transformers.BertForMaskedLM)


def test_input_mult_on_bert_warns():
    with pytest.warns(UserWarning, match="input_mult=2 has no effect on bert"):
        hf_mup.MuPModel.from_config(make_config("BertForMaskedLM", 128), base_hidden_size=64, input_mult=2.0)


@pytest.mark.slow
def test_fsdp2_full_state_dict_is_folded_and_loads_back():
    """accelerate / torch.distributed.checkpoint gather FSDP2's DTensors through the same fold hook."""
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    script = Path(__file__).resolve().parents[1] / "scripts" / "fsdp2_state_dict.py"
    out = subprocess.run([sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"keys": True, "state_dict_diff": 0.0, "logits_diff": 0.0}
