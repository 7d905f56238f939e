"""hf_mup.compress: exact magnitude pruning (global, per layer, iterative), torchao weight-only int8/int4 through
transformers' own loader, the byte accounting against hand-computed sizes, and a μP model folded, compressed and
reopened in plain transformers (generate, classification)."""
import copy
import json
import math
import sys

import pytest
import torch
from conftest import CONFIGS
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import hf_mup
from hf_mup import MuPError
from hf_mup import compress as C
from hf_mup.lab import cli

pytest.importorskip("torchao")


def _zeros(model, include_embeddings=False):
    return [(int((m.weight == 0).sum()), m.weight.numel()) for _, m in C.prunable(model, include_embeddings)]


def _llama(width=64, seed=0, **kw):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS["llama"](width, **kw)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_global_and_per_layer_sparsity_is_exact(arch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](64))
    layer = copy.deepcopy(model)
    C.prune(model, 0.37)
    counts = _zeros(model)
    total = sum(n for _, n in counts)
    assert sum(z for z, _ in counts) == round(0.37 * total)
    assert len({round(z / n, 2) for z, n in counts}) > 1  # global: layers end up at different sparsities
    C.prune(layer, 0.37, scope="layer")
    assert all(z == round(0.37 * n) for z, n in _zeros(layer))
    assert not any(hasattr(m, "weight_mask") for m in layer.modules())  # permanent: no mask, no hook
    emb = copy.deepcopy(model)
    C.prune(emb, 0.5, include_embeddings=True)
    names = [n for n, _ in C.prunable(emb, True)]
    assert any("embed" in n or "wte" in n for n in names)
    assert sum(z for z, _ in _zeros(emb, True)) == round(0.5 * sum(n for _, n in _zeros(emb, True)))


def test_iterative_pruning_keeps_pruned_weights_at_zero_while_fine_tuning():
    model = _llama()
    ids = torch.randint(0, 128, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    calls = []

    def finetune(m, step):
        calls.append(step)
        for _ in range(2):
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    C.prune(model, 0.8, steps=3, finetune=finetune)
    assert calls == [1, 2]
    counts = _zeros(model)
    assert sum(z for z, _ in counts) == round(0.8 * sum(n for _, n in counts))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("norm" in n for n in changed)  # it did train in between


def test_pruned_checkpoint_round_trips(tmp_path):
    model = _llama()
    C.prune(model, 0.6)
    ids = torch.randint(0, 128, (2, 16))
    C.save_compressed(model, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert _zeros(again) == _zeros(model)
    assert torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    report = json.loads((tmp_path / "compression.json").read_text())
    assert report["compression"]["sparsity"] == 0.6 and again.config.compression["sparsity"] == 0.6


@pytest.mark.parametrize("bits,bound", [(8, 0.02), (4, 0.15)])
def test_quantized_logits_stay_close(tmp_path, bits, bound):
    """Relative error of the logits (Frobenius) on a tiny Llama: measured 0.005 (int8) and 0.076 (int4)."""
    model = _llama()
    ids = torch.randint(0, 128, (2, 16))
    ref = model(input_ids=ids).logits
    C.save_compressed(model, tmp_path, bits=bits)
    q = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(q.model.layers[0].mlp.up_proj.weight).__name__ != "Parameter"  # a torchao tensor
    err = ((q(input_ids=ids).logits - ref).norm() / ref.norm()).item()
    assert 0 < err < bound
    proj = C.size_report(q)["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert proj["bits"] == bits and proj["format"] == "quantized dense"


def test_pruned_then_quantized_keeps_its_zeros(tmp_path):
    model = _llama()
    C.prune(model, 0.75, scope="layer")
    C.save_compressed(model, tmp_path, bits=4)
    q = AutoModelForCausalLM.from_pretrained(tmp_path)
    row = C.size_report(q)["tensors"]["model.layers.1.self_attn.o_proj.weight"]
    assert row["nonzeros"] <= round(0.25 * row["params"]) and row["format"] == "quantized sparse"
    assert q.config.compression == {"sparsity": 0.75, "scope": "layer", "include_embeddings": False, "bits": 4}


def test_byte_accounting_by_hand():
    from torchao.quantization import IntxWeightOnlyConfig, MappingType, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    toy = nn.Sequential(nn.Linear(64, 8), nn.LayerNorm(8))
    dense = C.size_report(toy)["total"]
    assert dense["stored_bytes"] == (64 * 8 + 8 + 8 + 8) * 4  # fp32 weight, bias, LN gain and bias
    assert dense["bytes"] == (64 * 8 + 8 + 8) * 4 + 1  # the all-zero LN bias: no values, an 8-bit mask
    with torch.no_grad():
        toy[0].weight.view(-1)[:-64] = 0.0  # 64 of 512 left
    row = C.size_report(toy)["tensors"]["0.weight"]
    assert row["nonzeros"] == 64 and row["bytes"] == 64 * 4 + 512 // 8 and row["stored_bytes"] == 512 * 4
    for bits, granularity, groups in ((8, PerAxis(0), 8), (4, PerGroup(32), 16)):
        q = copy.deepcopy(toy)
        quantize_(q, IntxWeightOnlyConfig(weight_dtype=torch.int8 if bits == 8 else torch.int4,
                                          granularity=granularity, mapping_type=MappingType.SYMMETRIC))
        w = q[0].weight
        side = sum(getattr(w, a).numel() * getattr(w, a).element_size() for a in ("scale", "zero_point"))
        assert w.scale.numel() == groups  # one scale per row (int8) or per 32 inputs (int4)
        row = C.size_report(q)["tensors"]["0.weight"]
        # sparse: the nonzero values (64, less the small ones that quantize to 0) at `bits` each plus a 512-bit mask,
        # plus the scales; dense would be 512 × bits / 8
        nnz = int((w.dequantize() != 0).sum())
        assert 48 < nnz <= 64 and row["nonzeros"] == nnz
        assert row["bytes"] == min(512 * bits // 8, math.ceil(nnz * bits / 8) + 64) + side
        assert row["stored_bytes"] == 512 + side  # torchao keeps a byte per value


def test_mup_model_folded_compressed_and_opened_in_plain_transformers(tmp_path, capsys):
    torch.manual_seed(0)
    config = CONFIGS["llama"](64)
    mup = hf_mup.MuPModel.from_config(config, base_hidden_size=32, output_mult=2.0, zero_init_readout=False).eval()
    with pytest.raises(MuPError, match="Fold it first"):
        C.prune(mup, 0.5)
    mup.save_pretrained(tmp_path / "mup")
    out = tmp_path / "small"
    assert cli.main(["compress", str(tmp_path / "mup"), str(out), "--sparsity", "0.5", "--bits", "8"]) == 0
    assert "sparsity" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(plain.config, "mup")
    ids = torch.randint(1, 128, (1, 8))
    reference = hf_mup.fold(copy.deepcopy(mup))
    C.prune(reference, 0.5)
    ref = reference(input_ids=ids).logits
    assert ((plain(input_ids=ids).logits - ref).norm() / ref.norm()).item() < 0.02
    tokens = plain.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert tokens.shape == (1, 13)
    assert cli.main(["inspect", str(out), "--json", str(tmp_path / "size.json")]) == 0
    assert "inference size" in capsys.readouterr().out
    assert json.loads((tmp_path / "size.json").read_text())["compression"]["bits"] == 8


def test_classifier_pruned_and_quantized(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CONFIGS["bert"](64, num_labels=2)).eval()
    C.prune(model, 0.5)
    C.save_compressed(model, tmp_path, bits=8)
    q = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 128, (3, 12))
    assert q(input_ids=ids).logits.shape == (3, 2)
    assert math.isclose(C.size_report(q)["total"]["sparsity"], C.size_report(model)["total"]["sparsity"], abs_tol=0.01)


def test_bad_input():
    model = _llama()
    for bad in (1.0, -0.1, 1.5, True):
        with pytest.raises(MuPError, match=r"sparsity must be a fraction in \[0, 1\)"):
            C.prune(model, bad)
    with pytest.raises(MuPError, match="bits must be one of"):
        C.save_compressed(model, "unused", bits=3)
    gpt2 = AutoModelForCausalLM.from_config(CONFIGS["gpt2"](64))
    with pytest.raises(MuPError, match="Conv1D"):
        C.save_compressed(gpt2, "unused", bits=8)
    with pytest.raises(MuPError, match="scope"):
        C.prune(model, 0.5, scope="row")


def _no_work(monkeypatch):
    """Make loading or pruning a checkpoint fail the test: a refusal must come before either."""
    def fail(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded or pruned before the refusal")

    monkeypatch.setattr(C, "load", fail)
    monkeypatch.setattr(C, "prune", fail)


def _cli_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-mup: error: "), err
    return err[0]


def test_int4_group_size_is_checked_first_and_names_the_layer(tmp_path, capsys, monkeypatch):
    """Hidden 48 is not a multiple of int4's group of 32: transformers' loader would fail deep inside ('issues during
    automatic conversion'); hf_mup names the layer, its in-features and the group size before any work."""
    model = _llama(48)  # 3 heads of 16; the MLP (192) is fine, the attention projections are not
    message = ("int4 quantizes each Linear weight in groups of 32 inputs, but layer 'model.layers.0.self_attn.q_proj' "
               "has 48 in-features, not a multiple of the group size 32")
    with pytest.raises(MuPError, match="Use int8") as e:
        C.save_compressed(model, tmp_path / "lib", bits=4)
    assert message in str(e.value) and not (tmp_path / "lib").exists()
    model.save_pretrained(tmp_path / "ckpt")
    capsys.readouterr()
    _no_work(monkeypatch)
    assert cli.main(["compress", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--sparsity", "0.5", "--bits", "4"]) == 2
    line = _cli_error(capsys)
    assert message in line and "--bits 8" in line and "lm_head" not in line  # lm_head stays fp32: not a problem
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert cli.main(["compress", str(tmp_path / "ckpt"), str(tmp_path / "out8"), "--bits", "8"]) == 0  # the fix works


def test_gpt2_quantization_and_missing_torchao_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    AutoModelForCausalLM.from_config(CONFIGS["gpt2"](64)).save_pretrained(tmp_path / "gpt2")
    _llama().save_pretrained(tmp_path / "llama")
    capsys.readouterr()
    _no_work(monkeypatch)
    argv = [str(tmp_path / "out"), "--sparsity", "0.5", "--bits", "8"]
    assert cli.main(["compress", str(tmp_path / "gpt2"), *argv]) == 2
    line = _cli_error(capsys)
    assert "GPT-2's Conv1D layers (e.g. 'transformer.h.0.attn.c_attn')" in line and "Prune it" in line
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if the [compress] extra were not installed
    assert cli.main(["compress", str(tmp_path / "llama"), *argv]) == 2
    assert "needs torchao, which is not installed: pip install 'hf_mup[compress]'" in _cli_error(capsys)
    assert cli.main(["compress", str(tmp_path / "no_such_ckpt"), *argv]) == 2
    assert "no_such_ckpt: no checkpoint folder" in _cli_error(capsys)
    assert cli.main(["compress", str(tmp_path / "llama"), str(tmp_path / "out"), "--sparsity", "1.5"]) == 2
    assert "sparsity must be a fraction in [0, 1)" in _cli_error(capsys)
    assert not (tmp_path / "out").exists()
