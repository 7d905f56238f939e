"""PEFT adapters on modules whose output μP scales (the query path, residual branches under depth scaling, embeddings
with input_mult): the μP model with its adapter, `merge_and_unload()`, and the saved adapter on the folded stock
checkpoint (and on the μP model reloaded) compute the same logits after a few training steps."""
import copy
import warnings

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

import hf_mup

peft = pytest.importorskip("peft")

# Non-unit multipliers everywhere, depth scaling on (2 layers over a 1-layer base), non-zero inits so every path moves.
MUP = dict(base_hidden_size=32, base_num_layers=1, attn_mult=1.5, output_mult=3.0, input_mult=2.0,
           zero_init_query=False, zero_init_readout=False)
CASES = {
    "llama": (LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=2, vocab_size=96, max_position_embeddings=64),
              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], AutoModelForCausalLM),
    "llama_embeddings": (LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                                     vocab_size=96, max_position_embeddings=64),
                         ["embed_tokens", "o_proj"], AutoModelForCausalLM),
    "gpt2": (GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=96, n_positions=64),
             ["c_attn", "c_proj", "c_fc"], AutoModelForCausalLM),
    "bert": (BertConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                        vocab_size=96, max_position_embeddings=64),
             ["query", "key", "value", "dense"], AutoModelForMaskedLM),
}


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _trained_logits(model, groups, tokens, labels, steps=3):
    """The logits (in eval mode) after `steps` AdamW steps on one batch with the parameter groups `groups`."""
    optimizer = torch.optim.AdamW(groups)
    for _ in range(steps):
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return _logits(model, tokens)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow
def test_lora_keeps_mup_through_merge_save_and_stock_load(case, tmp_path):
    config, targets, auto = CASES[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BERT is post-norm: depth scaling warns that it is untested there
        model = hf_mup.MuPModel.from_config(config, **MUP)
    model.save_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False,
                                                      fan_in_fan_out=case == "gpt2"))
    tokens = torch.randint(0, 96, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adding an adapter is not module surgery: no "model was changed" warning
        _logits(lora, tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every LoRA tensor has a μP rule: no "no μP rule" warning
        groups = hf_mup.mup_param_groups(lora, lr=1e-2)
    embedding_a = {"scalar"} if case == "llama_embeddings" else set()  # an embedding's A is looked up: no fan-in
    assert {g["mup_kind"] for g in groups if g.get("mup_adapter")} == {"down", "input"} | embedding_a
    expected = _trained_logits(lora, groups, tokens, labels=tokens)
    lora.save_pretrained(tmp_path / "adapter")

    merged = copy.deepcopy(lora).merge_and_unload()
    torch.testing.assert_close(_logits(merged, tokens), expected, rtol=0, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(auto.from_pretrained(tmp_path / "merged"), tokens), expected, rtol=0, atol=1e-5)

    on_stock = peft.PeftModel.from_pretrained(auto.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(_logits(on_stock, tokens), expected, rtol=0, atol=1e-5)
    on_mup = peft.PeftModel.from_pretrained(hf_mup.MuPModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(_logits(on_mup, tokens), expected, rtol=0, atol=1e-5)


def test_the_adapter_really_moved_the_outputs(tmp_path):
    """The equalities above mean something only if the adapter changes the function: the trained adapter's logits
    differ from the base model's by far more than the tolerance."""
    config, targets, _ = CASES["llama"]
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, **MUP)
    tokens = torch.randint(0, 96, (2, 16))
    before = _logits(model, tokens)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["o_proj", "down_proj"],
                                                      init_lora_weights=False))
    assert (_logits(lora, tokens) - before).abs().max() > 1e-2


@pytest.mark.parametrize("target", ["o_proj", "q_proj"])
def test_lora_variants_are_refused_where_mup_scales_the_output(target):
    config, _, _ = CASES["llama"]
    model = hf_mup.MuPModel.from_config(config, **MUP)
    dora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=[target], use_dora=True))
    with pytest.raises(hf_mup.MuPError, match=rf"LoRA variant \(Dora\w+\) wraps '.*{target}'.*plain LoraConfig"):
        dora(torch.randint(0, 96, (1, 8)))


def test_dora_is_fine_where_mup_scales_nothing():
    config, _, _ = CASES["llama"]
    model = hf_mup.MuPModel.from_config(config, **MUP)
    dora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["up_proj"], use_dora=True))
    dora(torch.randint(0, 96, (1, 8)))


def test_a_second_adapter_on_the_same_layers_gets_the_factor_too():
    """PEFT's add_adapter puts a second lora_B into the wrappers the first made (the same module objects): the guard
    notices by their adapter count, and the second adapter's output carries the depth multiplier too."""
    config, _, _ = CASES["llama"]
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, **MUP)
    targets = ["o_proj", "down_proj"]
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    tokens = torch.randint(0, 96, (2, 16))
    _logits(lora, tokens)  # the first adapter's hooks are on
    lora.add_adapter("second", peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    lora.set_adapter("second")
    with_second = _logits(lora, tokens)
    merged = copy.deepcopy(lora).merge_and_unload()
    torch.testing.assert_close(_logits(merged, tokens), with_second, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- the adapters' rules


def _lora_rules(model, **lora):
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, **lora))
    plan = hf_mup.get_plan(wrapped)
    return wrapped, plan


def test_adapter_rules_follow_the_wrapped_layers_shapes():
    """A (width → rank) takes the down rule of its layer's fan-in, B (rank → width) the input rule of its fan-out, an
    embedding's A (a lookup) the scalar rule; inside a block both take CompleteP's factors, as the layer does."""
    config, _, _ = CASES["llama_embeddings"]
    _, plan = _lora_rules(hf_mup.MuPModel.from_config(config, **MUP),
                          target_modules=["q_proj", "down_proj", "embed_tokens"])
    a, b = (plan.adapters[f"model.layers.0.self_attn.q_proj.lora_{x}.default.weight"] for x in "AB")
    layer = plan.rules["model.layers.0.self_attn.q_proj.weight"]  # hidden: m = 2, m_L = 2 (CompleteP, α = 1)
    assert (a.kind.value, b.kind.value) == ("down", "input")
    assert a.lr_mult("adamw") == layer.lr_mult("adamw") == 0.5  # η/m, as the layer (m_L^(α-1) = 1)
    assert b.lr_mult("adamw") == 1.0
    assert (a.lr_mult("sgd"), b.lr_mult("sgd")) == (0.5 * 2, 2 * 2)  # η/m and η·m, × m_L^(2α-1) = 2
    assert a.eps_mult("adamw") == b.eps_mult("adamw") == layer.eps_mult("adamw") == 0.25  # 1/m_N · m_L^-α
    down_a = plan.adapters["model.layers.0.mlp.down_proj.lora_A.default.weight"]
    assert down_a.fanin_mult == 2.0  # the intermediate size grows with the width too
    emb_a, emb_b = (plan.adapters[f"model.embed_tokens.lora_embedding_{x}.default"] for x in "AB")
    assert (emb_a.kind.value, emb_b.kind.value) == ("scalar", "input")
    assert (emb_a.lr_mult("sgd"), emb_b.lr_mult("sgd")) == (1.0, 2.0)  # outside the blocks: no depth factor


def test_fused_conv1d_dora_and_rslora_rules():
    """GPT-2's fused q/k/v (a Conv1D, fan-out 3·width) and DoRA's magnitude (a vector along the fan-out); rsLoRA's
    α/√r is a constant at every width, so its rules are LoRA's."""
    config, _, _ = CASES["gpt2"]
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=32)
    _, plan = _lora_rules(model, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True)
    name = "transformer.h.0.attn.c_attn"
    assert plan.adapters[f"{name}.lora_A.default.weight"].fanin_mult == 2.0
    assert plan.adapters[f"{name}.lora_B.default.weight"].fanout_mult == 2.0
    magnitude = plan.adapters[f"{name}.lora_magnitude_vector.default.weight"]
    assert (magnitude.kind.value, magnitude.lr_mult("adamw"), magnitude.lr_mult("sgd")) == ("input", 1.0, 2.0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=32)
    _, rs_plan = _lora_rules(model, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_rslora=True)
    plain = {n: r for n, r in plan.adapters.items() if "magnitude" not in n}
    assert rs_plan.adapters == plain


def _adapter_updates(width, adapters, steps=4, lr=2e-2):
    """RMS change of every adapter's A·x (z, the rank-space features) and B·z after a few Adam steps on one batch."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=width // 16,
                         num_hidden_layers=2, vocab_size=128, max_position_embeddings=64)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, zero_init_readout=False)  # (a pretrained head)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8,
                                                      target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    outputs: dict = {}
    for name, module in lora.named_modules():
        if name.endswith(("lora_A.default", "lora_B.default")):
            module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, []).append(o.detach()))
    tokens = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(lora, lr=lr, adapters=adapters))
    with torch.no_grad():
        lora(tokens)
    for _ in range(steps):
        lora(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        lora(tokens)
    change = {side: [(v[-1] - v[0]).pow(2).mean().sqrt().item() for n, v in outputs.items() if f"lora_{side}" in n]
              for side in "AB"}
    return {side: sum(v) / len(v) for side, v in change.items()}


@pytest.mark.slow
def test_adapter_updates_do_not_grow_with_width():
    """The coordinate check of the adapters: with μP's rules the change of A·x and B·A·x after training is the same
    at widths 64 to 512 (log-log slope ≈ 0); at one plain LR it grows with width (A·x as about width^0.7 here)."""
    widths = (64, 128, 256, 512)
    slopes = {}
    for adapters in ("mup", "plain"):
        runs = [_adapter_updates(w, adapters) for w in widths]
        for side in "AB":
            x = torch.log2(torch.tensor(widths, dtype=torch.float64))
            y = torch.log2(torch.tensor([r[side] for r in runs], dtype=torch.float64))
            slopes[adapters, side] = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert abs(slopes["mup", "A"]) < 0.15 and abs(slopes["mup", "B"]) < 0.15, slopes
    assert slopes["plain", "A"] > 0.5 and slopes["plain", "B"] > 0.3, slopes


def test_plain_adapters_stay_available_and_are_checked():
    config, _, _ = CASES["llama"]
    lora, _ = _lora_rules(hf_mup.MuPModel.from_config(config, **MUP), target_modules=["q_proj"])
    groups = hf_mup.mup_param_groups(lora, lr=1e-2, adapters="plain")
    plain = [g for g in groups if g.get("mup_adapter")]
    assert [(g["mup_kind"], g["lr_mult"], g["lr"]) for g in plain] == [("unscaled", 1.0, 1e-2)]
    assert len(plain[0]["params"]) == 2 * config.num_hidden_layers  # every A and B
    hf_mup.check_optimizer(lora, torch.optim.AdamW(groups))
    mup_groups = hf_mup.mup_param_groups(lora, lr=1e-2)
    for g in mup_groups:
        if g.get("mup_kind") == "down":
            g["lr_mult"] = 1.0  # an adapter's A at the plain LR in a group that claims μP's rules
    with pytest.raises(hf_mup.MuPError, match=r"lora_A.*lr_mult 1, but μP needs 0.5"):
        hf_mup.check_optimizer(lora, torch.optim.AdamW(mup_groups))
    with pytest.raises(hf_mup.MuPError, match="adapters='x'.*'mup'.*'plain'"):
        hf_mup.mup_param_groups(lora, lr=1e-2, adapters="x")


def test_a_classifier_head_in_modules_to_save_keeps_its_readout_multiplier(tmp_path):
    """PEFT's sequence-classification LoRA trains a copy of the head (modules_to_save): the copy gets the readout
    multiplier and rule, the μP classifier's logits are unchanged by wrapping, and after training the merged model,
    the saved adapter on the folded checkpoint and the μP model agree."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                        vocab_size=96, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=32, output_mult=3.0, zero_init_readout=False,
                                        model_class="BertForSequenceClassification")
    model.save_pretrained(tmp_path / "base")
    tokens = torch.randint(0, 96, (4, 12))
    before = _logits(model, tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # wrapping the head is an adapter, not surgery: no warning
        lora = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
        torch.testing.assert_close(_logits(lora, tokens), before, rtol=0, atol=1e-6)  # B = 0: the same function
        groups = hf_mup.mup_param_groups(lora, lr=1e-2)
    head = next(g for g in groups if "classifier.weight" in g["param_names"])
    assert head["mup_kind"] == "readout"
    expected = _trained_logits(lora, groups, tokens, labels=torch.tensor([0, 1, 1, 0]))
    assert (expected - before).abs().max() > 1e-2
    lora.save_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(_logits(copy.deepcopy(lora).merge_and_unload(), tokens), expected, rtol=0, atol=1e-5)
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    on_stock = peft.PeftModel.from_pretrained(stock, tmp_path / "adapter")
    torch.testing.assert_close(_logits(on_stock, tokens), expected, rtol=0, atol=1e-5)


def test_inspect_shows_the_adapters_rules(tmp_path, capsys):
    from hf_mup.lab import cli

    config = GPT2Config(n_embd=128, n_head=4, n_layer=2, vocab_size=96, n_positions=64)
    config.to_json_file(tmp_path / "config.json")
    assert cli.main(["inspect", str(tmp_path / "config.json"), "--base-hidden-size", "32", "--lora", "8:c_attn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GPT2LMHeadModel, hidden size 128, LoRA 8:c_attn")
    a = next(line.split() for line in out.splitlines() if line.startswith("transformer.h.1.attn.c_attn.lora_A"))
    b = next(line.split() for line in out.splitlines() if line.startswith("transformer.h.1.attn.c_attn.lora_B"))
    assert (a[1], a[2], a[3], b[1], b[2]) == ("8×128", "down", "4", "384×8", "input")
    # Adam LR ×, SGD LR ×, Muon LR × (an adapter: Adam's), Adam ε ×
    assert a[-4:] == ["0.25", "0.25", "Adam", "0.25"] and b[-4:] == ["1", "4", "Adam", "0.25"]
    assert "adapters: 4 LoRA-family tensors" in out


def test_an_init_that_does_not_scale_with_width_is_named():
    config, _, _ = CASES["llama"]
    model = hf_mup.MuPModel.from_config(config, **MUP)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="gaussian"))
    with pytest.warns(UserWarning, match=r"init_lora_weights=\['gaussian'\].*1/√fan-in"):
        hf_mup.mup_param_groups(lora, lr=1e-2)
