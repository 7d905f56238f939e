"""Tune mode's sampler and pruner (hf_mup.lab.search): a pruned (multi-fidelity) search stops trials early, keeps
what each cost, and never transfers a pruned trial."""
import json
import math

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep import TINY, tiny_spec

from hf_mup import MuPError
from hf_mup.lab import cli
from hf_mup.lab import sweep as sw
from hf_mup.lab.search import confirm_top, make_pruner
from hf_mup.lab.storage import default_storage, load_study
from hf_mup.lab.transfer import transfer


def test_pruners_and_their_refusals():
    assert isinstance(make_pruner("asha", 100, 25), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("hyperband", 100, 25), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("median", 100, 25), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none", 100, 25), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("sha", 100, 25), optuna.pruners.NopPruner)  # its legs pause themselves (halving)
    with pytest.raises(MuPError, match="--pruner 'bohb'.*asha, sha"):
        make_pruner("bohb", 100, 25)
    with pytest.raises(MuPError, match="--min-steps 200: between 1 and the trial's 100 steps"):
        make_pruner("asha", 100, 200)


@pytest.mark.slow
def test_a_pruned_search_counts_what_each_trial_cost_and_transfers_a_complete_one(tmp_path):
    spec = tiny_spec(mode="tune", width=32, steps=8)
    spec = sw.SweepSpec("tune", spec.recipe, spec.data, log2_lr_range=(-14.0, -2.0))
    data = spec.load_data()
    url = default_storage(tmp_path)
    study = sw.open_study("tune", url, spec.stamp(data))
    study.sampler, study.pruner = sw.make_sampler("random", 0, 0), make_pruner("asha", 8, 2, reduction=2)
    sw.run_tune(study, spec, 8, data, progress=False, eval_every=2)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert len(trials) == 8 and set(states) == {TrialState.COMPLETE, TrialState.PRUNED}, states
    for t in trials:
        a = t.user_attrs
        assert a["flops"] == 6 * a["n_params"] * a["steps_run"] * 8 * 32  # × batch × sequence
        if t.state == TrialState.PRUNED:
            assert 2 <= a["pruned"] == a["steps_run"] < 8 and math.isfinite(a["val_loss"])
            assert list(t.intermediate_values) == list(range(2, a["pruned"] + 1, 2))  # reported at equal steps
        else:
            assert a["steps_run"] == 8 and "pruned" not in a
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 32,
                                  "vocab_size": 256}))
    result = transfer(load_study("tune", url), cli.load_config(str(target)), rule="copy")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert result.source["trial"] == min(complete, key=lambda t: t.value).number
    assert result.cost["trials"] == 8 and result.cost["tuning_flops"] == sum(t.user_attrs["flops"] for t in trials)
    assert result.cost["tuning_flops"] < 8 * complete[0].user_attrs["flops"]  # pruning saved compute


@pytest.mark.slow
def test_the_cli_runs_a_pruned_search(tmp_path, capsys):
    tiny = [a for a in TINY if a not in ("32,64",)]
    tiny[tiny.index("--widths") + 1:tiny.index("--widths") + 1] = ["32"]
    assert cli.main(["sweep", "--mode", "tune", *tiny, "--steps", "8", "--log2-lrs=-14:-2:1", "--n-trials", "6",
                     "--sampler", "random", "--pruner", "asha", "--min-steps", "2", "--eval-every", "2",
                     "--out", str(tmp_path)]) == 0
    counts = json.loads((tmp_path / "results.json").read_text())["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 6 and counts["COMPLETE"] >= 1


@pytest.mark.slow
def test_top_trials_rerun_with_seeds_and_transfer_says_whether_the_winner_beats_noise(tmp_path):
    spec = tiny_spec(mode="tune", width=32, steps=6)
    data = spec.load_data()
    url = default_storage(tmp_path)
    study = sw.open_study("tune", url, spec.stamp(data))
    study.sampler = sw.make_sampler("random", 0, 0)
    sw.run_tune(study, spec, 4, data, progress=False)
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 32,
                                  "vocab_size": 256}))
    unconfirmed = transfer(load_study("tune", url), cli.load_config(str(target)), rule="copy")
    assert any("may be noise" in n and "--confirm-top" in n for n in unconfirmed.notes)
    top = confirm_top(study, spec, data, k=2, seeds=3)
    assert confirm_top(study, spec, data, k=2, seeds=3) == top  # resumed: nothing rerun
    trials = study.get_trials(deepcopy=False)
    reruns = [t for t in trials if "confirm_of" in t.user_attrs]
    assert sorted((t.user_attrs["confirm_of"], t.user_attrs["seed"]) for t in reruns) == sorted(
        (n, s) for n in top for s in (1, 2))
    for t in reruns:  # the original's values, another seed
        original = trials[t.user_attrs["confirm_of"]]
        assert t.params == original.params and t.user_attrs["recipe"]["seed"] == t.user_attrs["seed"]
    sw.run_tune(study, spec, 4, data, progress=False)
    assert len(study.get_trials(deepcopy=False)) == 8  # the reruns do not count as search trials
    result = transfer(load_study("tune", url), cli.load_config(str(target)), rule="copy")
    c = result.source["confirmed"]
    means = {n: (trials[n].value + sum(t.value for t in reruns if t.user_attrs["confirm_of"] == n)) / 3 for n in top}
    assert c["trial"] == min(means, key=means.get) and c["val_loss"] == pytest.approx(min(means.values()))
    assert c["margin"] == pytest.approx(max(means.values()) - min(means.values())) and c["seeds"] == 3
    assert any(f"the winner (trial {c['trial']}, 3 seeds" in n for n in result.notes)
    assert result.cost["trials"] == 8  # the reruns cost compute too


@pytest.mark.slow
def test_the_report_shows_each_settings_importance_and_the_slices_around_the_winner(tmp_path):
    from hf_mup.lab.results import report
    from hf_mup.lab.search import param_importance

    spec = tiny_spec(mode="tune", width=32, steps=4)
    data = spec.load_data()
    study = sw.open_study("tune", default_storage(tmp_path), spec.stamp(data))
    study.sampler = sw.make_sampler("random", 0, 0)
    sw.run_tune(study, spec, 3, data, progress=False)
    assert param_importance(study) is None  # too few trials to say
    sw.run_tune(study, spec, 8, data, progress=False)
    result = report(study, tmp_path)
    importance = result["importance"]
    assert set(importance) == set(spec.space) and sum(importance.values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "results.json").read_text())["importance"] == pytest.approx(importance)
    assert (tmp_path / "tune_slices.png").stat().st_size > 10_000
