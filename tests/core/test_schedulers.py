"""Every learning-rate scheduler transformers offers keeps μP's per-group LR ratios under MuPTrainer, and absolute
floors/ends (min_lr, lr_end) are values of η, reached by each group × its lr_mult. Enumerates SchedulerType, so a
scheduler added by a future transformers fails here until hf_mup handles or refuses it."""
import math

import pytest
import torch
from conftest import make_config
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

import hf_mup
from hf_mup import MuPTrainer
from hf_mup.trainer import SCHEDULERS

ETA, STEPS = 3e-3, 40
# Each type's scheduler kwargs; an absolute floor/end of 0.1 η where the type has one (its end is checked below).
KWARGS = {
    "polynomial": {"lr_end": 0.1 * ETA},
    "cosine_with_min_lr": {"min_lr": 0.1 * ETA},
    "cosine_warmup_with_min_lr": {"min_lr": 0.1 * ETA},
    "warmup_stable_decay": {"num_decay_steps": 10, "min_lr_ratio": 0.1},
    "reduce_lr_on_plateau": {"min_lr": 0.1 * ETA, "patience": 0, "factor": 0.5},
    "greedy": {"min_lr": 0.1 * ETA, "max_lr": 2 * ETA, "patience": 0, "factor": 0.5, "reset_start": 1000},
}
FLOORED = {"polynomial", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "reduce_lr_on_plateau", "greedy"}


def test_every_scheduler_type_is_handled():
    assert {t.value for t in SchedulerType} == set(SCHEDULERS)


@pytest.mark.parametrize("name", [t.value for t in SchedulerType])
def test_scheduler_keeps_the_ratios(name, tmp_path):
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=32)
    # The README's pattern: the groups carry their LRs, so the optimizer's own default LR is torch's 1e-3, not η.
    optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=ETA))
    args = TrainingArguments(str(tmp_path), learning_rate=ETA, lr_scheduler_type=name, warmup_steps=4,
                             lr_scheduler_kwargs=KWARGS.get(name, {}), report_to=[], use_cpu=True, max_steps=STEPS,
                             eval_strategy="steps" if name in ("reduce_lr_on_plateau", "greedy") else "no")
    trainer = MuPTrainer(model=model, args=args, optimizers=(optimizer, None), eval_dataset=[{"input_ids": [1]}])
    scheduler = trainer.create_scheduler(STEPS, optimizer)
    mults = [g["lr_mult"] for g in optimizer.param_groups]
    assert len(set(mults)) >= 2  # hidden (1/4) and input/readout (1) groups: a ratio to keep
    etas = []
    for step in range(STEPS):
        optimizer.step()
        if name in ("reduce_lr_on_plateau", "greedy"):
            scheduler.step(1.0 if step < STEPS // 2 else 1.0 - step)  # a plateau, then steady improvement
        else:
            scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert [lr / m for lr, m in zip(lrs, mults)] == pytest.approx([lrs[0] / mults[0]] * len(lrs), rel=1e-9), step
        etas.append(lrs[0] / mults[0])
    if name in FLOORED:  # the floor/end is 0.1 η for every group, reached (or, for greedy, reached then left)
        assert min(etas) == pytest.approx(0.1 * ETA, rel=1e-6)
    if name == "greedy":  # after the plateau it climbs back, capped at max_lr × lr_mult
        assert etas[-1] > 0.1 * ETA and max(etas) <= 2 * ETA * (1 + 1e-9)


def test_an_unknown_scheduler_is_refused(tmp_path, monkeypatch):
    monkeypatch.delitem(SCHEDULERS, "cosine")
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 64), base_hidden_size=32)
    args = TrainingArguments(str(tmp_path), learning_rate=ETA, lr_scheduler_type="cosine", report_to=[], use_cpu=True)
    trainer = MuPTrainer(model=model, args=args)
    trainer.create_optimizer()
    with pytest.raises(hf_mup.MuPError, match="lr_scheduler_type='cosine' keeps μP's per-group"):
        trainer.create_scheduler(10)


def test_base_lr():
    model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), base_hidden_size=32)
    optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=ETA))
    assert math.isclose(hf_mup.optim.base_lr(optimizer), ETA)
    optimizer.param_groups[0]["lr"] *= 2
    with pytest.raises(hf_mup.MuPError, match="different learning rates"):
        hf_mup.optim.base_lr(optimizer)
