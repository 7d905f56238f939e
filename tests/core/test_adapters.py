"""PEFT adapters on modules whose output μP scales (the query path, residual branches under depth scaling, embeddings
with input_mult): the μP model with its adapter, `merge_and_unload()`, and the saved adapter on the folded stock
checkpoint (and on the μP model reloaded) compute the same logits after a few training steps."""
import copy
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config, LlamaConfig

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
    with pytest.warns(UserWarning, match="no μP rule"):
        optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(lora, lr=1e-2))
    for _ in range(3):
        lora(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora.eval()
    expected = _logits(lora, tokens)
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
