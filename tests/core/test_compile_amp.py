"""torch.compile, gradient accumulation and bf16 autocast on μP models."""
import pytest
import torch
from conftest import make_config
from test_trainer import _args, _dataset, _losses, _model

import hf_mup
from hf_mup import MuPTrainer


@pytest.mark.slow
def test_compile_same_logits_and_grads(tokens):
    model = _model(output_mult=4.0, input_mult=2.0, attn_mult=1.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    compiled = torch.compile(model)  # inductor: the μP hooks and attention scale are traced into the graph
    eager_out = model(tokens, labels=tokens)
    compiled_out = compiled(tokens, labels=tokens)
    torch.testing.assert_close(compiled_out.logits, eager_out.logits, rtol=1e-4, atol=1e-5)
    # The compiled module still is a μP model to hf_mup (groups, checks).
    opt = torch.optim.AdamW(hf_mup.mup_param_groups(compiled, lr=1e-3))
    hf_mup.check_optimizer(compiled, opt)
    assert hf_mup.get_plan(compiled) is hf_mup.get_plan(model)


@pytest.mark.slow
def test_gradient_accumulation_equals_larger_batch(tmp_path):
    big = MuPTrainer(model=_model(), args=_args(tmp_path / "big", per_device_train_batch_size=8, max_steps=4),
                     train_dataset=_dataset())
    big.train()
    accumulated = MuPTrainer(model=_model(), args=_args(tmp_path / "acc", per_device_train_batch_size=4,
                                                        gradient_accumulation_steps=2, max_steps=4),
                             train_dataset=_dataset())
    accumulated.train()
    assert _losses(accumulated) == pytest.approx(_losses(big), abs=1e-5)
    for name, p in accumulated.model.named_parameters():
        torch.testing.assert_close(p, big.model.get_parameter(name), rtol=1e-4, atol=1e-5)


def test_bf16_autocast(tokens):
    model = _model(output_mult=4.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    fp32 = model(tokens).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(tokens).logits
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=5e-2, atol=5e-2)


@pytest.mark.slow
def test_bf16_trainer_and_bf16_weights(tmp_path):
    trainer = MuPTrainer(model=_model(), args=_args(tmp_path, bf16=True, max_steps=3), train_dataset=_dataset())
    trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v in _losses(trainer).values())
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    opt = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3))
    x = torch.randint(1, 128, (2, 16))
    loss = model(x, labels=x).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
