"""Per-tensor LR multipliers and init stds against microsoft/mup, the reference implementation."""
import math

import mup as msmup
import pytest
import torch
import transformers
from conftest import LM_CLASSES, make_config

import hf_mup
from hf_mup.plan import meta_model as _meta_model

BASE = 64


def _mup_reference(model_class: str, width: int, **cfg):
    """The stock model at `width` with microsoft/mup's base shapes (base 64, delta 128)."""
    cls = getattr(transformers, model_class)
    model = _meta_model(cls, make_config(model_class, width, **cfg))
    base = _meta_model(cls, make_config(model_class, BASE, **{k: v * BASE // width for k, v in cfg.items()}))
    delta = _meta_model(cls, make_config(model_class, 2 * BASE, **{k: v * 2 * BASE // width for k, v in cfg.items()}))
    msmup.set_base_shapes(model, base, delta=delta, rescale_params=False, do_assert=False)
    return model


def _lr_by_name(groups) -> dict[str, float]:
    return {n: g["lr"] for g in groups for n in g["param_names"]}


def _reference_lrs(reference, optimizer_cls, lr):
    names = {id(p): n for n, p in reference.named_parameters()}
    # microsoft/mup builds the torch optimizer; meta tensors are fine, nothing is stepped.
    opt = optimizer_cls(reference.parameters(), lr=lr)
    return {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("model_class", ["GPT2LMHeadModel", "GPT2ForSequenceClassification",
                                         "BertForMaskedLM", "BertForSequenceClassification", "BertModel",
                                         "RobertaForMaskedLM", "RobertaForSequenceClassification", "LlamaForCausalLM",
                                         "LlamaForSequenceClassification", "LlamaModel", "MistralForCausalLM",
                                         "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize("width", [128, 256])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_lr_multipliers_match_microsoft_mup(model_class, width, optimizer):
    lr = 0.01
    reference = _mup_reference(model_class, width)
    ref_cls = msmup.MuAdamW if optimizer == "adamw" else msmup.MuSGD
    expected = _reference_lrs(reference, ref_cls, lr)

    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(make_config(model_class, width), base_hidden_size=BASE, model_class=model_class)
    ours = _lr_by_name(hf_mup.mup_param_groups(model, lr=lr, optimizer=optimizer))
    assert ours.keys() == expected.keys()
    mismatched = {n: (ours[n], expected[n]) for n in ours if not math.isclose(ours[n], expected[n], rel_tol=1e-9)}
    assert not mismatched
    # The multipliers are not all trivial: the test would notice a model left in SP.
    assert len({round(v / lr, 6) for v in ours.values()}) >= 2


def test_lr_multipliers_when_intermediate_scales_differently():
    """BERT (nn.Linear, (out, in) layout, which microsoft/mup assumes) with a base MLP ratio of 2 vs the model's 4."""
    lr = 0.01
    reference = _mup_reference("BertForMaskedLM", 256, intermediate_size=1024)
    # The base/delta built above scale intermediate with width; rebuild them with the base's MLP ratio of 2.
    cls = transformers.BertForMaskedLM
    base = _meta_model(cls, make_config("BertForMaskedLM", BASE, intermediate_size=2 * BASE))
    delta = _meta_model(cls, make_config("BertForMaskedLM", 2 * BASE, intermediate_size=4 * BASE))
    msmup.set_base_shapes(reference, base, delta=delta, rescale_params=False, do_assert=False)
    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(
            make_config("BertForMaskedLM", 256, intermediate_size=1024), base_hidden_size=BASE,
            base_intermediate_size=2 * BASE
        )
    for optimizer, ref_cls in (("adamw", msmup.MuAdamW), ("sgd", msmup.MuSGD)):
        expected = _reference_lrs(reference, ref_cls, lr)
        ours = _lr_by_name(hf_mup.mup_param_groups(model, lr=lr, optimizer=optimizer))
        assert ours == pytest.approx(expected, rel=1e-9)
    # The MLP's down projection has fan-in multiplier 1024/128 = 8, unlike the hidden ones (4).
    assert ours["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(lr * (256 / 64) / 8)  # SGD: fanout/fanin


def test_conv1d_layout_uses_the_true_fan_in():
    """GPT-2's Conv1D stores (in, out): c_fc's fan-in is the hidden size, c_proj's the intermediate size."""
    with torch.device("meta"):
        model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 256, n_inner=2048), base_hidden_size=BASE,
                                            base_intermediate_size=128)
    rules = hf_mup.get_plan(model).rules
    assert rules["transformer.h.0.mlp.c_fc.weight"].fanin_mult == 4  # 256 / 64
    assert rules["transformer.h.0.mlp.c_fc.weight"].fanout_mult == 16  # 2048 / 128
    assert rules["transformer.h.0.mlp.c_proj.weight"].fanin_mult == 16
    assert rules["transformer.h.0.mlp.c_proj.weight"].lr_mult("adamw") == 1 / 16


@pytest.mark.parametrize("model_class", [*LM_CLASSES, "BertForSequenceClassification", "LlamaForSequenceClassification"])
def test_init_std_matches_microsoft_mup(model_class):
    """Measured init std of each weight = the stock HF std × microsoft/mup's factor (width_mult^-1/2 on matrices)."""
    width = 256
    reference = _mup_reference(model_class, width)
    ref_shapes = dict(reference.named_parameters())
    torch.manual_seed(0)
    stock = getattr(transformers, model_class)(make_config(model_class, width))
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(make_config(model_class, width), base_hidden_size=BASE, model_class=model_class,
                                        zero_init_query=False, zero_init_readout=False)
    stock_params = dict(stock.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        infshape = ref_shapes[name].infshape
        factor = infshape.width_mult() ** -0.5 if infshape.ninf() == 2 else 1.0
        # Same seed, same draws: μP's init is exactly the stock init times microsoft/mup's factor.
        torch.testing.assert_close(p, stock_params[name] * factor)
        checked += 1
        if infshape.ninf() == 2:
            assert p.std().item() == pytest.approx(stock_params[name].std().item() / 2, rel=1e-5)  # m = 4
    assert checked >= 8
