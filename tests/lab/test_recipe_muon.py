"""The lab's Muon (Recipe(optimizer="muon" / "muon_torch")): μP's Muon groups, the ablation without μP's factor, SP's
split by shape, and a short run that trains."""
import pytest
import torch

import hf_mup
from hf_mup.lab.lm import train_lm
from hf_mup.lab.recipe import Recipe


def _recipe(**kw):
    return Recipe(**{"arch": "gpt2", "width": 256, "layers": 2, "head_dim": 16, "seq_len": 16, "vocab_size": 128,
                     "base_width": 64, "lr": 0.01, "weight_decay": 0.1, "steps": 8, "batch_size": 4, **kw})


def test_muon_groups_and_the_ablation():
    recipe = _recipe(optimizer="muon")
    model = recipe.build_model()
    opt = recipe.build_optimizer(model)
    assert isinstance(opt, hf_mup.MuonAdamW) and opt.defaults["ns_dtype"] == torch.float32  # (CPU)
    hf_mup.check_optimizer(model, opt)
    muon = [g for g in opt.param_groups if g["use_muon"]]
    assert [g["lr_mult"] for g in muon] == pytest.approx([0.5] * len(muon))  # match_rms_adamw's 1/√m, m = 4
    ablation = _recipe(optimizer="muon_torch").build_optimizer(model)
    raw = [g for g in ablation.param_groups if g["use_muon"]]
    assert all(g["lr"] == 0.01 and g["mup_unchecked"] for g in raw)
    assert {g["weight_decay"] for g in raw} == {0.1}
    # Adam's groups are μP's in both
    adam = lambda o: [(g["lr"], g["weight_decay"]) for g in o.param_groups if not g["use_muon"]]  # noqa: E731
    assert adam(opt) == adam(ablation)


def test_sp_muon_takes_the_hidden_matrices_and_trains():
    recipe = _recipe(optimizer="muon", parametrization="sp", base_width=None)
    model = recipe.build_model()
    opt = recipe.build_optimizer(model)
    by_muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in by_muon}
    assert names == {n for n, p in model.named_parameters() if p.ndim == 2 and ".h." in n}  # not wte/wpe (tied head)
    # counting sequences (each token the last + 1): learnable in a few steps, from ln 128 = 4.85 at μP's zero readout
    start = torch.randint(0, 128, (64, 1), generator=torch.Generator().manual_seed(0))
    blocks = (start + torch.arange(16)) % 128
    for r in (recipe, _recipe(optimizer="muon")):
        result = train_lm(r.build_model(), r, blocks, blocks[:8])
        assert result["final_val_loss"] < 4.0, r.parametrization
