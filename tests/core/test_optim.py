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


# ------------------------------------------------------------------------------------------------------ Adam's ε


def test_eps_scales_with_width_on_every_tensor_with_a_width_dimension():
    """ε/m_N (m_N = 256/64 = 4) on hidden, input and readout tensors; a scalar tensor (the classifier's bias, no
    width dimension) keeps ε; eps_width_scaling=False is microsoft/mup's fixed ε (no per-group ε at all)."""
    config = make_config("GPT2ForSequenceClassification", 256)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class="GPT2ForSequenceClassification")
    groups = hf_mup.mup_param_groups(model, lr=1e-3, eps=1e-6)
    eps, kind = _by_name(groups, "eps"), _by_name(groups, "mup_kind")
    assert {kind[n] for n in eps} == {"hidden", "input", "readout"}  # GPT-2's score has no bias: nothing scalar
    assert all(e == pytest.approx(1e-6 / 4) for e in eps.values())
    qwen3 = hf_mup.MuPModel.from_config(make_config("Qwen3ForCausalLM", 256), base_hidden_size=64)
    eps, kind = (_by_name(hf_mup.mup_param_groups(qwen3, lr=1e-3), k) for k in ("eps", "mup_kind"))
    assert {n for n in eps if kind[n] == "scalar"} and all(  # Qwen3's per-head q/k norms: head-size vectors
        e == pytest.approx(1e-8 if kind[n] == "scalar" else 1e-8 / 4) for n, e in eps.items())
    fixed = hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class="GPT2ForSequenceClassification",
                                        eps_width_scaling=False)
    assert not any("eps" in g for g in hf_mup.mup_param_groups(fixed, lr=1e-3))
    assert all("eps" not in g for g in hf_mup.mup_param_groups(model, lr=1e-3, optimizer="sgd"))


def test_eps_width_scaling_round_trips_through_a_checkpoint(tmp_path):
    model = hf_mup.MuPModel.from_config(make_config("LlamaForCausalLM", 128), base_hidden_size=64,
                                        eps_width_scaling=False)
    model.save_pretrained(tmp_path)
    assert hf_mup.MuPModel.from_pretrained(tmp_path).config.mup["eps_width_scaling"] is False


def _step(model, optimizer):
    ids = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_an_optimizer_eps_that_the_groups_override_is_refused_at_the_first_step():
    """Depth scaling on, AdamW(groups, eps=1e-6) used to train with the groups' 1e-8-based ε silently.
    Refused before the update; `mup_optimizer` builds both from one ε."""
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64, base_num_layers=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3), lr=1e-3, eps=1e-6)
    with pytest.raises(hf_mup.MuPError, match=r"ε = 1e-08.*optimizer's eps is 1e-06.*mup_optimizer"):
        _step(model, optimizer)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing was trained
    optimizer = hf_mup.mup_optimizer(model, torch.optim.AdamW, lr=1e-3, eps=1e-6, betas=(0.9, 0.95))
    _step(model, optimizer)
    in_block = _by_name(optimizer.param_groups, "eps")["transformer.h.0.mlp.c_fc.weight"]
    assert in_block == pytest.approx(1e-6 / 2 / 2)  # 1/m_N (128/64) × m_L^-1 (2 layers over 1)
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.9, 0.95)


def test_a_stock_trainer_is_refused_at_its_first_step(tmp_path):
    """transformers.Trainer builds one LR for every tensor: the first step raises, naming MuPTrainer."""
    import transformers

    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1, 100, (8, 8), generator=torch.Generator().manual_seed(0))
    args = transformers.TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                                          use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    with pytest.raises(hf_mup.MuPError, match=r"no μP parameter groups.*use hf_mup.MuPTrainer"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_first_step_check_passes_mup_groups_and_deliberate_ablations():
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64)
    _step(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3)))  # the README's pattern
    # Another optimizer training some tensors only (the rest elsewhere) is not refused for what it leaves out.
    hidden = [g for g in hf_mup.mup_param_groups(model, lr=1e-3) if g["mup_kind"] == "hidden"]
    _step(model, torch.optim.AdamW(hidden))
    _step(model, torch.optim.AdamW([{"params": list(model.parameters()), "mup_unchecked": True}]))
    stock = hf_mup.fold(model)  # a folded model is stock: any optimizer
    _step(stock, torch.optim.AdamW(stock.parameters()))
