"""describe / `hf-mup inspect`: the table shows what the adapter decided."""
import json

import pytest
import torch
from conftest import make_config

import hf_mup
from hf_mup.describe import parameter_table
from hf_mup.lab import cli


def test_parameter_table_gpt2():
    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 256), base_hidden_size=64)
    rows = {r.name: r for r in parameter_table(model)}
    c_attn = rows["transformer.h.0.attn.c_attn.weight"]
    assert (c_attn.kind, c_attn.width_mult, c_attn.adam_lr_mult, c_attn.sgd_lr_mult) == ("hidden", 4, 0.25, 1)
    assert c_attn.init_std == "0.01, query 0"  # σ/√m, query columns zero
    assert rows["transformer.h.0.mlp.c_proj.weight"].init_std == "0.005"  # GPT-2's 1/√(2L) kept: 0.02/2/2
    assert rows["transformer.wte.weight"].kind == "input" and rows["transformer.wte.weight"].init_std == "0.02"
    assert rows["transformer.ln_f.weight"].init_std == "=1"


def test_parameter_table_classifier_readout():
    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(make_config("BertForSequenceClassification", 128), base_hidden_size=64,
                                            model_class="BertForSequenceClassification")
    rows = {r.name: r for r in parameter_table(model)}
    assert rows["classifier.weight"].kind == "readout" and rows["classifier.weight"].init_std.startswith("0 ")
    assert rows["classifier.bias"].kind == "scalar"
    assert rows["bert.pooler.dense.weight"].kind == "hidden"


def test_parameter_table_agrees_with_the_model():
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(make_config("BertForMaskedLM", 512), base_hidden_size=64, zero_init_query=False)
    for row in parameter_table(model):
        p = model.get_parameter(row.name)
        if row.init_std[0].isdigit() and p.numel() > 10_000:
            assert p.std().item() == pytest.approx(float(row.init_std), rel=0.05), row.name


def test_inspect_cli(tmp_path, capsys):
    config = make_config("GPT2LMHeadModel", 1024)
    config.to_json_file(tmp_path / "config.json")
    assert cli.main(["inspect", str(tmp_path / "config.json"), "--base-hidden-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_fc.weight" in out and "readout input × lm_head 0.25 (tied)" in out
    # A μP checkpoint's folder: settings read from config.mup.
    hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64).save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["mup"]["base_hidden_size"] == 64
    assert cli.main(["inspect", str(tmp_path / "ckpt")]) == 0
    assert "base hidden size 64" in capsys.readouterr().out
