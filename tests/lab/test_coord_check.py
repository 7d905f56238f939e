"""The coordinate check: μP activations are flat in width, SP's logits grow, and a broken μP setup is caught.

Setup for all tests: widths 64, 128, 256, 512 (base 64), head size 16, 2 layers, 3 AdamW steps at lr 1e-2,
a fixed random batch of 8 × 32 tokens, seeds 0 and 1. Slopes are of log mean |activation| against log width.

Slopes measured (torch 2.13 CPU; t = 0 is at init, t = 1, 2 after one and two updates):

GPT-2            μP t0 / t1 / t2        SP t0 / t1 / t2       μP + plain AdamW t0 / t1 / t2
  wte            0.00 /  0.00 /  0.01   0.00 / 0.00 / -0.02   0.00 /  0.00 / -0.01
  h.0.attn       0.03 /  0.01 / -0.07   1.04 / 1.35 /  2.10   0.03 /  0.91 /  1.88
  h.1.attn       0.01 /  0.06 / -0.18   1.35 / 1.17 /  2.03   0.01 /  0.95 /  2.29
  h.1.attn.scores  nan / -0.34 / -0.24  1.01 / 0.96 /  1.26    nan /  0.52 /  1.61
  h.1.mlp        0.01 / -0.14 / -0.26   1.06 / 1.19 /  1.78   0.01 /  0.75 /  1.47
  lm_head       -0.49 / -0.17 / -0.22   0.50 / 0.57 /  1.22  -0.49 / -0.24 /  0.03
BERT (measured when its batches masked 15% of positions, all to [MASK])
  embeddings       0.00 /  0.00 /  0.00   0.00 / 0.00 /  0.00
  l.0.attention.self  0.06 / -0.04 / -0.03   0.56 / 0.94 / 0.96   (μP + plain AdamW: 0.06 / 0.93 / 0.95)
  l.1.output.dense -0.01 / -0.04 / -0.02   1.04 / 0.78 /  1.42
  decoder (logits) -0.50 / -0.11 /  0.05   0.50 / 0.72 /  0.80

Over 4 pairs of seeds (0-7) every μP slope was within [-0.48, +0.12] (GPT-2) and [-0.51, +0.09] (BERT, 15% [MASK]); the most
negative are the readout at init (-0.49..-0.51: its input is multiplied by 1/m, so μP logits at init shrink like
width^-1/2) and GPT-2's attention scores after a step (-0.25..-0.48: the query is zero-initialised, so the scores
are all update, whose incoherent part shrinks like width^-1/2 at small width; at widths 1024 and 2048 these curves
are flat). Hence the band (-0.7, +0.25) of `DEFAULT_BAND`: the upper bound has 2× margin over +0.12 and catches the
+0.5 slopes of SP's init or a missing readout multiplier; the lower bound has 0.2 margin over -0.51 and still catches
the -1 slope of hidden LRs scaled by 1/m² (measured: attention scores -0.95..-1.04). SP logits slopes after a step
were 0.57..0.67 (t1) and 0.93..1.22 (t2) for GPT-2; μP's were -0.19..-0.05 / -0.36..-0.19: hence "SP > 0.4,
μP < 0.2". BERT's batches are masked by the training loop's rule (`hf_mup.lab.lm.mask_tokens`, 80/10/10); over seed pairs
0-7 its SP logits slopes were 0.54..0.75 (t1) and 0.25..0.77 (t2), μP's -0.15..0.00 / +0.01..+0.14, every μP slope
within [-0.51, +0.14], the broken setup's attention 0.94..1.00 (t1): SP > 0.4 is asserted at t1 only for BERT.
Llama (`lm_config("llama")`: RMSNorm, SwiGLU, rotary, untied zero-init lm_head; causal batches as GPT-2's), seed
pairs 0-7: SP logits 0.56..0.59 (t1) and 0.95..1.07 (t2), μP's -0.19..-0.01, every μP slope within [-0.48, +0.09]
(the most negative: attention scores at t2, zero-initialised queries as GPT-2's): SP > 0.4 asserted at t1 and t2. The
broken setup (μP model, plain AdamW) has attention / MLP output slopes of 0.75..0.95 at t1 and 1.2..2.5 at t2.
"""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from hf_mup.lab.coord_check import DEFAULT_BAND, coord_check, plot, slopes, verdict

LOGITS = {"gpt2": "lm_head", "bert": "cls.predictions.decoder", "llama": "lm_head"}
SP_LOGITS_MIN, MUP_LOGITS_MAX = 0.4, 0.2
# BERT's masked-LM batches (15% targets, 80/10/10) give SP logits slopes of 0.25..0.77 at t2 (seed pairs 0-7): only
# t1 separates SP from μP with margin there.
SP_GROWTH_STEPS = {"gpt2": (1, 2), "bert": (1,), "llama": (1, 2)}


def _run(arch, parametrizations):
    # The models are tiny: one thread is as fast, and far faster on a shared, oversubscribed machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return coord_check(arch, widths=(64, 128, 256, 512), steps=3, lr=1e-2, optimizer="adamw",
                           seeds=(0, 1), parametrizations=parametrizations)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gpt2_records():
    return _run("gpt2", ("mup", "sp", "mup_global_lr"))


@pytest.fixture(scope="module")
def bert_records():
    return _run("bert", ("mup", "sp"))


@pytest.fixture(scope="module")
def llama_records():
    return _run("llama", ("mup", "sp"))


def _table(records):
    return {(r["parametrization"], r["module"], r["step"]): r["slope"] for r in slopes(records)}


def _describe(rows):
    return "\n".join(f"{r['parametrization']} {r['module']} t={r['step']}: slope {r['slope']:.3f}" for r in rows)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
@pytest.mark.slow
def test_mup_is_flat_sp_logits_grow(arch, request):
    records = request.getfixturevalue(f"{arch}_records")
    assert {r["step"] for r in records} == {0, 1, 2}
    assert {r["width"] for r in records} == {64, 128, 256, 512}
    table = _table(records)
    modules = {m for (_, m, _) in table}
    # the hooks see embeddings, attention (and its scores), MLP, blocks, final norm and logits
    expected = {
        "gpt2": ["transformer.wte", "transformer.h.0.attn", "transformer.h.0.attn.scores", "transformer.h.0.mlp",
                 "transformer.h.1", "transformer.ln_f", "lm_head"],
        "bert": ["bert.embeddings", "bert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self.scores",
                 "bert.encoder.layer.0.intermediate", "bert.encoder.layer.1", "cls.predictions.decoder"],
        "llama": ["model.embed_tokens", "model.layers.0.self_attn", "model.layers.0.self_attn.scores",
                  "model.layers.0.mlp", "model.layers.1", "model.norm", "lm_head"],
    }[arch]
    assert set(expected) <= modules

    bad = verdict(slopes(records))
    assert not bad, f"μP slopes outside {DEFAULT_BAND}:\n{_describe(bad)}"
    low, high = DEFAULT_BAND
    mup = [s for (p, _, _), s in table.items() if p == "mup" and not math.isnan(s)]
    assert len(mup) > 3 * 20 and all(low <= s <= high for s in mup)

    logits = LOGITS[arch]
    for t in SP_GROWTH_STEPS[arch]:  # after the first update(s): SP's logits grow with width, μP's do not
        sp, mu = table["sp", logits, t], table["mup", logits, t]
        assert sp > SP_LOGITS_MIN, f"SP logits slope at t={t}: {sp:.3f}"
        assert mu < MUP_LOGITS_MAX, f"μP logits slope at t={t}: {mu:.3f}"
    assert verdict(slopes(records), parametrization="sp"), "SP must fail the coordinate check"


@pytest.mark.slow
def test_plain_optimizer_on_mup_model_is_flagged(gpt2_records):
    """A μP model trained with `torch.optim.AdamW(model.parameters())` (no per-tensor LRs) must fail."""
    bad = verdict(slopes(gpt2_records), parametrization="mup_global_lr")
    flagged = {(r["module"], r["step"]) for r in bad}
    assert not any(t == 0 for _, t in flagged), "before any update the broken setup is the μP model"
    for t in (1, 2):
        assert {("transformer.h.0.attn", t), ("transformer.h.0.mlp", t)} <= flagged, _describe(bad)


def test_slopes_and_verdict_on_synthetic_records():
    recs = [dict(parametrization="mup", width=w, seed=s, step=0, module=m, value=v)
            for w in (64, 256) for s in (0, 1)
            for m, v in (("flat", 1.0), ("grows", w**0.5), ("zero", 0.0), ("shrinks", w**-1.0),
                         ("diverged", math.inf if w == 256 else 1.0))]
    table = _table(recs)
    assert table["mup", "flat", 0] == pytest.approx(0.0)
    assert table["mup", "grows", 0] == pytest.approx(0.5)
    assert math.isnan(table["mup", "zero", 0])  # nothing to fit: not flagged
    assert {r["module"] for r in verdict(slopes(recs))} == {"grows", "shrinks", "diverged"}
    assert {r["module"] for r in verdict(slopes(recs), threshold=0.6)} == {"shrinks", "diverged"}


@pytest.mark.slow
def test_plot(gpt2_records, tmp_path):
    path = tmp_path / "coord.png"
    plot([r for r in gpt2_records if r["parametrization"] != "mup_global_lr"], str(path))
    assert path.stat().st_size > 10_000


@pytest.mark.slow
def test_muon_mup_is_flat_sp_grows():
    # hf_mup.MuonAdamW (match_rms_adamw, μP's Muon factor) on the μP model, against the stock model with Muon as
    # torch scales it. Measured (seeds 0, 1; lr 1e-2): every μP slope within [-0.49, +0.05] (the readout at init is
    # the -0.49); SP's attention and MLP outputs +0.5..+1.35 at t1 and t2, its logits +0.5..+0.9.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = coord_check("gpt2", widths=(64, 128, 256, 512), steps=3, lr=1e-2, optimizer="muon", seeds=(0, 1),
                              parametrizations=("mup", "sp"))
    finally:
        torch.set_num_threads(threads)
    bad = verdict(slopes(records))
    assert not bad, f"μP slopes outside {DEFAULT_BAND}:\n{_describe(bad)}"
    table = _table(records)
    for t in (1, 2):
        assert table[("sp", "lm_head", t)] > SP_LOGITS_MIN
        assert table[("sp", "transformer.h.1.mlp", t)] > 0.6 and table[("mup", "transformer.h.1.mlp", t)] < 0.1
