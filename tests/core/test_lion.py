"""hf_mup.Lion: matches lion-pytorch, gets μP's Adam-like rule (hidden weights η/m), and works with MuPTrainer."""
import copy
import importlib.util

import pytest
import torch
from conftest import gpt2_config
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

import hf_mup
from hf_mup import Lion, MuPTrainer
from hf_mup.rules import optimizer_family

WIDTH, BASE = 128, 64  # m = 2
HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LION_OPTIMS = ("lion_8bit", "lion_32bit", "paged_lion_8bit", "paged_lion_32bit")


def _model(width=WIDTH):
    torch.manual_seed(0)
    return hf_mup.MuPModel.from_config(gpt2_config(width), base_hidden_size=BASE)


def _batch(seed=0):
    x = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": x, "labels": x}


def _train(model, opt, steps):
    for step in range(steps):
        opt.zero_grad()
        model(**_batch(step)).loss.backward()
        opt.step()


def test_matches_lion_pytorch_with_groups_and_weight_decay():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    model = _model()
    reference = copy.deepcopy(model)
    groups = lambda m: hf_mup.mup_param_groups(m, lr=3e-3, weight_decay=0.5, optimizer="lion")  # noqa: E731
    opt, ref_opt = Lion(groups(model), betas=(0.9, 0.95)), lion_pytorch.Lion(groups(reference), betas=(0.9, 0.95))
    assert len({(g["lr"], g["weight_decay"]) for g in opt.param_groups}) >= 3  # several LRs and decays
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, 5)
    _train(reference, ref_opt, 5)
    ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=0, atol=1e-6)
        assert not torch.equal(p, before[name]), name  # every tensor trained
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref_opt.state[ref[name]]["exp_avg"], rtol=0, atol=1e-6)


def test_defaults_and_closure():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = Lion([p])
    assert opt.defaults == {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}

    def closure():
        opt.zero_grad()
        loss = (p * torch.tensor([1.0, -1.0, 0.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(3.0)
    # sign(g) = (1, -1, 0): the first two move by lr against the gradient, the third (no gradient) stays.
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 1e-4, -2.0 + 1e-4, 3.0]))
    with pytest.raises(ValueError, match="betas"):
        Lion([p], betas=(0.9, 1.5))


def _lion_classes():
    classes = [Lion]
    if importlib.util.find_spec("lion_pytorch"):
        import lion_pytorch

        classes.append(lion_pytorch.Lion)

    class MyLion(Lion):
        pass

    return classes + [MyLion]


@pytest.mark.parametrize("optimizer", _lion_classes() + list(LION_OPTIMS) + ["lion", OptimizerNames.LION],
                         ids=lambda o: getattr(o, "__qualname__", str(o)))
def test_lion_is_adam_like(optimizer):
    assert optimizer_family(optimizer) == "adamw"


def test_every_trainingarguments_lion_name_is_known():
    names = {o.value for o in OptimizerNames if "lion" in o.value}
    assert names == set(LION_OPTIMS)  # transformers' current names: a new one should be added to hf_mup.rules
    assert all(optimizer_family(n) == "adamw" for n in names)


def test_groups_have_the_adam_like_per_tensor_lrs():
    model = _model()
    lr = 3e-4
    opt = Lion(hf_mup.mup_param_groups(model, lr=lr, weight_decay=0.1, optimizer=Lion))
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert {g["mup_optimizer"] for g in opt.param_groups} == {"adamw"}
    for name, value in lrs.items():
        hidden = name.endswith(HIDDEN)
        assert value == pytest.approx(lr / 2 if hidden else lr), name  # hidden η/m, input/readout/scalar η
    assert lrs["transformer.wte.weight"] == lr
    hf_mup.check_optimizer(model, opt)
    # The same groups as AdamW's: Lion's update is entrywise normalised, like Adam's.
    adam = hf_mup.mup_param_groups(model, lr=lr, weight_decay=0.1)
    assert [(g["lr"], g["weight_decay"]) for g in adam] == [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    with pytest.raises(hf_mup.MuPError, match="no μP parameter groups"):
        hf_mup.check_optimizer(model, Lion(model.parameters(), lr=lr))
    with pytest.raises(hf_mup.MuPError, match=r"made for 'sgd' but the optimizer is Lion"):
        hf_mup.check_optimizer(model, Lion(hf_mup.mup_param_groups(model, lr=lr, optimizer="sgd")))


def _trainer_args(tmp_path, **kw):
    return TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                             lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, weight_decay=0.1, **kw)


def _dataset():
    x = torch.randint(1, 128, (12, 16), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": r, "labels": r} for r in x]


@pytest.mark.slow
def test_trainer_with_lion(tmp_path):
    # Given as optimizer_cls_and_kwargs: MuPTrainer builds the μP groups for Lion.
    trainer = MuPTrainer(model=_model(), args=_trainer_args(tmp_path), train_dataset=_dataset(),
                         optimizer_cls_and_kwargs=(Lion, {"betas": (0.9, 0.99)}))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      Lion)
    mults = {(g["mup_kind"], g["lr_mult"]) for g in trainer.optimizer.param_groups}
    assert ("hidden", 0.5) in mults and ("input", 1.0) in mults
    hidden = next(g for g in trainer.optimizer.param_groups if g["mup_kind"] == "hidden" and g["weight_decay"] > 0)
    assert hidden["weight_decay"] == pytest.approx(0.1 / 0.5)  # width-independent lr·wd
    # Given as a built optimizer: accepted with μP groups, refused without.
    model = _model()
    trainer = MuPTrainer(model=model, args=_trainer_args(tmp_path), train_dataset=_dataset(),
                         optimizers=(Lion(hf_mup.mup_param_groups(model, lr=1e-3, optimizer="lion")), None))
    trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(hf_mup.MuPError, match="no μP parameter groups"):
        MuPTrainer(model=model, args=_trainer_args(tmp_path), train_dataset=_dataset(),
                   optimizers=(Lion(model.parameters(), lr=1e-3), None))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_trainer_optim_lion_passes_mup_and_needs_bitsandbytes(tmp_path):
    """optim='lion_32bit' gets μP's rules; transformers then needs bitsandbytes for the optimizer itself."""
    trainer = MuPTrainer(model=_model(), args=_trainer_args(tmp_path, optim="lion_32bit"), train_dataset=_dataset())
    with pytest.raises(ImportError, match="bitsandbytes"):
        trainer.create_optimizer()


@pytest.mark.parametrize("width", [128, 256])
def test_one_step_moves_every_hidden_entry_by_lr_times_lr_mult(width):
    """Lion's first update is sign(g): each hidden weight entry moves by exactly η/m (no decay), at every width.

    The exception is measured too: μP's zero-initialised query makes every attention score 0 whatever the keys, so the
    key block of c_attn has no gradient at step 1, and sign(0) = 0 leaves it in place.
    """
    model = _model(width).double()
    lr = 1e-2
    opt = Lion(hf_mup.mup_param_groups(model, lr=lr, optimizer="lion"))
    hidden = {n: p for n, p in model.named_parameters() if n.endswith(HIDDEN)}
    assert len(hidden) == 4 * 2
    before = {n: p.detach().clone() for n, p in hidden.items()}
    _train(model, opt, 1)
    m = width / BASE
    for name, p in hidden.items():
        change = (p.detach() - before[name]).abs()
        moved = p.grad != 0
        if name.endswith("c_attn.weight"):  # Conv1D (in, 3·width): query | key | value columns
            assert not moved[:, width:2 * width].any() and moved[:, :width].all() and moved[:, 2 * width:].all()
            assert not change[:, width:2 * width].any()
        else:
            assert moved.all(), name
        torch.testing.assert_close(change[moved], torch.full_like(change[moved], lr / m), rtol=1e-9, atol=0)
