"""Every bad input gets a MuPError whose message names the fix."""
import pytest
import torch
import transformers
from conftest import make_config

import hf_mup
from hf_mup.lab import cli


def test_unsupported_architecture_lists_supported():
    config = transformers.T5Config(d_model=64, num_layers=1, num_heads=4, vocab_size=128)
    with pytest.raises(hf_mup.MuPError, match=r"cannot describe model_type 't5': it is an encoder-decoder.*gpt2, bert"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=32)


def test_unsupported_model_class_lists_supported():
    with pytest.raises(hf_mup.MuPError, match=r"does not support GPT2ForTokenClassification.*BertForMaskedLM"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64,
                                    model_class="GPT2ForTokenClassification")
    model = transformers.GPT2ForTokenClassification(make_config("GPT2LMHeadModel", 128))
    with pytest.raises(hf_mup.MuPError, match="Supported classes"):
        hf_mup.convert(model, hf_mup.MuPConfig(base_hidden_size=64))


def test_base_larger_than_model():
    with pytest.raises(hf_mup.MuPError, match=r"base_hidden_size 256 is larger than the model's hidden_size 128.*<= 128"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=256)


def test_base_not_dividing_heads():
    with pytest.raises(hf_mup.MuPError, match=r"not a multiple of the head size 16.*base_num_attention_heads"):
        hf_mup.MuPModel.from_config(make_config("BertForMaskedLM", 128), base_hidden_size=40)
    with pytest.raises(hf_mup.MuPError, match=r"not divisible by base_num_attention_heads 3"):
        hf_mup.MuPModel.from_config(make_config("BertForMaskedLM", 128), base_hidden_size=64, base_num_attention_heads=3)


def test_mismatched_head_sizes():
    with pytest.raises(hf_mup.MuPError, match=r"Mismatched head sizes.*give only one"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64,
                                    base_num_attention_heads=4, base_head_dim=32)


def test_base_intermediate_not_whole():
    with pytest.raises(hf_mup.MuPError, match="set base_intermediate_size"):
        hf_mup.MuPModel.from_config(make_config("BertForMaskedLM", 96, intermediate_size=100), base_hidden_size=32)


def test_missing_base_hidden_size():
    with pytest.raises(hf_mup.MuPError, match=r"base_hidden_size=<the proxy's width>"):
        hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128))


def test_bad_multiplier():
    with pytest.raises(hf_mup.MuPError, match="output_mult must be a positive finite number"):
        hf_mup.MuPConfig(base_hidden_size=64, output_mult=0)
    with pytest.raises(hf_mup.MuPError, match=r"Unknown μP settings \['output_multiplier'\]"):
        hf_mup.MuPConfig.from_dict({"base_hidden_size": 64, "output_multiplier": 2})


def test_checkpoint_without_mup_settings(tmp_path):
    transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", 64)).save_pretrained(tmp_path)
    with pytest.raises(hf_mup.MuPError, match=r"has no μP settings \(config.mup\).*MuPModel.from_config"):
        hf_mup.MuPModel.from_pretrained(tmp_path)
    assert cli.main(["fold", str(tmp_path), str(tmp_path / "out")]) == 2


def test_mup_checkpoint_loaded_without_hf_mup(tmp_path):
    """A μP checkpoint loaded with transformers' own loader has no multipliers: training it must not go unnoticed."""
    hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64).save_pretrained(tmp_path)
    plain = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    with pytest.raises(hf_mup.MuPError, match=r"MuPModel.from_pretrained"):
        hf_mup.mup_param_groups(plain, lr=1e-3)


def test_plain_optimizer_is_refused():
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64)
    with pytest.raises(hf_mup.MuPError, match=r"no μP parameter groups.*torch.optim.AdamW\(hf_mup.mup_param_groups"):
        hf_mup.check_optimizer(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    with pytest.raises(hf_mup.MuPError, match=r"made for 'adamw' but the optimizer is SGD.*optimizer='sgd'"):
        hf_mup.check_optimizer(model, torch.optim.SGD(hf_mup.mup_param_groups(model, lr=1e-3)))
    other = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 256), base_hidden_size=64)
    groups = hf_mup.mup_param_groups(other, lr=1e-3)  # groups of a model of another width, reused by mistake
    by_name = dict(model.named_parameters())
    for g in groups:
        g["params"] = [by_name[n] for n in g["param_names"]]
    with pytest.raises(hf_mup.MuPError, match=r"lr_mult 0.25, but μP needs 0.5"):
        hf_mup.check_optimizer(model, torch.optim.AdamW(groups))
    hf_mup.check_optimizer(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3)))  # the right one passes
    hf_mup.check_optimizer(model, torch.optim.SGD(hf_mup.mup_param_groups(model, lr=1e-3, optimizer="sgd")))


def test_param_groups_need_a_mup_model_and_known_options():
    stock = transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", 64))
    with pytest.raises(hf_mup.MuPError, match=r"needs a μP model.*MuPModel.from_config"):
        hf_mup.mup_param_groups(stock, lr=1e-3)
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 64), base_hidden_size=64)
    with pytest.raises(hf_mup.MuPError, match=r"no μP rule for the optimizer optim='galore_adamw'.*GaLore"):
        hf_mup.mup_param_groups(model, lr=1e-3, optimizer="galore_adamw")
    with pytest.raises(hf_mup.MuPError, match=r"Unknown weight_decay_mode 'decoupled'"):
        hf_mup.mup_param_groups(model, lr=1e-3, weight_decay=0.1, weight_decay_mode="decoupled")


def test_cli_errors_exit_2(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    make_config("GPT2LMHeadModel", 128).to_json_file(cfg)
    assert cli.main(["inspect", str(cfg)]) == 2
    assert "pass --base-hidden-size" in capsys.readouterr().err
    assert cli.main(["inspect", str(cfg), "--base-hidden-size", "512"]) == 2
    assert "larger than the model's hidden_size" in capsys.readouterr().err
