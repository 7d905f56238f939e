"""Optimizer groups: weight-decay modes, no-decay defaults, schedulers scale groups relatively."""
import pytest
import torch
from conftest import make_config
from transformers import get_linear_schedule_with_warmup

import hf_mup


@pytest.fixture
def model():
    return hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 256), base_hidden_size=64)


def _by_name(groups, key):
    return {n: g[key] for g in groups for n in g["param_names"]}


def test_groups_carry_multipliers_and_kinds(model):
    groups = hf_mup.mup_param_groups(model, lr=0.01)
    lr = _by_name(groups, "lr")
    kind = _by_name(groups, "mup_kind")
    assert lr["transformer.h.0.attn.c_attn.weight"] == pytest.approx(0.01 / 4)
    assert kind["transformer.h.0.attn.c_attn.weight"] == "hidden"
    assert lr["transformer.wte.weight"] == 0.01 and kind["transformer.wte.weight"] == "input"  # tied: an input tensor
    assert all(g["lr"] == pytest.approx(0.01 * g["lr_mult"]) for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("mode, hidden_wd, input_wd", [
    ("width_independent", 0.1 * 4, 0.1),  # lr·wd = η·wd for every width (microsoft/mup's MuAdamW)
    ("coupled", 0.1, 0.1),
    ("independent", 0.1 / (0.01 / 4), 0.1 / 0.01),  # lr·wd = 0.1 whatever the LR
])
def test_weight_decay_modes(model, mode, hidden_wd, input_wd):
    wd = _by_name(hf_mup.mup_param_groups(model, lr=0.01, weight_decay=0.1, weight_decay_mode=mode), "weight_decay")
    assert wd["transformer.h.0.mlp.c_fc.weight"] == pytest.approx(hidden_wd)
    assert wd["transformer.wte.weight"] == pytest.approx(input_wd)
    # No decay on biases and norm weights by default.
    assert wd["transformer.h.0.mlp.c_fc.bias"] == 0 and wd["transformer.ln_f.weight"] == 0


def test_no_decay_option(model):
    wd = _by_name(hf_mup.mup_param_groups(model, lr=0.01, weight_decay=0.1, no_decay=["wte", "wpe"]), "weight_decay")
    assert wd["transformer.wte.weight"] == 0 and wd["transformer.ln_f.weight"] > 0
    wd = _by_name(hf_mup.mup_param_groups(model, lr=0.01, weight_decay=0.1, no_decay=lambda n: True), "weight_decay")
    assert not any(wd.values())


def test_weight_decay_is_width_independent_in_torch():
    """One AdamW step with zero gradients decays each hidden weight by the same factor at every width."""
    factors = []
    for width in (128, 512):
        model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", width), base_hidden_size=64)
        opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=0.01, weight_decay=0.1))
        w = model.transformer.h[0].mlp.c_fc.weight
        before = w.detach().clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        factors.append((w.detach() / before)[before != 0].mean().item())
    assert factors[0] == pytest.approx(factors[1], abs=1e-7) == pytest.approx(1 - 0.01 * 0.1)


def test_scheduler_scales_groups_relatively(model):
    opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=0.01))
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=4, num_training_steps=10)
    for step in range(10):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["lr_mult"] * opt.param_groups[0]["lr"] / opt.param_groups[0]["lr_mult"])
        if step == 2:
            assert 0 < opt.param_groups[0]["lr"] < 0.01 * opt.param_groups[0]["lr_mult"]
        opt.step()
        sched.step()


def test_frozen_parameters_are_left_out(model):
    model.transformer.wpe.weight.requires_grad_(False)
    names = [n for g in hf_mup.mup_param_groups(model, lr=0.01) for n in g["param_names"]]
    assert "transformer.wpe.weight" not in names
