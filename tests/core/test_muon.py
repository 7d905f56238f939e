"""Muon in μP (hf_mup.MuonAdamW, mup_param_groups(optimizer="muon")): the update of each hidden matrix has the same
spectral norm at every width under μP's Muon factor and grows as √m without it; MuonAdamW is torch's Muon and AdamW;
check_optimizer refuses what would train with the wrong LRs; the Trainer trains and resumes exactly."""
import copy

import pytest
import torch
from conftest import StopAfter, gpt2_config, llama_like_config
from transformers import TrainingArguments

import hf_mup
from hf_mup import MuonAdamW, MuPError, MuPTrainer
from hf_mup.rules import optimizer_family

BASE = 64
HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _model(width=128, **mup):
    torch.manual_seed(0)
    return hf_mup.MuPModel.from_config(gpt2_config(width), base_hidden_size=BASE, **mup)


def _batch(seed=0):
    x = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": x, "labels": x}


def _train(model, optimizers, steps):
    for step in range(steps):
        for opt in optimizers:
            opt.zero_grad()
        model(**_batch(step)).loss.backward()
        for opt in optimizers:
            opt.step()


def _update_norms(width, adjust, rule=True):
    """The spectral norm of the first update of each hidden matrix of block 0, at LR 0.01 (no decay)."""
    model = _model(width)
    groups = hf_mup.mup_param_groups(model, lr=0.01, optimizer="muon", adjust_lr_fn=adjust)
    if not rule:  # Muon as torch scales it, without μP's factor: every Muon group at the plain LR
        for g in groups:
            if g["use_muon"]:
                g.update(lr=0.01, lr_mult=1.0, mup_unchecked=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, [MuonAdamW(groups, ns_dtype=torch.float32)], 1)
    return {n: torch.linalg.matrix_norm(p.detach() - before[n], ord=2).item()
            for n, p in model.named_parameters() if n.startswith("transformer.h.0.") and n.endswith(HIDDEN)}


@pytest.mark.slow
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_update_spectral_norm_is_flat_across_width_under_the_rule(adjust):
    widths = (64, 128, 256)
    ruled = {w: _update_norms(w, adjust) for w in widths}
    for name in ruled[64]:
        norms = [ruled[w][name] for w in widths]
        assert max(norms) / min(norms) < 1.15, (name, norms)  # Newton-Schulz's singular values vary a little
    raw = {w: _update_norms(w, adjust, rule=False) for w in (64, 256)}
    for name in raw[64]:
        growth = raw[256][name] / raw[64][name]
        if adjust == "match_rms_adamw":  # 0.2·√max(A, B): the update grows as √m without the rule
            assert growth == pytest.approx(2.0, rel=0.15), name
        else:  # "original" keeps a hidden matrix's aspect ratio: no width dependence to undo
            assert growth == pytest.approx(1.0, rel=0.15), name


def test_groups_factors_and_decay():
    model = _model(256)  # m = 4
    groups = hf_mup.mup_param_groups(model, lr=0.02, weight_decay=0.1, optimizer="muon")
    muon = [g for g in groups if g["use_muon"]]
    assert {n.split(".", 3)[-1] for g in muon for n in g["param_names"]} == set(HIDDEN)
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" and g["mup_optimizer"] == "muon" for g in groups if g["use_muon"])
    assert [g["lr_mult"] for g in muon] == pytest.approx([0.5] * len(muon))  # 1/√m
    for g in muon:  # width-independent lr·wd: the decay per step is η·λ at every width
        assert g["lr"] * g["weight_decay"] == pytest.approx(0.02 * 0.1) or g["weight_decay"] == 0
        assert "eps" not in g  # (torch.optim.Muon's eps is Newton-Schulz's: Adam's ε is not its business)
    adam = {n: g for g in groups if not g["use_muon"] for n in g["param_names"]}
    assert adam["transformer.wte.weight"]["lr_mult"] == 1.0
    assert adam["transformer.wte.weight"]["eps"] == pytest.approx(1e-8 / 4)  # μP's ε/m on Adam's tensors
    original = hf_mup.mup_param_groups(model, lr=0.02, optimizer="muon", adjust_lr_fn="original")
    assert {g["lr_mult"] for g in original if g["use_muon"]} == {1.0}


def test_factor_with_fixed_key_value_heads_and_depth():
    # Multi-query attention: k/v keep one head at every width (fan-out fixed): the spectral condition's √(fan-out/
    # fan-in) falls as 1/√m; "original" adjusts the wide (16 × m) matrix by 1 at every width, "match_rms_adamw" by
    # 0.2·√m, which the factor also undoes (1/√m more).
    config = llama_like_config("llama")(256, num_key_value_heads=1)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=BASE)
    for adjust, expected in (("original", 0.5), ("match_rms_adamw", 0.25)):
        groups = hf_mup.mup_param_groups(model, lr=1.0, optimizer="muon", adjust_lr_fn=adjust)
        lrs = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
        assert lrs["model.layers.0.self_attn.k_proj.weight"] == pytest.approx(expected), adjust
    # CompleteP: in-block matrices × m_L^(α-1), as for Adam (both updates are normalised)
    deep = hf_mup.MuPModel.from_config(gpt2_config(128, n_layer=4), base_hidden_size=BASE, base_num_layers=2,
                                       depth_alpha=0.5)
    groups = hf_mup.mup_param_groups(deep, lr=1.0, optimizer="muon", adjust_lr_fn="original")
    lrs = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
    assert lrs["transformer.h.0.mlp.c_fc.weight"] == pytest.approx(2**-0.5)


def test_matches_torch_muon_and_adamw_split():
    model = _model()
    reference = copy.deepcopy(model)
    opt = hf_mup.mup_optimizer(model, MuonAdamW, lr=0.01, weight_decay=0.1, betas=(0.9, 0.95))
    assert len({(g["lr"], g["weight_decay"], g["use_muon"]) for g in opt.param_groups}) == 3  # Muon; Adam ± decay
    groups = hf_mup.mup_param_groups(reference, lr=0.01, weight_decay=0.1, optimizer="muon")
    # the other door: torch's own Muon for the Muon groups, torch's AdamW for the rest; checked at their first step
    muon = torch.optim.Muon([g for g in groups if g["use_muon"]])
    adamw = torch.optim.AdamW([g for g in groups if not g["use_muon"]], betas=(0.9, 0.95))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, [opt], 4)
    _train(reference, [muon, adamw], 4)
    ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=0, atol=0)
        assert not torch.equal(p, before[name]) or name.endswith("c_attn.bias"), name  # every tensor trained
    state = opt.state_dict()
    assert {k for s in state["state"].values() for k in s} == {"momentum_buffer", "step", "exp_avg", "exp_avg_sq"}


def test_check_optimizer_refuses_what_breaks_muon():
    model = _model()
    hidden = [p for n, p in model.named_parameters() if n.endswith(HIDDEN)]
    with pytest.raises(MuPError, match=r"no μP parameter groups.*hf_mup.MuonAdamW"):
        hf_mup.check_optimizer(model, torch.optim.Muon(hidden), require_all=False)
    groups = hf_mup.mup_param_groups(model, lr=0.01, optimizer="muon")
    muon = next(g for g in groups if g["use_muon"])
    tampered = [dict(g) for g in groups]
    next(g for g in tampered if g["use_muon"])["lr_mult"] = 1.0  # the factor dropped: √m too large an update
    with pytest.raises(MuPError, match=r"lr_mult 1, but μP needs 0.707107 for Muon with adjust_lr_fn='match_rms_adamw'"):
        hf_mup.check_optimizer(model, MuonAdamW(tampered))
    # the groups say which adjustment they were built for: a Muon told another one refuses
    other = [dict(g, adjust_lr_fn="original") if g["use_muon"] else g for g in groups]
    with pytest.raises(MuPError, match="for Muon with adjust_lr_fn='original'"):
        hf_mup.check_optimizer(model, MuonAdamW(other))
    wpe = model.transformer.wpe.weight
    embedding = [dict(g, params=[p for p in g["params"] if p is not wpe]) for g in groups]
    embedding.append(dict(muon, params=[wpe], lr_mult=1.0))  # an embedding table is 2-D: Muon would take it
    with pytest.raises(MuPError, match=r"'transformer.wpe.weight'.*updated by Muon, which μP reserves for hidden"):
        hf_mup.check_optimizer(model, MuonAdamW(embedding, adjust_lr_fn="match_rms_adamw"))
    with pytest.raises(MuPError, match="adjust_lr_fn='rms': use 'original' or 'match_rms_adamw'"):
        hf_mup.mup_param_groups(model, lr=0.01, optimizer="muon", adjust_lr_fn="rms")
    with pytest.raises(MuPError, match="adjust_lr_fn='original' is Muon's"):
        hf_mup.mup_param_groups(model, lr=0.01, adjust_lr_fn="original")
    with pytest.raises(ValueError, match="Muon updates 2-D tensors only"):
        MuonAdamW([dict(muon, params=[model.transformer.ln_f.weight])])
    # Adam groups of a Muon plan are right in AdamW (the split), and a Muon plan is refused by plain Adam rules
    hf_mup.check_optimizer(model, torch.optim.AdamW([g for g in groups if not g["use_muon"]]), require_all=False)
    with pytest.raises(MuPError, match="made for 'muon' but the optimizer is AdamW"):
        hf_mup.check_optimizer(model, torch.optim.AdamW([g for g in groups if g["use_muon"]]), require_all=False)


def test_torch_muon_holding_an_adam_group_and_unknown_or_flattened_muons_are_refused():
    model = _model(**{"eps_width_scaling": False})
    groups = hf_mup.mup_param_groups(model, lr=0.01, optimizer="muon")
    wpe = model.transformer.wpe.weight
    embedding = dict(next(g for g in groups if "transformer.wpe.weight" in g["param_names"]), params=[wpe],
                     param_names=["transformer.wpe.weight"])
    with pytest.raises(MuPError, match="'transformer.wpe.weight'.*updated by Muon"):  # torch's Muon updates all it holds
        hf_mup.check_optimizer(model, torch.optim.Muon([embedding, *(g for g in groups if g["use_muon"])]),
                               require_all=False)

    class Muon(torch.optim.SGD):  # a third-party Muon: its LR scaling is unknown to hf_mup
        pass

    with pytest.raises(MuPError, match="a Muon hf_mup does not know: give adjust_lr_fn"):
        hf_mup.mup_param_groups(model, lr=0.01, optimizer=Muon)
    assert hf_mup.mup_param_groups(model, lr=0.01, optimizer=Muon, adjust_lr_fn="original")
    # torch's Muon scales "original" by default: its groups are built for that
    torch_groups = hf_mup.mup_param_groups(model, lr=0.01, optimizer=torch.optim.Muon)
    assert {g["adjust_lr_fn"] for g in torch_groups if g["use_muon"]} == {"original"}
    flat = _model()
    for name in ("transformer.h.0.mlp.c_fc.weight",):  # as FSDP1 (use_orig_params) and ZeRO show a matrix: 1-D
        module = flat.get_submodule(name.rsplit(".", 1)[0])
        module.weight = torch.nn.Parameter(module.weight.detach().flatten())
    with pytest.raises(MuPError, match="hidden matrix seen as a 1-D tensor.*use DDP or FSDP2"):
        hf_mup.mup_param_groups(flat, lr=0.01, optimizer="muon")
    with pytest.raises(ValueError, match="maximize"):
        MuonAdamW([dict(g, maximize=True) for g in groups])


def test_refused_under_deepspeed_zero():
    model = _model()
    zero = type("DeepSpeedZeroOptimizer", (), {"__module__": "deepspeed.runtime.zero.stage_1_and_2"})()
    zero.optimizer = hf_mup.mup_optimizer(model, MuonAdamW, lr=0.01)  # (ZeRO keeps the client optimizer's group keys)
    zero.param_groups = zero.optimizer.param_groups
    accelerated = type("AcceleratedOptimizer", (), {})()  # accelerate's wrapper around DeepSpeed's
    accelerated.optimizer = zero
    with pytest.raises(MuPError, match="ZeRO flattens the parameters into 1-D partitions"):
        hf_mup.check_optimizer(model, accelerated)


def test_float32_newton_schulz_is_torchs_iteration():
    from hf_mup.muon import newton_schulz

    torch.manual_seed(0)
    g = torch.randn(96, 32)
    coefficients = (3.4445, -4.7750, 2.0315)
    bf16 = torch.optim._muon._zeropower_via_newtonschulz(g, coefficients, 5, 1e-7)
    torch.testing.assert_close(newton_schulz(g, coefficients, 5, 1e-7, torch.bfloat16), bf16.float(), rtol=0, atol=0)
    f32 = newton_schulz(g, coefficients, 5, 1e-7, torch.float32)
    f64 = newton_schulz(g.double(), coefficients, 5, 1e-7, torch.float64)
    assert ((f32 - f64).norm() / f64.norm()).item() < 1e-5  # float32 is exact to its precision
    assert ((bf16.float() - f32).norm() / f32.norm()).item() < 0.2  # bfloat16's rounding, through 5 iterations
    singular = torch.linalg.svdvals(f32)
    assert 0.6 < singular.min() and singular.max() < 1.25  # orthogonalised: Muon's quintic leaves them near 1
    model, reference, before = _model(), _model(), _model()
    _train(model, [hf_mup.mup_optimizer(model, MuonAdamW, lr=0.01, ns_dtype=torch.float32)], 1)
    _train(reference, [hf_mup.mup_optimizer(reference, MuonAdamW, lr=0.01)], 1)
    for (name, p), q, p0 in zip(model.named_parameters(), reference.parameters(), before.parameters()):
        if name.endswith(HIDDEN):  # the first Muon update, in float32 and in torch's bfloat16
            assert ((p - q).norm() / (q - p0).norm()).item() < 0.2, name
        else:  # Adam's: the same gradients, so the same update
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("name", ["muon", MuonAdamW, torch.optim.Muon])
def test_family(name):
    assert optimizer_family(name) == "muon"


def _dataset():
    x = torch.randint(1, 128, (24, 16), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": r, "labels": r} for r in x]


def _trainer(tmp_path, steps, **kw):
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=steps, learning_rate=0.01,
                             lr_scheduler_type="cosine", warmup_steps=2, report_to=[], save_strategy="steps",
                             save_steps=3, use_cpu=True, disable_tqdm=True, weight_decay=0.1, seed=0, **kw)
    return MuPTrainer(model=_model(), args=args, train_dataset=_dataset(),
                      optimizer_cls_and_kwargs=(MuonAdamW, {"adjust_lr_fn": "match_rms_adamw", "momentum": 0.9}))


@pytest.mark.slow
def test_trainer_trains_with_muon_and_resumes_exactly(tmp_path):
    whole = _trainer(tmp_path / "whole", 6)
    whole.train()
    assert isinstance(whole.optimizer.optimizer, MuonAdamW)
    muon = [g for g in whole.optimizer.param_groups if g["use_muon"]]
    assert muon and all(g["lr_mult"] == pytest.approx(2**-0.5) and g["momentum"] == 0.9 for g in muon)
    cut = _trainer(tmp_path / "cut", 6)
    cut.add_callback(StopAfter(3))  # killed after step 3's checkpoint
    cut.train()
    resumed = _trainer(tmp_path / "cut", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    ref = dict(whole.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=0, atol=0, msg=name)


def test_lora_adapters_train_by_adams_rules_beside_muon():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(256), peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"],
                                                            fan_in_fan_out=True, task_type="CAUSAL_LM"))
    opt = hf_mup.mup_optimizer(model, MuonAdamW, lr=0.01)
    groups = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert groups and not any(g["use_muon"] for g in groups.values())  # the frozen matrices: no Muon group
    lora_a = next(n for n in groups if "lora_A" in n)
    assert groups[lora_a]["lr_mult"] == pytest.approx(0.25) and groups[lora_a]["mup_adapter"] == "mup"  # A: η/m
    _train(model, [opt], 1)


def test_bfloat16_momentum_without_nesterov_is_not_normalised_in_place():
    # torch's Newton-Schulz normalises its bfloat16 copy in place: for bfloat16 parameters without Nesterov that
    # copy is the momentum buffer itself. MuonAdamW's iteration works out of place.
    p = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16))
    p.grad = torch.randn(8, 4, dtype=torch.bfloat16)
    opt = MuonAdamW([{"params": [p], "use_muon": True}], lr=0.01, nesterov=False, momentum=0.95)
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], 0.05 * p.grad)


def test_import_hf_mup_does_not_need_torchs_muon():
    import subprocess
    import sys

    code = "import sys, hf_mup; assert 'hf_mup.muon' not in sys.modules; hf_mup.MuonAdamW"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
