"""benchmarks/search_cost.py end to end on its --quick setting: a full-length and a pruned search, each winner
pretrained, the report; a rerun resumes from the runs' log. Then benchmarks/proxy_fidelity.py over its points."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import proxy_fidelity as pf
import search_cost as sc

from hf_mup.lab.halving import planned_steps
from hf_mup.lab.sweep import SweepSpec, run_trial


def test_the_methods_and_presets():
    assert set(sc.METHODS) == {"tpe", "random", "asha", "asha_guarded", "sha", "sha_b2", "sha_random"}
    assert sc.METHODS["sha_random"][:2] == sc.METHODS["random"][:1] + ("sha",)  # the random search's draws, halved
    hour = sc.preset_of("gpt2", "hour", quick=False)
    assert (hour.search_trials, hour.proxy.width, hour.target.width) == (24, 64, 1024)


@pytest.mark.slow
def test_quick_run_and_resume(tmp_path):
    args = ["--quick", "--arch", "gpt2", "--preset", "tiny", "--seeds", "1", "--methods", "tpe,asha,sha",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    assert sc.main(args) == 0
    r = json.loads((tmp_path / "search_cost_gpt2_tiny_quick.json").read_text())
    runs = {x["method"]: x for x in r["runs"]}
    assert runs["asha"]["pruned"] > 0 and runs["asha"]["fraction"] < runs["tpe"]["fraction"]  # pruned trials cost less
    # successive halving: 5 trials to step 2, the best 2 to step 6, the best to 18; its cost is known in advance
    assert runs["sha"]["steps_run"] == planned_steps(5, 18, 2) == 5 * 2 + 2 * 4 + 12 and runs["sha"]["trials"] == 5
    assert runs["sha"]["fraction"] == pytest.approx(runs["tpe"]["fraction"] * 30 / 90, rel=1e-6)
    assert runs["tpe"]["pruned"] == 0 and runs["tpe"]["fraction"] == pytest.approx(r["plan_fraction"], rel=1e-6)
    bias = r["early_bias"]  # from the full-length search's curves, reported every steps/9
    assert [b["step"] for b in bias][-1] == 18 and bias[-1]["spearman"] == pytest.approx(1.0)
    log = tmp_path / "search_cost_gpt2_tiny_quick_runs.jsonl"
    lines = log.read_text()
    assert sc.main(args) == 0 and log.read_text() == lines  # resumed: nothing run twice
    assert sc.main([*args, "--target-seeds", "2", "--noise-runs", "sha:0"]) == 0  # the target's own noise
    report = json.loads((tmp_path / "search_cost_gpt2_tiny_quick.json").read_text())
    [noise] = report["target_noise"]
    quick = "python benchmarks/search_cost.py --arch gpt2 --preset tiny --quick --seeds 1 --methods tpe,asha,sha"
    assert report["commands"] == [quick, f"{quick} --target-seeds 2 --noise-runs sha:0"]  # both made the runs
    first, other = noise["target_losses"]
    assert first == runs["sha"]["target_loss"] and other != first and noise["range"] == abs(other - first)
    assert (tmp_path / "search_cost_gpt2_tiny_quick.png").stat().st_size > 10_000
    # the transferred points trained again at the proxy (seed 0 again: the search's own proxy loss), then as varied
    preset = sc.preset_of("gpt2", "tiny", quick=True)
    pipe = sc.Pipeline(preset, tmp_path / "work" / "search_cost_gpt2_tiny_quick", progress=False)
    tok, train, val = pipe.data()
    spec = SweepSpec("tune", preset.proxy_recipe(len(tok)), pipe.corpus(), preset.log2_lr_range, name=preset.name)
    point = sc.transferred_points([runs["tpe"]])[0]
    again = run_trial(spec, pf.recipe_of(spec, point["hp"], {}, preset.pretrain_steps), (train, val))
    assert again["val_loss"] == pytest.approx(point["proxy"], rel=1e-5)
    fidelity = ["--quick", "--preset", "tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    assert pf.main([*fidelity, "--variants", "seed1,steps,trainer"]) == 0
    f = json.loads((tmp_path / "proxy_fidelity_gpt2_tiny_quick.json").read_text())
    assert {p["target"] for p in f["points"]} == {x["target_loss"] for x in runs.values()}
    # the target's loop (MuPTrainer) trains the proxy as the search's loop does: the same loss at the same steps
    assert all(p["seed1"] != p["proxy"] and p["trainer"] == pytest.approx(p["steps"], rel=1e-5) for p in f["points"])
    assert set(f["spearman_with_target"]) == {"proxy", "seed1", "steps", "trainer"}


def test_proxy_fidelity_trains_each_variant_as_named():
    spec = sc.preset_of("gpt2", "hour", quick=False)
    recipe = spec.proxy_recipe(spec.vocab_size)
    sweep = SweepSpec("tune", recipe, log2_lr_range=spec.log2_lr_range)
    hp = {"log2_lr": -7.0, "initializer_range": 0.02, "input_mult": 2.0, "output_mult": 1.0, "attn_mult": 1.0}
    recipes = {v: pf.recipe_of(sweep, hp, change, spec.pretrain_steps) for v, change in pf.VARIANTS.items()}
    assert all((r.lr, r.initializer_range, r.mup["input_mult"], r.parametrization) == (2**-7, 0.02, 2.0, "mup")
               for r in recipes.values())  # every variant trains the transferred point
    shapes = {v: (r.width, r.steps, r.seed, r.base_width) for v, r in recipes.items()}
    assert shapes == {"steps": (64, 300, 0, 64), "seed1": (64, 150, 1, 64), "seed2": (64, 150, 2, 64),
                      "w128": (128, 150, 0, 64), "w256": (256, 150, 0, 64), "w256_steps": (256, 300, 0, 64),
                      "trainer": (64, 300, 0, 64)}
    run = {"method": "tpe", "seed": 0, "target_loss": 3.0,
           "winner": {"log2_lr": -7.0, "initializer_range": 0.02, "mup": {"output_mult": 1.0}, "proxy_val_loss": 4.0}}
    rerun = {**run, "method": "sha", "target_loss": 3.1, "winner": {**run["winner"], "proxy_val_loss": 4.1}}
    [point] = sc.transferred_points([run, rerun])  # two searches, one winner: its last run's losses
    assert point["runs"] == ["tpe s0", "sha s0"] and (point["proxy"], point["target"]) == (4.1, 3.1)
    assert sc.proxy_predicts_target([run, rerun])["points"] == 1


def test_proxy_predicts_target_counts_each_transferred_point_once():
    def run(lr, proxy, target):
        return {"method": "tpe", "seed": 0, "winner": {"log2_lr": lr, "mup": {"output_mult": 1.0},
                "initializer_range": 0.02, "proxy_val_loss": proxy}, "target_loss": target}

    same = [run(-8, 4.0, 3.0), run(-8, 4.0, 3.0)]  # two searches, one winner: one point
    agree = sc.proxy_predicts_target([*same, run(-7, 4.1, 3.1), run(-6, 4.2, 3.2)])
    assert agree == {"points": 3, "spearman": pytest.approx(1.0)}
    assert sc.proxy_predicts_target([run(-8, 4.0, 3.2), run(-7, 4.1, 3.1), run(-6, 4.2, 3.0)])["spearman"] == -1.0
    assert sc.proxy_predicts_target(same)["spearman"] is None
