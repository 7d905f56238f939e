"""The μTransfer pipeline (recipes/bert_large.py): every stage end to end on a seconds-scale BERT, stage skipping,
resume, the dry-run plan against known parameter counts, and the errors that name the fix."""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import StopAfter, require_polarity

from hf_mup import MuPError
from hf_mup.lab.pipeline import BERT_PRESETS, GPT2_PRESETS, GPT3_SMALL, MEGATRON_BERT, Pipeline, Preset, Shape, main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

MINI = Preset("mini", "bert", proxy=Shape(32, 1, 16), target=Shape(64, 2, 16), seq_len=32, vocab_size=320,
              search_trials=2, search_steps=4, search_batch=8, pretrain_steps=6, pretrain_batch=8,
              baseline=MEGATRON_BERT, finetune_lrs=(1e-3,), finetune_seeds=1, finetune_epochs=1, finetune_examples=48,
              tasks=("polarity", "nsp"), eval_blocks=8, train_chars=60_000, log2_lr_range=(-9.0, -6.0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    require_polarity()
    out = tmp_path_factory.mktemp("bert_mini")
    Pipeline(MINI, out, progress=False).run()
    return out


@pytest.mark.slow
def test_all_stages_write_their_results(finished):
    state = json.loads((finished / "stages.json").read_text())
    assert all(state[s]["done"] for s in ("search", "transfer", "pretrain", "finetune", "report"))
    hparams = json.loads((finished / "hparams.json").read_text())
    assert hparams["recipe"]["base_width"] == 32 and "input_mult" not in hparams["source"].get("tuned", [])
    table = json.loads((finished / "table6.json").read_text())["rows"]
    assert [r["hyperparameters"] for r in table] == ["mutransfer", "megatron"]
    for row in table:
        assert 0 < row["pretrain_val_loss"] < 10
        for task in ("polarity", "nsp"):
            assert 0 <= row[task]["accuracy"] <= 1 and row[task]["seeds"] == 1
    assert "| bert-mini | mutransfer |" in (finished / "table6.md").read_text()
    assert (finished / "pretrain_curves.png").stat().st_size > 1000
    cost = json.loads((finished / "cost.json").read_text())
    assert 0 < cost["fraction"] and cost["trials"] == 2
    lines = (finished / "finetune.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2  # rows × tasks × LRs × seeds
    # The μP row's checkpoint is a μP model; the baseline's a stock one.
    assert json.loads((finished / "pretrain" / "mutransfer" / "config.json").read_text())["mup"]["output_mult"] > 0
    assert "mup" not in json.loads((finished / "pretrain" / "megatron" / "config.json").read_text())


@pytest.mark.slow
def test_finished_stages_are_skipped_and_lost_work_is_redone(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    log = out / "finetune.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # as if killed before the last fine-tuning run finished
    state = json.loads((out / "stages.json").read_text())
    for stage in ("finetune", "report"):
        del state[stage]
    (out / "stages.json").write_text(json.dumps(state))
    before = (out / "pretrain" / "mutransfer" / "final_metrics.json").read_text()
    Pipeline(MINI, out, progress=False).run()
    assert len(log.read_text().splitlines()) == len(lines)  # only the missing run ran again
    assert (out / "pretrain" / "mutransfer" / "final_metrics.json").read_text() == before  # pretraining skipped


@pytest.mark.slow
def test_pretraining_resumes_from_its_checkpoint(tmp_path):
    """A pretraining run killed after step 5's checkpoint continues from it to the uninterrupted run's loss."""
    preset = replace(MINI, pretrain_steps=10)
    whole = Pipeline(preset, tmp_path / "whole", progress=False)
    whole.run(("search", "transfer"))
    row = whole.rows()["mutransfer"]
    expected = whole.pretrain_row("mutransfer", row)["eval_loss"]
    shutil.copytree(tmp_path / "whole", tmp_path / "cut", ignore=shutil.ignore_patterns("pretrain"))
    cut = Pipeline(preset, tmp_path / "cut", progress=False)
    assert cut.pretrain_row("mutransfer", row, callbacks=(StopAfter(5),)) == {"stopped_at": 5}
    assert [c.name for c in (tmp_path / "cut" / "pretrain" / "mutransfer").glob("checkpoint-*")] == ["checkpoint-5"]
    resumed = cut.pretrain_row("mutransfer", row)
    assert resumed["eval_loss"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_the_search_stage_prunes_and_confirms(tmp_path):
    """`--pruner asha --confirm_top 2`: the search's trials report their loss every 2 steps (of 8) and the worst stop at
    equal steps; the 2 best are rerun with 3 seeds, and transfer takes the best seed-mean (hparams.json says so)."""
    from optuna.trial import TrialState

    from hf_mup.lab.storage import default_storage, load_study

    preset = replace(MINI, search_trials=6, search_steps=8, log2_lr_range=(-14.0, -2.0))
    assert main(["--preset", "p", "--output_dir", str(tmp_path), "--stages", "search,transfer", "--pruner", "asha",
                 "--confirm_top", "2", "--no_progress"], {"p": preset}, "test") == 0
    trials = load_study("proxy", default_storage(tmp_path)).get_trials(deepcopy=False)
    searched = [t for t in trials if "confirm_of" not in t.user_attrs]
    assert len(searched) == 6 and {t.state for t in searched} == {TrialState.COMPLETE, TrialState.PRUNED}
    top = min(2, sum(t.state == TrialState.COMPLETE and not t.user_attrs["diverged"] for t in searched))
    assert len([t for t in trials if "confirm_of" in t.user_attrs]) == 2 * top  # seeds 1 and 2 of each
    source = json.loads((tmp_path / "hparams.json").read_text())["source"]
    assert source["confirmed"]["seeds"] == 3 and source["confirmed"]["candidates"] == top


@pytest.mark.slow
def test_the_search_stage_runs_successive_halving(tmp_path):
    """`--pruner sha`: 6 trials to step 3 of 9, the best 2 on from their checkpoints to the end; transfer takes the
    better complete one and counts every leg's cost (all 6 trials)."""
    from optuna.trial import TrialState

    from hf_mup.lab.halving import planned_steps
    from hf_mup.lab.storage import default_storage, load_study

    preset = replace(MINI, search_trials=6, search_steps=9, log2_lr_range=(-14.0, -4.0))
    assert main(["--preset", "p", "--output_dir", str(tmp_path), "--stages", "search,transfer", "--pruner", "sha",
                 "--no_progress"], {"p": preset}, "test") == 0
    trials = load_study("proxy", default_storage(tmp_path)).get_trials(deepcopy=False)
    assert [t.user_attrs["rung"] for t in trials] == [0] * 6 + [1] * 2
    assert sum(t.user_attrs["steps_run"] for t in trials) == planned_steps(6, 9, 3) == 6 * 3 + 2 * 6
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp["source"]["trial"] == min(complete, key=lambda t: t.value).number and hp["cost"]["trials"] == 6
    assert list((tmp_path / "search_checkpoints").iterdir()) == []
    with pytest.raises(MuPError, match="--pruner asha on the search of preset 'mini' \\(6 trials of 9 steps\\): "
                       "--brackets 2 splits --pruner sha's trials"):
        Pipeline(preset, tmp_path / "other", pruner="asha", brackets=2).check_inputs(("search",))


@pytest.mark.slow
def test_gpt2_pipeline_reports_the_regret(tmp_path):
    mini = Preset("mini", "gpt2", proxy=Shape(32, 1, 16), target=Shape(64, 1, 16), seq_len=32, vocab_size=320,
                  search_trials=2, search_steps=4, search_batch=8, pretrain_steps=4, pretrain_batch=8,
                  baseline=GPT3_SMALL, eval_blocks=8, train_chars=60_000, sp_grid_lrs=(2**-10, 2**-8),
                  log2_lr_range=(-9.0, -6.0))
    report = Pipeline(mini, tmp_path, progress=False).run()["report"]
    regret = report["regret"]
    assert regret["best_sp_grid_row"] in ("sp_lr0.000976562", "sp_lr0.00390625")
    assert regret["regret"] == pytest.approx(regret["mutransfer_loss"] - regret["best_sp_grid_loss"])
    assert [r["hyperparameters"] for r in report["rows"]] == ["mutransfer", "published", "sp_lr0.000976562",
                                                              "sp_lr0.00390625"]
    assert "Regret of μTransfer" in (tmp_path / "table6.md").read_text()
    assert not (tmp_path / "finetune.jsonl").exists()  # no tasks for a causal LM


@pytest.mark.slow
def test_recipes_run_as_scripts(tmp_path):
    import subprocess

    for recipe, params in (("bert_large.py", 335e6), ("gpt2_transfer.py", 124e6)):
        preset = "large" if recipe == "bert_large.py" else "small"
        out = subprocess.run([sys.executable, str(RECIPES / recipe), "--preset", preset, "--output_dir",
                              str(tmp_path / recipe), "--dry_run"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout)["target"]["params"] == pytest.approx(params, rel=0.01)
    assert GPT2_PRESETS["small"].target.width == 768


def test_dry_run_counts(capsys):
    assert main(["--preset", "large", "--output_dir", "unused", "--dry_run"], BERT_PRESETS, "bert_large") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["target"]["params"] == pytest.approx(335e6, rel=0.01)  # BERT-large
    assert plan["proxy"]["width"] == 256 and plan["proxy"]["layers"] == 10
    base = Pipeline(BERT_PRESETS["base"], "unused").plan()
    assert base["target"]["params"] == pytest.approx(110e6, rel=0.02)  # BERT-base
    search, pretrain = base["search"], base["pretrain"]
    assert base["search_fraction_of_pretraining"] == pytest.approx(search["flops"] / pretrain["flops_per_row"])
    assert not Path("unused").exists()  # a dry run writes nothing


def test_bad_input(tmp_path, capsys):
    assert main(["--preset", "huge", "--output_dir", str(tmp_path)], BERT_PRESETS, "bert_large") == 2
    assert "unknown preset 'huge': use one of tiny, base, large" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--output_dir", str(tmp_path), "--stages", "train"], BERT_PRESETS,
                "bert_large") == 2
    assert "unknown stage(s) ['train']" in capsys.readouterr().err
    with pytest.raises(MuPError, match="wider than the target"):
        Pipeline(replace(MINI, proxy=Shape(128, 1, 16)), tmp_path)
    Pipeline(MINI, tmp_path / "a")._check_recipe()
    with pytest.raises(MuPError, match=r"holds a run of another recipe or preset \(differs in \['search_steps'\]\)"):
        Pipeline(replace(MINI, search_steps=9), tmp_path / "a")._check_recipe()
    with pytest.raises(MuPError, match=r"unknown task 'mnlii': use polarity or nsp \(offline\) or a GLUE task"):
        Pipeline(MINI, tmp_path / "b").task_data("mnlii")
    n = MINI.search_trials
    argv = ["--preset", "tiny", "--output_dir", str(tmp_path / "c"), "--pruner", "sha", "--brackets", str(n + 1)]
    assert main(argv, {"tiny": MINI}, "bert_large") == 2  # the search's settings, before any stage
    assert (f"--pruner sha on the search of preset {MINI.name!r} ({n} trials of {MINI.search_steps} steps): --brackets "
            f"{n + 1}: between 1 and --n-trials ({n})") in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_batch_that_does_not_split_over_the_launched_processes_is_refused_first(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # what `accelerate launch --num_processes 3` sets
    pipe = Pipeline(replace(MINI, pretrain_batch=8), tmp_path)
    with pytest.raises(MuPError, match="the pretraining batch 8 does not split over 3 processes"):
        pipe.check_inputs(("search", "transfer", "pretrain"))
    pipe.check_inputs(("search", "transfer"))  # the batch matters to pretraining only
    monkeypatch.setenv("WORLD_SIZE", "4")
    pipe.check_inputs(("search", "transfer", "pretrain"))


def test_megatron_baseline_does_not_decay_layernorm_weights_and_biases():
    """Megatron-LM's param groups leave LayerNorm weights and biases out of weight decay: so does the baseline row."""
    recipe = MINI.baseline_recipe(vocab_size=320)
    model = recipe.build_model()
    optimizer = recipe.build_optimizer(model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    no_decay = [n for n in names if n.endswith("bias") or "LayerNorm" in n]
    assert no_decay and all(decay[id(names[n])] == 0.0 for n in no_decay)
    decayed = [n for n in names if n not in no_decay]
    assert decayed and all(decay[id(names[n])] == MEGATRON_BERT["weight_decay"] == 0.01 for n in decayed)
    assert sum(map(len, (g["params"] for g in optimizer.param_groups))) == len(names)
    # The GPT-3 baseline keeps what its committed runs did: decay on every tensor (the paper does not say).
    gpt = GPT2_PRESETS["tiny"].baseline_recipe(vocab_size=320)
    gpt_model = gpt.build_model()
    assert all(g["weight_decay"] == 0.1 for g in gpt.build_optimizer(gpt_model).param_groups)
