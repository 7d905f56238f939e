"""Transfer across batch size and training length (`hf_mup.lab.scaling`): the optimum of a curve, the fit recovering
planted exponents, the rules' numbers, the range checks, and the sweep → fit → transfer → inspect path by the CLI."""
import json
import math

import pytest

from hf_mup import MuPError, weight_decay_from_timescale
from hf_mup.lab import cli
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.scaling import COPY, PUBLISHED, ScalingRule, curve_optimum, fit_horizon, fit_summary, rule_named


def test_curve_optimum_is_the_parabolas_vertex_inside_the_grid():
    curve = {x: [(x + 6.3) ** 2 + 3.0, (x + 6.3) ** 2 + 3.2] for x in (-9.0, -8.0, -7.0, -6.0, -5.0, -4.0)}
    o = curve_optimum(curve)
    assert o["grid_x"] == -6.0 and o["x"] == pytest.approx(-6.3) and not o["at_edge"]
    edge = curve_optimum({x: [(x + 12) ** 2] for x in (-9.0, -8.0, -7.0)})
    assert edge["x"] == -9.0 and edge["at_edge"]
    assert curve_optimum({-8.0: [math.inf], -7.0: [math.nan]})["x"] is None  # diverged everywhere


def _rows(a_b=0.5, a_d=-0.3, m=-0.5, d0=10_000):
    """Grid rows whose loss is a parabola in log2 LR around c + a_b·log2 B + a_d·log2 D (and, at batch 8, in log2 τ
    around m·log2(D/d0)): the exponents the fit must recover."""
    rows, n = [], 0
    cells = [(b, d0 * k, 1.0) for b in (8, 16, 32) for k in (1, 2, 4, 8)]
    cells += [(8, d0 * k, 2.0**t) for k in (1, 4, 16) for t in (-3, -2, -1, 1)]
    for b, d, tau in cells:
        best = a_b * math.log2(b) + a_d * math.log2(d)
        tau_best = m * math.log2(d / d0)
        for x in [v / 2 for v in range(-20, 1)]:
            for seed in (0, 1):
                loss = 3 + (x - best) ** 2 + 0.1 * (math.log2(tau) - tau_best) ** 2 + 0.01 * seed
                rows.append({"number": n, "state": "COMPLETE", "parametrization": "mup", "width": 32, "seed": seed,
                             "log2_lr": x, "batch_size": b, "token_horizon": d, "timescale": tau, "val_loss": loss,
                             "n_params": 1000})
                n += 1
    return rows


def test_fit_horizon_recovers_planted_exponents(tmp_path):
    fit = fit_horizon(_rows(), "val_loss")
    lr = fit["lr"]
    assert lr["batch_exponent"] == pytest.approx(0.5, abs=1e-6) and lr["tokens_exponent"] == pytest.approx(-0.3, abs=1e-6)
    assert lr["batch_exponent_se"] < 1e-6 and lr["cells_used"] == 12 and lr["batch_sizes"] == [8, 16, 32]
    assert fit["timescale"]["tokens_exponent"] == pytest.approx(-0.5, abs=1e-6)
    assert "B^+0.50" in fit_summary(fit) and "τ* ∝ D^-0.50" in fit_summary(fit)
    rule = ScalingRule.fitted(fit)
    assert (rule.lr_batch, rule.lr_tokens, rule.timescale_tpp) == pytest.approx((0.5, -0.3, -0.5), abs=1e-6)
    assert rule.batch_range == (8, 32) and rule.tokens_range == (10_000, 80_000)
    # noise: the standard errors grow with it, the estimate stays near
    noisy = _rows()
    for i, r in enumerate(noisy):
        r["val_loss"] += 0.02 * ((i * 7919) % 13 - 6) / 6
    lr = fit_horizon(noisy)["lr"]
    assert lr["tokens_exponent_se"] > 1e-4 and abs(lr["tokens_exponent"] + 0.3) < 4 * lr["tokens_exponent_se"] + 0.05
    from hf_mup.lab.scaling import plot_horizon

    plot_horizon(fit, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000


def test_a_fit_without_a_batch_axis_takes_the_published_batch_exponent():
    rows = [r for r in _rows() if r["batch_size"] == 8]
    fit = fit_horizon(rows)
    assert fit["lr"]["batch_exponent"] is None and fit["lr"]["tokens_exponent"] == pytest.approx(-0.3, abs=1e-6)
    rule = ScalingRule.fitted(fit)
    assert rule.lr_batch == PUBLISHED.lr_batch and "lr_batch published" in rule.source


PROXY = Recipe(width=32, base_width=32, batch_size=8, steps=50, seq_len=64, lr=2**-6, weight_decay_timescale=1.0)


def test_published_rule_numbers():
    target, moves = PUBLISHED.apply(PROXY, batch_size=32, tokens=8 * PROXY.tokens, proxy_params=1e5,
                                    target_params=1.6e6)
    assert target.lr == pytest.approx(2**-6 * 4**0.5 * 8**-0.32)
    assert target.batch_size == 32 and target.steps == 100 and target.tokens == 8 * PROXY.tokens
    tpp = 8 / 16
    assert target.weight_decay_timescale == pytest.approx(tpp**-0.53)
    assert target.decay == pytest.approx(weight_decay_from_timescale(tpp**-0.53, target.lr, 100))
    by = {m["setting"]: m for m in moves}
    assert by["learning rate"]["log2_factor"] == pytest.approx(1 - 3 * 0.32)
    assert by["warmup tokens"]["to"] == 10 * 32 * 64 and by["warmup tokens"]["from"] == 5 * 8 * 64  # 10% of training


def test_copy_keeps_the_lr_and_the_decay_itself():
    proxy = PROXY.replace(weight_decay_timescale=0.0, weight_decay=0.1)
    target, _ = COPY.apply(proxy, batch_size=32, tokens=8 * proxy.tokens, proxy_params=1e5, target_params=1.6e6)
    assert target.lr == proxy.lr and target.weight_decay == 0.1 and target.weight_decay_timescale == 0.0


@pytest.mark.parametrize("mode", ["width_independent", "coupled", "independent"])
def test_a_weight_decay_moves_as_its_timescale_in_its_own_mode(mode):
    proxy = PROXY.replace(weight_decay_timescale=0.0, weight_decay=0.01 if mode == "independent" else 0.1,
                          weight_decay_mode=mode)
    target, _ = PUBLISHED.apply(proxy, batch_size=32, tokens=8 * proxy.tokens, proxy_params=1e5, target_params=1.6e6)
    assert target.weight_decay_mode == mode and target.weight_decay_timescale == 0.0
    assert target.timescale == pytest.approx(proxy.timescale * (8 / 16) ** -0.53)
    per_step = target.weight_decay * (1 if mode == "independent" else target.lr)
    assert per_step == pytest.approx(1 / (target.timescale * target.steps))


def test_fitted_rule_refuses_far_extrapolation_and_notes_near():
    rule = ScalingRule("fitted", 0.5, -0.3, -0.5, "test", batch_range=(8, 32), tokens_range=(1e4, 1e5))
    assert rule.check_range(16, 5e4) == []
    notes = rule.check_range(64, 5e4)
    assert len(notes) == 1 and "2× outside" in notes[0]
    with pytest.raises(MuPError, match="allow-extrapolation"):
        rule.check_range(16, 1e7)
    assert "100× outside" in rule.check_range(16, 1e7, allow_extrapolation=True)[0]
    with pytest.raises(MuPError, match="needs a fit"):
        rule_named("fitted")
    with pytest.raises(MuPError, match="η·λ ≥ 1"):  # τ·steps ≤ 1: refused by the recipe
        PROXY.replace(weight_decay_timescale=0.01)


def test_horizon_sweep_fit_transfer_and_inspect_by_the_cli(tmp_path, capsys):
    """`hf-mup sweep` over batch sizes and tokens writes the fit; `hf-mup transfer --rule fitted --fit` moves the
    proxy's LR and timescale by it; `hf-mup inspect --hparams` shows the per-group decay and what moved."""
    tiny = ["--widths", "32", "--steps", "4", "--batch-size", "4", "--seq-len", "16", "--tokenizer", "bytes",
            "--train-chars", "20000", "--val-blocks", "2", "--seeds", "1", "--threads", "1", "--no-progress",
            "--parametrization", "mup", "--log2-lrs=-9:-5:2", "--weight-decay-timescale", "1",
            "--batch-sizes", "4,8", "--tokens", "256,512", "--out", str(tmp_path)]
    assert cli.main(["sweep", *tiny]) == 0
    out = capsys.readouterr().out
    assert "horizon fit: η* ∝ B^" in out
    fit = json.loads((tmp_path / "horizon_fit.json").read_text())
    assert len(fit["cells"]) == 4 and {c["batch_size"] for c in fit["cells"]} == {4, 8}
    assert (tmp_path / "horizon.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["counts"]["COMPLETE"] == 12
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 256,
                                  "n_positions": 16}))
    hp = tmp_path / "hparams.json"
    args = ["transfer", "--study", "grid", "--out", str(tmp_path), "--target-config", str(target), "--batch-size", "16",
            "--target-tokens", "4096", "--output", str(hp)]
    planted = tmp_path / "planted_fit.json"  # a fit with known exponents and range: tokens 1e4..8e4, batch 8..32
    planted.write_text(json.dumps(fit_horizon(_rows())))
    assert cli.main([*args, "--rule", "fitted", "--fit", str(planted), "--target-tokens", "1e6"]) == 2
    assert "12.5× outside" in capsys.readouterr().err  # past 8×: refused, naming --allow-extrapolation
    assert cli.main([*args, "--rule", "fitted", "--fit", str(planted), "--target-tokens", "2e4"]) == 0
    saved = json.loads(hp.read_text())
    proxy = saved["source"]
    assert saved["recipe"]["lr"] == pytest.approx(2.0 ** proxy["log2_lr"] * 4**0.5 * (2e4 / proxy["proxy_tokens"]) ** -0.3)
    capsys.readouterr()
    assert cli.main([*args, "--rule", "published"]) == 0
    saved = json.loads(hp.read_text())
    base = min(fit["cells"], key=lambda c: (c["batch_size"], c["tokens"]))
    proxy_lr = 2.0 ** saved["source"]["log2_lr"]
    assert saved["source"]["proxy_batch_size"] == 4 and saved["source"]["proxy_tokens"] == base["tokens"]
    assert saved["recipe"]["lr"] == pytest.approx(proxy_lr * 4**0.5 * (4096 / 256) ** -0.32)
    assert saved["recipe"]["batch_size"] == 16 and saved["recipe"]["steps"] == 16
    moved = {m["setting"] for m in saved["source"]["moves"]}
    assert {"learning rate", "weight-decay timescale (fraction of training)", "weight_decay λ"} <= moved
    assert cli.main(["inspect", "--hparams", str(hp)]) == 0
    text = capsys.readouterr().out
    assert "learning rate:" in text and "timescale" in text and "hidden" in text and "warmup" in text
    tau = saved["recipe"]["weight_decay_timescale"]
    row = next(line.split() for line in text.splitlines() if line.startswith("hidden"))
    assert float(row[-1]) == pytest.approx(tau, rel=1e-2)  # the hidden group's timescale is the recipe's
