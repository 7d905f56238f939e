"""Depth scaling (CompleteP, `MuPConfig.base_num_layers`): the rules against a reference written from the paper's
Table 1, the residual multiplier against an explicit computation, the base-depth invariant, fold / save / load,
ε through the Trainer, transfer across depth, and a coordinate check across depth."""
import copy
import math
import re

import pytest
import torch
from conftest import CONFIGS
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, GPT2LMHeadModel, TrainingArguments

import hf_mup
from hf_mup import MuPError
from hf_mup.lab.coord_check import depth_check, depth_slopes

ETA, EPS, WD = 1e-3, 1e-8, 0.1


def paper_reference(name: str, arch: str, m_n: float, m_l: float, alpha: float, eps_width: bool = True) -> dict:
    """What CompleteP's Table 1 (Dey et al. 2025, arXiv 2505.01618; α column) gives a tensor, by hand from its name:
    Adam LR, Adam ε (× m_N^-1 everywhere, as its reference code scales the one global ε, unless `eps_width` is off;
    × m_L^-α in the blocks) and AdamW weight decay (hidden weights λ·m_N, no depth factor; none on biases and norms),
    and the SGD LR (the reference code's toy-model rule, m_L^(2α-1), on top of μP's SGD rule: η for hidden weights,
    whose fan-in and fan-out both grow m_N×, η·m_N for vectors and the readout), for η = ETA, ε = EPS, λ = WD."""
    eps = EPS / m_n if eps_width else EPS
    in_block = re.search({"gpt2": r"\.h\.\d+\.", "llama": r"\.layers\.\d+\."}[arch], "." + name) is not None
    vector = name.endswith("bias") or re.search(r"(ln_\d|ln_f|layernorm|norm)\.weight$", name) is not None
    if not in_block:  # embeddings, final norm, unembedding: no depth factor anywhere
        return {"adam_lr": ETA, "eps": eps, "wd": 0.0 if vector else WD, "sgd_lr": ETA * m_n}
    if vector:  # in-block biases and norm gains ("hidden bias", "pre-LN" rows)
        return {"adam_lr": ETA * m_l ** (alpha - 1), "eps": eps * m_l**-alpha, "wd": 0.0,
                "sgd_lr": ETA * m_n * m_l ** (2 * alpha - 1)}
    return {"adam_lr": ETA / m_n * m_l ** (alpha - 1), "eps": eps * m_l**-alpha, "wd": WD * m_n,  # "hidden" rows
            "sgd_lr": ETA * m_l ** (2 * alpha - 1)}


def _config(arch, width, layers):
    return CONFIGS[arch](width, **({"n_layer": layers} if arch == "gpt2" else {"num_hidden_layers": layers}))


def _model(arch, width=64, layers=8, base_width=32, base_layers=2, alpha=1.0, **kw):
    config = _config(arch, width, layers)
    return hf_mup.MuPModel.from_config(config, base_hidden_size=base_width, base_num_layers=base_layers,
                                       depth_alpha=alpha, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("alpha, eps_width", [(1.0, True), (0.5, True), (1.0, False)])
def test_groups_match_the_paper_table(arch, alpha, eps_width):
    model = _model(arch, alpha=alpha, zero_init_readout=False, eps_width_scaling=eps_width)
    m_n, m_l = 64 / 32, 8 / 2
    adam = {n: g for g in hf_mup.mup_param_groups(model, lr=ETA, weight_decay=WD, eps=EPS) for n in g["param_names"]}
    sgd = {n: g for g in hf_mup.mup_param_groups(model, lr=ETA, optimizer="sgd") for n in g["param_names"]}
    assert set(adam) == {n for n, _ in model.named_parameters()}
    for name in adam:
        ref = paper_reference(name, arch, m_n, m_l, alpha, eps_width)
        assert math.isclose(adam[name]["lr"], ref["adam_lr"], rel_tol=1e-9), (name, adam[name]["lr"], ref)
        assert math.isclose(adam[name]["eps"], ref["eps"], rel_tol=1e-9), (name, adam[name]["eps"], ref)
        assert math.isclose(adam[name]["weight_decay"], ref["wd"], rel_tol=1e-9), (name, adam[name]["weight_decay"], ref)
        assert math.isclose(sgd[name]["lr"], ref["sgd_lr"], rel_tol=1e-9), (name, sgd[name]["lr"], ref)
        assert "eps" not in sgd[name]
    assert len(adam) > 30


def test_residual_multiplier_equals_an_explicit_computation():
    """At base width (no other multiplier is active) the depth-scaled GPT-2 equals a stock GPT-2 holding the same
    weights with every block's c_proj weight and bias multiplied by (L_base / L)^α, done here by hand."""
    torch.manual_seed(0)
    model = _model("gpt2", width=64, layers=6, base_width=64, base_layers=2, alpha=0.5, zero_init_query=False)
    plan = hf_mup.get_plan(model)
    s = (2 / 6) ** 0.5
    assert plan.residual_scale == pytest.approx(s) and plan.attention_scale_factor == 1.0
    assert all(scale == 1.0 for scale in plan.readouts.values())
    stock = GPT2LMHeadModel(copy.deepcopy(model.config))
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}  # μP's own tensors (not the folded state dict)
    with torch.no_grad():
        for name, p in stock.named_parameters():
            p.copy_(raw[name] * (s if re.search(r"\.h\.\d+\.(attn|mlp)\.c_proj\.", name) else 1.0))
    ids = torch.randint(0, 128, (2, 16))
    assert torch.allclose(model(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-6)
    # and at the module: each branch's output is s × the projection's own forward
    x = torch.randn(2, 5, 256)
    proj = model.transformer.h[3].mlp.c_proj
    assert torch.allclose(proj(x), s * proj.forward(x), atol=1e-7)
    assert len(plan.residuals) == 12


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_at_base_depth_the_model_is_the_width_only_model(arch):
    config = _config(arch, 64, 3)
    torch.manual_seed(1)
    plain = hf_mup.MuPModel.from_config(config, base_hidden_size=32)
    torch.manual_seed(1)
    deep = hf_mup.MuPModel.from_config(config, base_hidden_size=32, base_num_layers=3)
    for (n, p), (_, q) in zip(plain.named_parameters(), deep.named_parameters()):
        assert torch.equal(p, q), n
    groups = [hf_mup.mup_param_groups(m, lr=1e-3, weight_decay=0.1) for m in (plain, deep)]
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups[0]] == \
           [{k: v for k, v in g.items() if k != "params"} for g in groups[1]]
    ids = torch.randint(1, 128, (2, 16))
    losses = []
    for model, g in zip((plain, deep), groups):
        opt = torch.optim.AdamW(g)
        run = []
        for _ in range(5):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == losses[1]


def test_stock_init_held_at_base_depth():
    """GPT-2's stock c_proj init σ/√(2L) would shrink with depth on top of the residual multiplier: it is held at
    the base depth's σ/√(2·L_base) (Megatron-LM's depth_mup), measured on a 256×256 weight."""
    torch.manual_seed(0)
    model = _model("gpt2", width=256, layers=8, base_width=256, base_layers=2)
    std = model.transformer.h[5].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.03)
    assert model.transformer.h[5].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.03)  # no depth factor


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_fold_save_load_with_depth_scaling(arch, tmp_path):
    torch.manual_seed(0)
    kw = {"output_mult": 2.0} if arch != "bert" else {}
    with pytest.warns(UserWarning, match="post-norm") if arch == "bert" else _nothing():
        model = _model(arch, width=64, layers=4, base_width=32, base_layers=2, zero_init_query=False,
                       zero_init_readout=False, **kw)
    model.eval()
    ids = torch.randint(1, 128, (2, 16))
    logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    stock = auto.from_pretrained(tmp_path).eval()
    assert torch.allclose(stock(input_ids=ids).logits, logits, atol=1e-5)
    with pytest.warns(UserWarning, match="post-norm") if arch == "bert" else _nothing():
        loaded = hf_mup.MuPModel.from_pretrained(tmp_path).eval()
    assert hf_mup.get_plan(loaded).mup.base_num_layers == 2
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.allclose(p, q, atol=1e-7), n
    folded = hf_mup.fold(copy.deepcopy(model))
    assert torch.allclose(folded(input_ids=ids).logits, logits, atol=1e-5)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.slow
def test_eps_through_the_trainer_its_scheduler_and_resume(tmp_path):
    from datasets import Dataset

    model = _model("gpt2", width=64, layers=4, base_width=32, base_layers=2)
    ids = torch.randint(0, 128, (16, 16))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                             adam_epsilon=1e-6, lr_scheduler_type="linear", warmup_steps=1, save_steps=2,
                             report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = hf_mup.MuPTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    for g in trainer.optimizer.param_groups:  # args.adam_epsilon × 1/m_N = 1/2, × m_L^-1 = 1/2 inside the blocks
        factor = 0.5 * (0.5 if all(".h." in n for n in g["param_names"]) else 1.0)
        assert g["eps"] == pytest.approx(1e-6 * factor) and g["eps_mult"] == factor
    resumed = hf_mup.MuPTrainer(model=_model("gpt2", width=64, layers=4, base_width=32, base_layers=2), args=args,
                                train_dataset=ds)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert [g["eps"] for g in resumed.optimizer.param_groups] == [g["eps"] for g in trainer.optimizer.param_groups]


def test_check_optimizer_refuses_a_mismatched_eps():
    model = _model("gpt2", width=64, layers=4, base_width=32, base_layers=2)
    hf_mup.check_optimizer(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3)))
    with pytest.raises(MuPError, match="eps=1e-06"):
        hf_mup.check_optimizer(model, torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-3), eps=1e-6))
    groups = hf_mup.mup_param_groups(model, lr=1e-3)
    for g in groups:
        g.pop("eps"), g.pop("eps_mult")
    with pytest.raises(MuPError, match=r"without μP's Adam ε factor 0.5 \(1/m_N"):
        hf_mup.check_optimizer(model, torch.optim.AdamW(groups))


def test_bad_depth_settings():
    with pytest.raises(MuPError, match="depth_alpha"):
        hf_mup.MuPConfig(base_hidden_size=32, base_num_layers=2, depth_alpha=2.0)
    with pytest.raises(MuPError, match="base_num_layers"):
        hf_mup.MuPConfig(base_hidden_size=32, base_num_layers=0)
    config = _config("gpt2", 64, 4)
    config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(MuPError, match="scale_attn_by_inverse_layer_idx"):
        hf_mup.MuPModel.from_config(config, base_hidden_size=32, base_num_layers=2)


@pytest.mark.parametrize("arch,lr", [("gpt2", 1e-2), ("llama", 1e-3)])
@pytest.mark.slow
def test_depth_coordinate_check(arch, lr):
    """How far the last block's output moves in 3-4 AdamW steps, at depths 2-8: flat under CompleteP (α = 1),
    growing about ∝ depth under μP without depth scaling. Measured at depths 2-16 (seeds 0-3; GPT-2 lr 1e-2, steps
    1-3): μP slopes 0.83 / 1.27 / 1.44, CompleteP -0.02 / +0.01 / -0.01, α = 0.5 +0.03 / +0.02 / +0.05; Llama (lr
    1e-3, seeds 0-1, steps 2-4; its zero readout gives the blocks no gradient at step 1): μP 1.26 / 1.07 / 1.10,
    CompleteP -0.14 / +0.05 / -0.04. At depths 2-8 (what runs here), seed pairs 0-1 / 2-3 / 4-5, steps >= 2:
    CompleteP within [-0.16, +0.11], μP at least 0.91 (GPT-2 and Llama alike)."""
    steps = 3 if arch == "gpt2" else 4
    kw = dict(depths=(2, 4, 8), seeds=(0, 1), steps=steps, lr=lr)
    complete = depth_slopes(depth_check(arch, base_layers=2, **kw))
    plain = depth_slopes(depth_check(arch, base_layers=None, **kw))
    measured = [t for t in range(2, steps + 1)]
    assert all(abs(complete[t]) < 0.3 for t in measured), complete
    assert all(plain[t] > 0.6 for t in measured), plain


@pytest.mark.slow
def test_transfer_across_depth(tmp_path, capsys):
    """A proxy tuned with depth scaling (`hf-mup sweep --base-layers`) transfers to a deeper target; without it the
    depth change is refused, naming the fix, unless allowed explicitly."""
    import json

    from hf_mup.lab import cli
    from hf_mup.lab.recipe import Recipe
    from hf_mup.lab.storage import default_storage, load_study
    from hf_mup.lab.transfer import transfer

    tiny = ["--widths", "32", "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--tokenizer", "bytes",
            "--train-chars", "5000", "--val-blocks", "2", "--seeds", "1", "--threads", "1", "--no-progress",
            "--parametrization", "mup", "--log2-lrs=-8"]
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 6, "vocab_size": 256}))
    for name, extra in (("depth", ["--base-layers", "2", "--depth-alpha", "0.5"]), ("width", [])):
        assert cli.main(["sweep", *tiny, *extra, "--study", name, "--out", str(tmp_path)]) == 0
    url = default_storage(tmp_path)
    out = tmp_path / "hparams.json"
    assert cli.main(["transfer", "--study", "depth", "--out", str(tmp_path), "--target-config", str(target),
                     "--output", str(out)]) == 0
    hp = json.loads(out.read_text())
    assert hp["recipe"]["mup"]["base_num_layers"] == 2 and hp["recipe"]["mup"]["depth_alpha"] == 0.5
    assert "depth scaling (CompleteP, α = 0.5" in hp["notes"][0]
    recipe = Recipe.from_dict(hp["recipe"])
    assert recipe.layers == 6 and recipe.width == 64
    model = hf_mup.MuPModel.from_config(cli.load_config(str(target)), **recipe.mup_settings())  # what recipes do with it
    assert hf_mup.get_plan(model).residual_scale == pytest.approx((2 / 6) ** 0.5)

    assert cli.main(["transfer", "--study", "width", "--out", str(tmp_path), "--target-config", str(target)]) == 2
    err = capsys.readouterr().err
    assert "6 layers" in err and "--base-layers 2" in err and "allow_depth_change" in err
    result = transfer(load_study("width", url), cli.load_config(str(target)), allow_depth_change=True)
    assert "base_num_layers" not in result.recipe.mup and "the optimum may move" in result.notes[0]


def test_inspect_shows_the_depth_factors():
    text = hf_mup.describe(_model("gpt2", width=64, layers=8, base_width=32, base_layers=2))
    assert "Adam ε ×" in text.splitlines()[0]
    row = next(line.split() for line in text.splitlines() if line.startswith("transformer.h.7.mlp.c_fc.weight"))
    # Adam LR η/m_N · m_L^0, SGD LR m_L^(2α-1), Muon LR 1/√m_N · m_L^(α-1) (match_rms_adamw), ε m_N^-1 · m_L^-α
    assert row[-4:] == ["0.5", "4", "0.707107", "0.125"]
    assert "depth: 8 layers, base 2 (m_L 4, α 1): residual branches × 0.25 on 16 modules" in text
    width_only = hf_mup.describe(hf_mup.MuPModel.from_config(_config("gpt2", 64, 8), base_hidden_size=32))
    assert "Adam ε ×" in width_only.splitlines()[0] and "no depth scaling" in width_only
    assert "Adam ε: × 1/m_N = 0.5 on every tensor with a width dimension" in width_only
    plain = hf_mup.describe(hf_mup.MuPModel.from_config(_config("gpt2", 64, 8), base_hidden_size=32,
                                                        eps_width_scaling=False))
    assert "Adam ε ×" not in plain and "Adam ε: not scaled with width" in plain
