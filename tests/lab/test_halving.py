"""Synchronous successive halving (hf_mup.lab.halving): rungs and their cost, legs that resume exactly from their
checkpoints, a search that loses and repeats nothing after a kill, and the CLI and transfer through it."""
import json
import re

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from test_sweep import TINY, tiny_spec

from hf_mup import MuPError
from hf_mup.lab import cli
from hf_mup.lab import sweep as sw
from hf_mup.lab.halving import (
    Checkpoints,
    leg_objective,
    next_step,
    obsolete_checkpoints,
    planned_steps,
    run_halving,
    rungs,
    sizes,
    split,
)
from hf_mup.lab.lm import train_lm
from hf_mup.lab.results import report
from hf_mup.lab.search import param_importance, searched
from hf_mup.lab.storage import default_storage, load_study, storage_of, trial_id
from hf_mup.lab.transfer import transfer

# multipliers that are not powers of two: folding them into the weights (a μP state_dict) does not round-trip
HP = {"log2_lr": -7.0, "initializer_range": 0.02, "input_mult": 2.5, "output_mult": 3.0, "attn_mult": 1.5}


def test_rungs_sizes_brackets_and_the_planned_cost():
    assert rungs(150, 16) == [16, 48, 150] and rungs(18, 2) == [2, 6, 18] and rungs(8, 8) == [8]
    assert rungs(140, 16) == [16, 140]  # no rung just short of the end: each at most a third of the trial
    assert sizes(24, 3) == [24, 8, 3] and sizes(5, 3) == [5, 2, 1] and sizes(8, 3, reduction=2) == [8, 4, 2]
    assert split(24, 2) == [12, 12] and split(7, 3) == [3, 2, 2]
    # GPT-2 `hour`: 24 trials of 150 steps from step 16 cost 26% of running every one to the end; 2 brackets 29%
    assert planned_steps(24, 150, 16) == 24 * 16 + 8 * 32 + 3 * 102
    assert planned_steps(24, 150, 16) / (24 * 150) == pytest.approx(0.2628, abs=1e-4)
    assert planned_steps(24, 150, 16, brackets=2) == 2 * (12 * 16 + 4 * 32 + 2 * 102)
    with pytest.raises(MuPError, match="--min-steps 0: between 1 and the trial's 150 steps"):
        rungs(150, 0)
    with pytest.raises(MuPError, match="reduction factor 1: at least 2"):
        rungs(150, 16, reduction=1)
    with pytest.raises(MuPError, match="--brackets 9: between 1 and --n-trials \\(8\\)"):
        split(8, 9)


@pytest.mark.filterwarnings("ignore:input_mult=2.5 has no effect on bert")
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_a_paused_run_resumed_from_its_checkpoint_is_the_straight_run(arch, tmp_path):
    """Paused at steps 4 and 8 of 12, saved, loaded and resumed: every loss equals the uninterrupted run's, bit for
    bit (the masked LM's masks too: the batch stream is replayed from its seed)."""
    spec = tiny_spec(mode="tune", arch=arch, steps=12)
    data = spec.load_data()
    recipe = spec.tune_recipe(HP)
    straight = train_lm(recipe.build_model(), recipe, *data, eval_every=4, **spec.masking())
    losses, val, state = [], [], None
    for until in (4, 8, 12):
        r = train_lm(recipe.build_model(), recipe, *data, resume=state, until=until, **spec.masking())
        assert r["steps_run"] == 4 and ("state" in r) == (until < 12)
        losses += r["train_loss"]
        val += r["val_loss"]
        if until < 12:
            torch.save(r["state"], tmp_path / "leg.pt")
            state = torch.load(tmp_path / "leg.pt", weights_only=True)
    assert losses == straight["train_loss"] and val == straight["val_loss"]


def _search(tmp_path, n=8, steps=18, min_steps=2, seed=0):
    spec = tiny_spec(mode="tune", width=32, steps=steps)
    spec = sw.SweepSpec("tune", spec.recipe, spec.data, log2_lr_range=(-14.0, -4.0))
    data = spec.load_data()
    url = default_storage(tmp_path)
    study = sw.open_study("tune", url, spec.stamp(data), heartbeat=1)
    study.sampler = sw.make_sampler("tpe", seed, len(study.trials))
    return spec, data, url, study


@pytest.mark.slow
def test_a_search_runs_each_rung_once_and_its_winner_is_a_straight_full_run(tmp_path):
    spec, data, url, study = _search(tmp_path)
    run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False)
    trials = study.get_trials(deepcopy=False)
    by_rung = {k: [t for t in trials if t.user_attrs["rung"] == k] for k in range(3)}
    assert [len(v) for v in by_rung.values()] == [8, 3, 1] and len(trials) == 12  # sizes(8): 8, 3, 1
    for k, legs in by_rung.items():
        for t in legs:
            a = t.user_attrs
            assert a["steps_run"] == [2, 4, 12][k] and a["start_step"] == [0, 2, 6][k]
            assert a["flops"] == 6 * a["n_params"] * a["steps_run"] * 8 * 32  # this leg's steps only
            assert list(t.intermediate_values) == [[2, 6, 18][k]]  # compared at equal steps (tokens)
            assert t.state == (TrialState.COMPLETE if k == 2 else TrialState.PRUNED)
        if k:  # the best third of the rung below went on, each from its own checkpoint, with its values
            below = sorted(by_rung[k - 1], key=lambda t: t.value)[:len(legs)]
            assert sorted(t.user_attrs["resumes"] for t in legs) == sorted(t.number for t in below)
            assert all(t.params == trials[t.user_attrs["resumes"]].params for t in legs)
    assert sum(t.user_attrs["steps_run"] for t in trials) == planned_steps(8, 18, 2) == 40
    assert list((tmp_path / "ck").iterdir()) == []  # no checkpoint outlives its use

    winner = by_rung[2][0]  # three legs, one training run: the same numbers as the configuration trained straight
    recipe = spec.tune_recipe(winner.user_attrs["hparams"])
    straight = train_lm(recipe.build_model(), recipe, *data, **spec.masking())
    assert winner.value == straight["final_val_loss"] and winner.user_attrs["recipe"] == recipe.to_dict()

    assert [t.number for t in searched(study)] == sorted(
        [t.number for t in by_rung[0] if t.number not in {x.user_attrs["resumes"] for x in by_rung[1]}]
        + [t.number for t in by_rung[1] if t.number != winner.user_attrs["resumes"]] + [winner.number])
    assert set(param_importance(study)) == set(spec.space)  # over the first rung: every configuration, equal tokens
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 32,
                                  "vocab_size": 256}))
    result = transfer(load_study("tune", url), cli.load_config(str(target)), rule="copy")
    assert result.source["trial"] == winner.number and result.recipe.lr == recipe.lr
    assert result.cost["trials"] == 8 and result.cost["tuning_flops"] == sum(t.user_attrs["flops"] for t in trials)
    assert report(study, tmp_path / "report", plot_name=None)["counts"] == {
        "COMPLETE": 1, "RUNNING": 0, "WAITING": 0, "PRUNED": 11, "FAIL": 0}

    run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False)
    assert len(study.trials) == 12  # resumed: nothing left to run
    for kwargs, changed in [({"brackets": 2}, "brackets 1 (now 2)"), ({"min_steps": 3}, "rungs [2, 6, 18] (now "
                            "[3, 18])"), ({"n_trials": 9}, "n_trials 8 (now 9)")]:  # its legs were cut for those
        with pytest.raises(MuPError, match=re.escape(f"study 'tune' runs successive halving with {changed}:")):
            run_halving(study, spec, kwargs.pop("n_trials", 8), data, tmp_path / "ck",
                        **{"min_steps": 2, "progress": False, **kwargs})
    assert len(study.trials) == 12


@pytest.mark.slow
def test_brackets_run_one_after_the_other(tmp_path):
    """2 brackets of 4 (4, 2, 1 legs each): the second samples only once the first is decided, so TPE sees a
    full-length trial; transfer takes the better of the two complete ones."""
    spec, data, url, study = _search(tmp_path)
    run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False, brackets=2)
    trials = study.get_trials(deepcopy=False)
    brackets = [[t for t in trials if t.user_attrs["bracket"] == b] for b in (0, 1)]
    assert [sorted(t.user_attrs["rung"] for t in legs) for legs in brackets] == [[0] * 4 + [1] * 2 + [2]] * 2
    assert max(t.number for t in brackets[0]) < min(t.number for t in brackets[1])
    assert all(trials[t.user_attrs["resumes"]].user_attrs["bracket"] == 1 for t in brackets[1] if "resumes" in
               t.user_attrs)
    assert sum(t.user_attrs["steps_run"] for t in trials) == planned_steps(8, 18, 2, brackets=2) == 2 * 28
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and list((tmp_path / "ck").iterdir()) == []
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 32,
                                  "vocab_size": 256}))
    result = transfer(load_study("tune", url), cli.load_config(str(target)), rule="copy")
    assert result.source["trial"] == min(complete, key=lambda t: t.value).number and result.cost["trials"] == 8


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.slow
def test_a_killed_leg_goes_on_from_the_same_checkpoint_and_a_leg_enqueued_twice_runs_once(tmp_path):
    spec, data, url, study = _search(tmp_path)

    def second_rung_leg(st):
        return [t for t in st.get_trials(deepcopy=False) if t.user_attrs.get("rung") == 1 and t.state.is_finished()]

    def stop(st):  # the search dies after the first leg of the second rung
        if second_rung_leg(st):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False, after_trial=stop)
    [ran] = second_rung_leg(study)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 2 and {t.user_attrs["rung"] for t in waiting} == {1}
    assert sorted(int(p.stem) for p in (tmp_path / "ck").iterdir()) == sorted(  # the first rung's losers' are gone
        [t.user_attrs["resumes"] for t in (*waiting, ran)] + [ran.number])
    # a worker took a promoted leg and was killed; another enqueued a leg that has run already
    killed = study.ask()
    assert killed.number == waiting[0].number
    storage_of(study).record_heartbeat(trial_id(study, killed.number))
    study.enqueue_trial(ran.params, user_attrs={"rung": 1, "resumes": ran.user_attrs["resumes"]})

    study = sw.open_study("tune", url, spec.stamp(data), heartbeat=1)  # a new process, the same arguments
    study.sampler = sw.make_sampler("tpe", 0, len(study.trials))
    run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False)
    trials = study.get_trials(deepcopy=False)
    assert trials[killed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state in (TrialState.PRUNED, TrialState.COMPLETE)
    assert retry[0].user_attrs["resumes"] == waiting[0].user_attrs["resumes"] and retry[0].user_attrs["steps_run"] == 4
    again = [t for t in trials if t.user_attrs.get("resumes") == ran.user_attrs["resumes"]]
    assert len(again) == 2 and again[1].user_attrs["duplicate_of"] == ran.number
    assert "flops" not in again[1].user_attrs  # the copy ran nothing
    legs = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in
            t.user_attrs]
    assert sorted(t.user_attrs["rung"] for t in legs) == [0] * 8 + [1] * 3 + [2]
    assert sum(t.user_attrs["steps_run"] for t in legs) == planned_steps(8, 18, 2)
    assert next_step(trials, 8, 3, 3) == ("done", [], 0) and list((tmp_path / "ck").iterdir()) == []


@pytest.mark.slow
def test_the_cli_runs_successive_halving_and_refuses_a_stray_checkpoint_dir(tmp_path, capsys):
    tiny = [a for a in TINY if a != "32,64"]
    tiny.insert(tiny.index("--widths") + 1, "32")
    args = ["sweep", "--mode", "tune", *tiny, "--steps", "9", "--log2-lrs=-14:-4:1", "--n-trials", "6",
            "--pruner", "sha", "--min-steps", "1", "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path)]
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["counts"]["COMPLETE"] == 1 and result["counts"]["PRUNED"] == 6 + 2  # 6, 2, 1 legs
    assert "at rung 1" in capsys.readouterr().out  # --no-progress: a line per leg
    refused = [*args[:-1], str(tmp_path / "refused"), "--brackets", "7"]
    assert cli.main(refused) == 2
    assert "--brackets 7: between 1 and --n-trials (6)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()  # refused before any data is read or study made
    args[args.index("sha")] = "asha"
    assert cli.main(args) == 2
    assert "--checkpoint-dir is where --pruner sha pauses its trials" in capsys.readouterr().err


def _legs_study(values: list[float]) -> optuna.Study:
    """A study whose first rung is decided: one paused first leg per value, in bracket 0."""
    study = optuna.create_study()
    for v in values:
        study.add_trial(create_trial(state=TrialState.PRUNED, value=v, params={"x": v},
                                     distributions={"x": FloatDistribution(-10, 10)},
                                     user_attrs={"rung": 0, "bracket": 0}, intermediate_values={2: v}))
    return study


def test_a_half_enqueued_promotion_keeps_the_checkpoints_it_still_needs():
    """8 configurations, the best 3 promoted: while only the first of their next legs is enqueued (another worker
    may look in between), the other two promoted legs' checkpoints stay; the 5 losers' go."""
    study = _legs_study([0.5, 0.1, 0.7, 0.2, 0.9, 0.3, 0.8, 0.6])
    assert next_step(study.trials, 8, 3, 3) == ("promote", [study.trials[i] for i in (1, 3, 5)], 0)
    study.enqueue_trial({"x": 0.1}, user_attrs={"rung": 1, "resumes": 1, "bracket": 0})
    trials = study.get_trials(deepcopy=False)
    assert obsolete_checkpoints(trials, 8, 3) == {0, 2, 4, 6, 7}
    assert next_step(trials, 8, 3, 3) == ("promote", [trials[3], trials[5]], 0)


@pytest.mark.slow
def test_a_first_leg_beyond_its_brackets_configurations_stops_before_sampling(tmp_path):
    """Two workers can both see a waiting leg and one of them gets a fresh trial instead: it must not join a decided
    rung (the promotions, the checkpoints kept and the planned cost would change), so it stops unsampled; the
    retry of a killed first leg is not extra."""
    spec, data, _, _ = _search(tmp_path)
    study = _legs_study([0.5, 0.1, 0.7, 0.2, 0.9, 0.3, 0.8])
    killed = study.ask()  # the 8th configuration's worker dies: its retry is still one of the 8
    study.tell(killed, state=TrialState.FAIL)
    study.enqueue_trial(HP, user_attrs={"bracket": 0})
    objective = leg_objective(spec, data, [2, 6, 18], Checkpoints(tmp_path / "ck"), bracket_sizes=[8])
    study.optimize(objective, n_trials=2)  # the retry, then one too many
    retry, extra = study.trials[-2:]
    assert retry.state == TrialState.PRUNED and retry.user_attrs["steps_run"] == 2 and "surplus" not in retry.user_attrs
    assert extra.state == TrialState.PRUNED and extra.user_attrs == {"surplus": True} and extra.params == {}
    trials = study.get_trials(deepcopy=False)
    assert next_step(trials, 8, 3, 3)[0] == "promote" and searched(study)[-1].number == retry.number


def test_successive_halving_refuses_a_study_searched_without_it(tmp_path):
    spec, data, _, study = _search(tmp_path)
    study.add_trial(create_trial(value=3.0, params={}, distributions={}))
    with pytest.raises(MuPError, match="study 'tune' already holds trials of a search without successive halving"):
        run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False)


def test_settings_that_cannot_run_are_not_recorded_in_the_study(tmp_path):
    spec, data, _, study = _search(tmp_path)
    with pytest.raises(MuPError, match="--brackets 9: between 1 and --n-trials \\(8\\)"):
        run_halving(study, spec, 8, data, tmp_path / "ck", min_steps=2, progress=False, brackets=9)
    assert "halving" not in study.user_attrs and study.trials == []  # a corrected rerun is not refused
