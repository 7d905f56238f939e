"""The checks of `hf-mup zoo` (hf_mup/lab/zoo_checks.py) fail where μP is broken: a test of each check that could
not fail would prove nothing."""
import transformers

import hf_mup
from hf_mup.lab import zoo_checks


def test_the_coordinate_check_fails_a_model_trained_with_one_learning_rate(monkeypatch):
    # one LR for every tensor (what a μP model trained with a plain optimizer gets): the check must see it
    def one_group(model, lr, **kwargs):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "mup_unchecked": True}]

    monkeypatch.setattr(hf_mup, "mup_param_groups", one_group)
    result = zoo_checks.check_coords("llama", transformers.LlamaForCausalLM)
    assert not result["ok"] and result["slopes"][result["worst"]] > zoo_checks.DEFAULT_BAND[1]


def test_the_fold_check_fails_a_save_without_folding(monkeypatch):
    import hf_mup.apply as apply

    monkeypatch.setattr(apply, "fold_entries", lambda model, plan: [])  # a checkpoint saved without folding
    row = zoo_checks.check_fold(transformers.LlamaForCausalLM, zoo_checks.tiny_config("llama", 128), True)
    assert not row["ok"] and row["stock_diff"] > 1e-3


def test_the_token_share_catches_an_embedding_scale_hidden_by_positions(monkeypatch):
    # CTRL multiplies its token embeddings by √d_model; its sinusoidal positions keep the first hidden state's slope
    # small, so the layer outputs miss it: the token embeddings' share of it does not
    from hf_mup.architectures import generic

    monkeypatch.delitem(generic.FAMILIES, "ctrl")
    generic.describe.cache_clear()
    try:
        result = zoo_checks.check_coords("ctrl", transformers.CTRLLMHeadModel, seeds=(0,))
    finally:
        generic.describe.cache_clear()
    assert not result["ok"] and result["worst"] == "embeddings@0" and result["slopes"]["embeddings@0"] > 0.4
    assert abs(result["slopes"]["hidden.0@1"]) < 0.25


def test_the_attention_check_fails_where_the_factor_is_not_applied(monkeypatch):
    import hf_mup.apply as apply

    monkeypatch.setattr(apply, "scaled_attention", lambda model, plan: [])  # attn_mult folded but never applied
    row = zoo_checks.check_attention(transformers.LlamaForCausalLM, zoo_checks.tiny_config("llama", 128))
    assert not row["ok"] and row["stock_diff"] > 1e-3
