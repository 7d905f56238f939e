"""One place decides which μP rules an optimizer gets; unknown or unscalable ones are refused with the reason."""
import pytest
import torch
from conftest import make_config
from transformers import TrainingArguments
from transformers.optimization import Adafactor

import hf_mup
from hf_mup import MuPTrainer
from hf_mup.rules import optimizer_family


def _model():
    torch.manual_seed(0)
    return hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=64)


@pytest.mark.parametrize("optimizer, family", [
    (torch.optim.AdamW, "adamw"), (torch.optim.Adam, "adamw"), (torch.optim.Adamax, "adamw"),
    (torch.optim.NAdam, "adamw"), (torch.optim.RMSprop, "adamw"), (torch.optim.Adagrad, "adamw"),
    (torch.optim.SGD, "sgd"), ("adamw_torch_fused", "adamw"), ("paged_adamw_8bit", "adamw"), ("sgd", "sgd"),
    ("adam", "adamw"), ("lion_32bit", "adamw"), ("paged_lion_8bit", "adamw"), (hf_mup.Lion, "adamw"),
])
def test_families(optimizer, family):
    assert optimizer_family(optimizer) == family


def test_subclass_of_a_known_optimizer():
    class MyAdamW(torch.optim.AdamW):
        pass

    assert optimizer_family(MyAdamW) == "adamw"


@pytest.mark.parametrize("optimizer, reason", [
    (Adafactor, "relative step size"), ("adafactor", "relative step size"),
    ("schedule_free_adamw", "schedule-free"), ("galore_adamw", "GaLore"), (torch.optim.LBFGS, "neither known one"),
])
def test_refused_with_the_reason(optimizer, reason):
    with pytest.raises(hf_mup.MuPError, match=reason):
        optimizer_family(optimizer)


def test_trainer_refuses_adafactor_given_as_a_class(tmp_path):
    args = TrainingArguments(str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    trainer = MuPTrainer(model=_model(), args=args, train_dataset=[],
                         optimizer_cls_and_kwargs=(Adafactor, {"lr": 1e-3, "relative_step": False}))
    with pytest.raises(hf_mup.MuPError, match="Adafactor's relative step"):
        trainer.create_optimizer()


def test_trainer_accepts_adamax_with_adam_rules(tmp_path):
    args = TrainingArguments(str(tmp_path), max_steps=1, report_to=[], use_cpu=True, learning_rate=1e-2)
    trainer = MuPTrainer(model=_model(), args=args, train_dataset=[],
                         optimizer_cls_and_kwargs=(torch.optim.Adamax, {"lr": 1e-2}))
    opt = trainer.create_optimizer()
    assert isinstance(opt, torch.optim.Adamax)
    assert {(g["mup_kind"], g["lr_mult"]) for g in opt.param_groups} >= {("hidden", 0.5), ("input", 1.0)}


def test_plateau_min_lr_keeps_mup_ratios(tmp_path):
    args = TrainingArguments(str(tmp_path), max_steps=10, report_to=[], use_cpu=True, learning_rate=1e-2,
                             lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="steps",
                             lr_scheduler_kwargs={"min_lr": 1e-3, "factor": 0.1, "patience": 0})
    trainer = MuPTrainer(model=_model(), args=args, train_dataset=[], eval_dataset=[])
    trainer.create_optimizer_and_scheduler(10)
    sched = trainer.lr_scheduler
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for _ in range(4):
        sched.step(1.0)  # no improvement: decays to the floors
    groups = trainer.optimizer.param_groups
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_mult"])  # each group's floor is min_lr × its lr_mult
    assert len({g["lr"] / g["lr_mult"] for g in groups}) == 1  # μP's ratios intact


def test_check_optimizer_names_left_out_tensors():
    model = _model()
    groups = [g for g in hf_mup.mup_param_groups(model, lr=1e-3) if g["mup_kind"] != "hidden"]
    with pytest.raises(hf_mup.MuPError, match=r"in no optimizer group, e.g. \['transformer.h.0"):
        hf_mup.check_optimizer(model, torch.optim.AdamW(groups))


def test_independent_weight_decay_warns_on_a_coupled_value():
    with pytest.warns(UserWarning, match=r"removes weight_decay=0.1 of every weight per step \(10%\)"):
        hf_mup.mup_param_groups(_model(), lr=1e-3, weight_decay=0.1, weight_decay_mode="independent")
