"""Sweeps (grid and tune), resuming after a kill, spec checks, transfer and the CLI's errors, on tiny models."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from optuna.trial import TrialState

from hf_mup import MuPError
from hf_mup.lab import cli, lm
from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe, lm_config
from hf_mup.lab.results import report, trial_rows
from hf_mup.lab.storage import default_storage, load_study, storage_of, trial_id
from hf_mup.lab.transfer import transfer

TINY = ["--widths", "32,64", "--base-width", "32", "--steps", "4", "--batch-size", "8", "--seq-len", "32",
        "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--seeds", "1", "--threads", "1",
        "--no-progress"]


def tiny_spec(mode="grid", corpus=None, **recipe):
    """A sweep of tiny models on bytes: `recipe` changes the Recipe, `corpus` the Corpus."""
    masked = recipe.get("arch") == "bert"
    r = Recipe(**{"width": 32, "steps": 4, "batch_size": 8, "seq_len": 32, "base_width": 32,
                  "vocab_size": 256 + masked, **recipe})
    data = Corpus(**{"tokenizer": "bytes", "train_chars": 20000, "val_blocks": 4, "masked": masked, **(corpus or {})})
    return sw.SweepSpec(mode, r, data)


@pytest.fixture(scope="module")
def data():
    return tiny_spec().load_data()


def by_point(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs.get("point"), []).append(t)
    return out


@pytest.mark.slow
def test_grid_cli_writes_csv_json_png(tmp_path, capsys):
    assert cli.main(["sweep", *TINY, "--log2-lrs=-8:-7:1", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header + widths × parametrizations × LRs
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["counts"]["COMPLETE"] == 8 and len(result["trials"]) == 8
    for metric in ("train_loss", "val_loss"):
        assert set(result["optimum"][metric]) == {"mup", "sp"}
        for param, o in result["optimum"][metric].items():
            assert set(o["optimum"]) == {"32", "64"} and o["drift"] in (0.0, 1.0)
            assert result["drift"][metric][param] == o["drift"]
    assert (tmp_path / "lr_transfer.png").stat().st_size > 10_000
    assert "drift" in capsys.readouterr().out
    # the same command again runs nothing
    assert cli.main(["sweep", *TINY, "--log2-lrs=-8:-7:1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["counts"]["COMPLETE"] == 8

    # grid transfer: the best μP LR (seed-mean val loss) at the widest width
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 128, "n_head": 8, "n_layer": 2, "vocab_size": 256}))
    out = tmp_path / "hparams.json"
    assert cli.main(["transfer", "--study", "grid", "--out", str(tmp_path), "--target-config", str(target),
                     "--output", str(out)]) == 0
    mup64 = [t for t in result["trials"] if t["parametrization"] == "mup" and t["width"] == 64]
    best = min(mup64, key=lambda t: t["val_loss"])
    hp = json.loads(out.read_text())
    # the published rule moves the LR from the proxy's tokens to the target's (20 per parameter), batch unchanged
    tokens = hp["cost"]["target_tokens"] / hp["source"]["proxy_tokens"]
    assert hp["recipe"]["lr"] == pytest.approx(2.0 ** best["log2_lr"] * tokens**-0.32)
    assert hp["source"]["rule"]["name"] == "published" and hp["source"]["moves"][0]["setting"] == "learning rate"
    assert hp["source"]["proxy_width"] == 64 and hp["recipe"]["mup"]["output_mult"] == 1.0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.slow
def test_resume_after_kill_runs_each_point_once(tmp_path, data):
    spec = tiny_spec()
    points = sw.grid_points([32, 64], [-8.0, -7.0], ["mup"], seeds=1)
    url = default_storage(tmp_path)
    study = sw.open_study("g", url, spec.stamp(data), heartbeat=1)

    def crash(st):  # the sweep dies after its first trial
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sw.run_grid(study, spec, points, data, progress=False, after_trial=crash)
    first = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(first) == 1
    # two workers killed mid-trial: their trials stay RUNNING, one after a heartbeat, one before its first
    killed = [study.ask(), study.ask()]
    storage_of(study).record_heartbeat(trial_id(study, killed[0].number))
    assert all(study.get_trials()[t.number].state == TrialState.RUNNING for t in killed)

    study = sw.open_study("g", url, spec.stamp(data), heartbeat=1)  # a new process, same arguments
    sw.run_grid(study, spec, points, data, progress=False)
    groups = by_point(study)
    assert set(groups) == {sw.point_key(p) for p in points}
    for trials in groups.values():
        assert [t.state for t in trials].count(TrialState.COMPLETE) == 1
    for k in killed:
        assert study.get_trials()[k.number].state == TrialState.FAIL  # went stale
        retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == k.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    again = study.get_trials()[first[0].number]  # the completed trial was not rerun
    assert again.state == TrialState.COMPLETE and again.user_attrs == first[0].user_attrs
    assert len(study.trials) == len(points) + 2

    n = len(study.trials)
    sw.run_grid(sw.open_study("g", url, spec.stamp(data), heartbeat=1), spec, points, data, progress=False)
    assert len(study.trials) == n  # nothing left to run


@pytest.mark.slow
def test_sigkill_then_rerun_completes_each_point_once(tmp_path):
    args = ["sweep", *TINY, "--steps", "20", "--parametrization", "mup", "--log2-lrs=-8:-7:1", "--heartbeat", "1",
            "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "hf_mup", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    db, states = tmp_path / "sweep.db", []
    while proc.poll() is None:  # kill it while a trial runs, after one has completed
        time.sleep(0.05)
        try:
            states = [s for (s,) in sqlite3.connect(db).execute("select state from trials")]
        except sqlite3.Error:
            continue
        if "COMPLETE" in states and "RUNNING" in states:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert "RUNNING" in states, "the sweep finished before it could be killed"
    before = {t["number"]: t for t in json.loads((tmp_path / "results.json").read_text())["trials"]}

    assert cli.main(args) == 0  # the same command again
    trials = json.loads((tmp_path / "results.json").read_text())["trials"]
    complete = [(t["width"], t["log2_lr"]) for t in trials if t["state"] == "COMPLETE"]
    assert sorted(complete) == [(32, -8.0), (32, -7.0), (64, -8.0), (64, -7.0)]  # each point once
    assert [t["state"] for t in trials].count("FAIL") == 1  # the killed trial
    for n, t in before.items():  # completed trials were not rerun
        if t["state"] == "COMPLETE":
            assert trials[n] == t


def test_spec_mismatch_is_a_clear_error(tmp_path):
    url = default_storage(tmp_path)
    sw.open_study("s", url, tiny_spec().to_dict())
    with pytest.raises(MuPError, match=r"study 's' was made with recipe.steps=4; you asked recipe.steps=5: use another "
                                       r"--study"):
        sw.open_study("s", url, tiny_spec(steps=5).to_dict())
    sw.open_study("s", url, tiny_spec().to_dict())  # the same spec reopens


@pytest.mark.slow
def test_tune_three_trials_and_transfer(tmp_path, data, capsys):
    spec = tiny_spec(mode="tune", width=32)
    url = default_storage(tmp_path)
    study = sw.open_study("tune", url, spec.stamp(data))
    study.sampler = sw.make_sampler("random", 0, len(study.trials))
    sw.run_tune(study, spec, 3, data, progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    sw.run_tune(study, spec, 3, data, progress=False)
    assert len(study.trials) == 3  # resumed: nothing to add
    result = report(study, tmp_path)
    best = min(study.trials, key=lambda t: t.value)
    assert result["best"]["number"] == best.number

    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 256, "n_head": 16, "n_layer": 2,
                                  "n_positions": 32, "vocab_size": 256}))
    out = tmp_path / "hparams.json"
    assert cli.main(["transfer", "--study", "tune", "--storage", url, "--target-config", str(target),
                     "--target-tokens", "1e6", "--rule", "copy", "--output", str(out)]) == 0
    hp = json.loads(out.read_text())
    assert hp["recipe"]["base_width"] == 32
    assert hp["recipe"]["mup"] == {k: best.params[k] for k in ("output_mult", "input_mult", "attn_mult")}
    assert hp["recipe"]["lr"] == 2.0 ** best.params["log2_lr"]  # copied: plain μTransfer
    assert hp["recipe"]["initializer_range"] == best.params["initializer_range"]
    assert hp["source"]["trial"] == best.number and hp["source"]["proxy_width"] == 32
    cost = hp["cost"]
    assert cost["tuning_flops"] == sum(t.user_attrs["flops"] for t in study.trials)
    assert math.isclose(cost["fraction"], cost["tuning_flops"] / (6 * cost["target_params"] * 1e6))
    assert "tuning cost" in capsys.readouterr().out

    cost = transfer(load_study("tune", url), cli.load_config(str(target))).cost
    assert cost["target_tokens"] == 20 * cost["target_params"]


@pytest.mark.slow
def test_bert_grid_cli_writes_finite_mlm_losses(tmp_path, capsys):
    assert cli.main(["sweep", "--arch", "bert", *TINY, "--log2-lrs=-8:-7:1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    spec = result["spec"]
    assert spec["recipe"]["arch"] == "bert" and spec["recipe"]["vocab_size"] == spec["data"]["vocab_size"] == 257
    assert spec["data"]["masked"] is True and Corpus.from_dict(spec["data"]).mask_id == 256
    assert result["counts"]["COMPLETE"] == 8
    for t in result["trials"]:  # masked-LM losses (nats per masked token), below uniform over 257 after 4 steps
        assert not t["diverged"] and 0 < t["val_loss"] < math.log(257) + 0.5 and math.isfinite(t["train_loss"])
    assert set(result["optimum"]["val_loss"]) == {"mup", "sp"}
    assert len((tmp_path / "results.csv").read_text().strip().splitlines()) == 9
    assert (tmp_path / "lr_transfer.png").stat().st_size > 10_000
    assert "drift" in capsys.readouterr().out


@pytest.mark.slow
def test_bert_tune_two_trials_and_transfer_to_a_wider_bert(tmp_path, capsys):
    argv = ["sweep", "--arch", "bert", "--mode", "tune", *TINY, "--widths", "32", "--n-trials", "2",
            "--sampler", "random", "--log2-lrs=-10:-6", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    study = load_study("tune", default_storage(tmp_path))
    spec = study.user_attrs["spec"]
    assert spec["recipe"]["arch"] == "bert"
    assert set(spec["space"]) == {"log2_lr", "initializer_range", "output_mult", "attn_mult"}
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and all("input_mult" not in t.params for t in trials)
    assert all(t.user_attrs["hparams"]["input_mult"] == 1.0 and math.isfinite(t.value) for t in trials)
    best = min(trials, key=lambda t: t.value)

    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "bert", "hidden_size": 128, "num_attention_heads": 8,
                                  "num_hidden_layers": 2, "intermediate_size": 512, "max_position_embeddings": 32,
                                  "vocab_size": 257}))
    out = tmp_path / "hparams.json"
    assert cli.main(["transfer", "--study", "tune", "--out", str(tmp_path), "--target-config", str(target),
                     "--output", str(out)]) == 0
    hp = json.loads(out.read_text())
    assert hp["recipe"]["base_width"] == 32
    assert hp["recipe"]["mup"] == {"input_mult": 1.0, **{k: best.params[k] for k in ("output_mult", "attn_mult")}}
    tokens = hp["cost"]["target_tokens"] / hp["source"]["proxy_tokens"]  # the published rule: D^-0.32, same batch
    assert hp["recipe"]["lr"] == pytest.approx(2.0 ** best.params["log2_lr"] * tokens**-0.32)
    assert hp["recipe"]["arch"] == "bert" and hp["recipe"]["width"] == 128
    assert hp["recipe"]["initializer_range"] == best.params["initializer_range"]
    assert hp["source"]["trial"] == best.number and hp["source"]["task"] == "masked_lm"
    assert "may be noise" in hp["notes"][0]  # one seed each: the winner's margin is untested
    notes = hp["notes"][1:]
    assert [n.split(":")[0] for n in notes][:2] == ["learning rate", "warmup tokens"]  # no other note
    assert len(notes) == 3 and "--rule fitted" in notes[2] and hp["cost"]["trials"] == 2
    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_embd": 128, "n_head": 8, "n_layer": 2, "vocab_size": 257}))
    assert cli.main(["transfer", "--study", "tune", "--out", str(tmp_path), "--target-config", str(gpt2)]) == 2
    assert "tuned a bert proxy" in capsys.readouterr().err


def test_bert_spec():
    spec = sw.SweepSpec("grid", Recipe(arch="bert", vocab_size=257), Corpus(tokenizer="bytes", masked=True))
    assert (spec.data.vocab_size, spec.data.mask_id, spec.data.special_ids) == (257, 256, [])
    bpe = sw.SweepSpec("grid", Recipe(arch="bert", vocab_size=512), Corpus(vocab_size=512, masked=True))
    assert (bpe.data.vocab_size, bpe.data.mask_id, bpe.data.special_ids) == (512, 1, [0])  # [MASK] after <|endoftext|>
    assert bpe.masking() == {"mask_id": 1, "special_ids": [0]} and sw.SweepSpec().masking() == {}
    tune = sw.SweepSpec("tune", Recipe(arch="bert", width=64), Corpus(masked=True))
    assert list(tune.space) == ["log2_lr", "initializer_range", "output_mult", "attn_mult"]  # no input_mult
    with pytest.raises(MuPError, match="--input-mult has no effect on bert"):
        sw.SweepSpec("grid", Recipe(arch="bert", mup={"input_mult": 2.0}), Corpus(masked=True))


def test_train_lm_reports_divergence_without_crashing(data):
    model = lm.gpt2_config(32, seq_len=32, vocab_size=256)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = math.nan
    recipe = Recipe(parametrization="sp", width=32, seq_len=32, vocab_size=256, steps=3, batch_size=4)
    r = lm.train_lm(model, recipe, data[0], data[1])
    assert r["diverged"] and r["steps_run"] == 0
    assert r["final_train_loss"] == math.inf and r["final_val_loss"] == math.inf


@pytest.mark.parametrize("args, message", [
    (["--widths", "64,32"], "increasing order"),
    (["--widths", ""], "--widths is empty"),
    (["--log2-lrs=-4:-12:1"], "log2-LR grid is empty"),
    (["--arch", "mamba"], "--arch 'mamba' is not supported"),
    (["--parametrization", "mup,ntk"], "unknown ['ntk']"),
    (["--mode", "tune", "--widths", "32,64"], "exactly one"),
])
def test_cli_bad_input_exits_2(args, message, tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path), "--widths", "32,64", *args]) == 2
    assert message in capsys.readouterr().err


def test_transfer_unknown_study_exits_2(tmp_path, capsys):
    sw.open_study("grid", default_storage(tmp_path), tiny_spec().to_dict())
    assert cli.main(["transfer", "--study", "nope", "--out", str(tmp_path), "--target-config", "x.json"]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "['grid']" in err


def test_parse_log2_lrs():
    assert sw.parse_log2_lrs("-12:-4:1") == [float(x) for x in range(-12, -3)]
    assert sw.parse_log2_lrs("-8:-7:0.5") == [-8.0, -7.5, -7.0]
    assert sw.parse_log2_lrs("-7.5,-6.5") == [-7.5, -6.5]
    assert sw.parse_log2_lrs("-8:-6") == [-8.0, -7.0, -6.0]
    with pytest.raises(MuPError, match="expected a log2-LR range"):
        sw.parse_log2_lrs("a:b")
    # the step's own message, not the generic one (MuPError is a ValueError: it must not be swallowed)
    for text in ("-12:-5:0", "-12:-5:-1"):
        with pytest.raises(MuPError, match="the step must be positive"):
            sw.parse_log2_lrs(text)
    for text in ("-12:inf:1", "-8,nan"):
        with pytest.raises(MuPError, match="finite"):
            sw.parse_log2_lrs(text)
    with pytest.raises(MuPError, match="start:stop or start:stop:step"):
        sw.parse_log2_lrs("-12:-5:1:2")


def test_sweep_spec_fields():
    spec = sw.SweepSpec("grid", Recipe(steps=7, mup={"output_mult": 8.0}, vocab_size=256),
                        Corpus(tokenizer="bytes", vocab_size=999)).to_dict()
    assert list(spec) == ["mode", "recipe", "data", "name"]
    # (weight_decay_timescale, added later, is written only when set: stored studies keep matching)
    assert list(spec["recipe"]) == ["arch", "width", "layers", "head_dim", "seq_len", "vocab_size", "initializer_range",
                                    "config", "parametrization", "base_width", "mup", "sp_init", "optimizer", "lr",
                                    "betas", "eps", "weight_decay", "weight_decay_mode", "decay_norms_and_biases",
                                    "schedule", "warmup_frac", "final_lr_frac", "clip", "batch_size", "steps", "seed"]
    assert list(spec["data"]) == ["tokenizer", "vocab_size", "special_tokens", "masked", "train_file", "val_file",
                                  "dataset", "dataset_config", "text_column", "train_chars", "val_blocks"]
    assert spec["recipe"]["steps"] == 7 and spec["recipe"]["mup"]["output_mult"] == 8.0
    assert spec["data"]["vocab_size"] == 256  # bytes: 256
    assert sw.SweepSpec.from_dict(spec).to_dict() == spec
    tune = sw.SweepSpec("tune", Recipe(width=128), Corpus(), log2_lr_range=(-10.0, -6.0))
    assert tune.to_dict()["recipe"]["width"] == 128 and tune.to_dict()["space"]["log2_lr"] == [-10.0, -6.0]
    hp = {"log2_lr": -8.0, "initializer_range": 0.01, "input_mult": 2.0, "output_mult": 4.0, "attn_mult": 0.5}
    tuned = tune.recipe.replace(mup={"input_mult": 3.0, "output_mult": 3.0, "attn_mult": 3.0}, initializer_range=0.5)
    tuned = sw.SweepSpec("tune", tuned, Corpus()).tune_recipe(hp)  # tuned, not fixed: the trial's values win
    assert (tuned.lr, tuned.initializer_range) == (2.0**-8, 0.01)
    assert dict(tuned.mup) == {"input_mult": 2.0, "output_mult": 4.0, "attn_mult": 0.5}
    assert list(tune.to_dict()["space"]) == ["log2_lr", "initializer_range", "input_mult", "output_mult", "attn_mult"]


def test_storage_of_needs_an_hf_mup_study():
    import optuna

    with pytest.raises(MuPError, match="open_study"):
        storage_of(optuna.create_study())


def test_dataset_folder_through_datasets(tmp_path):
    """--dataset goes through `datasets.load_dataset` (a Hub name online; here a local folder of text files)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.txt").write_text("hello world, a line of text\n" * 200)
    (folder / "validation.txt").write_text("another line of validation text\n" * 20)
    train, val = tiny_spec(corpus={"dataset": str(folder)}).load_data(tmp_path / "out")
    assert train.shape[1] == val.shape[1] == 32 and len(val) == 4
    assert (tmp_path / "out" / "data" / "train.txt").read_text().startswith("hello world")


def test_few_validation_blocks_of_bytes():
    """The validation text cap is per line: WikiText's long paragraphs must not leave it short of 2 blocks."""
    train, val = sw.SweepSpec("grid", Recipe(arch="gpt2", seq_len=32, vocab_size=256),
                              Corpus(tokenizer="bytes", val_blocks=2)).load_data()
    assert val.shape == (2, 32) and train.shape[1] == 32


def test_recipe_fields_build_the_ablations_model_and_optimizer():
    """The Recipe fields of Lingle's ablations: config fields, μP settings, SP fan-in init, Lion, schedule."""
    spec = tiny_spec(arch="llama", initializer_range=32**-0.5,
                     config={"num_key_value_heads": 1, "hidden_act": "relu2"}, mup={"trainable_norm_gains": False},
                     sp_init="fan_in", optimizer="lion", schedule="linear", betas=[0.95, 0.98])
    point = {"width": 64, "log2_lr": -8.0, "seed": 0}
    recipe = spec.grid_recipe({"parametrization": "mup", **point})
    model = recipe.build_model()
    groups = recipe.param_groups(model)
    assert model.config.num_key_value_heads == 1 and model.config.hidden_act == "relu2"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "norm" in n)
    assert {g["mup_optimizer"] for g in groups} == {"adamw"}  # Lion gets the Adam-like rule
    stock = spec.grid_recipe({"parametrization": "sp", **point}).build_model()  # SP: the stock model, N(0, 1/width)
    assert stock.config.initializer_range == pytest.approx(64**-0.5)
    assert not hasattr(stock.config, "mup")
    with pytest.raises(MuPError, match="unknown Recipe field"):
        Recipe.from_dict({"lr_schedule": "cosine"})
    with pytest.raises(MuPError, match="unknown or misplaced setting"):
        tiny_spec(mup={"zero_query": True})


def test_llama_grid_with_options_runs(tmp_path, data):
    spec = tiny_spec(arch="llama", optimizer="lion", schedule="linear")
    study = sw.open_study("llama", default_storage(tmp_path), spec.stamp(data))
    sw.run_grid(study, spec, sw.grid_points([32, 64], [-8.0], ["mup"], 1), data, progress=False)
    rows = [r for r in trial_rows(study) if r["state"] == "COMPLETE"]
    assert len(rows) == 2 and all(math.isfinite(r["val_loss"]) for r in rows)


@pytest.mark.slow
def test_mixtral_grid_trains_a_mixture_of_experts_with_its_router_loss(tmp_path):
    assert cli.main(["sweep", "--arch", "mixtral", *TINY, "--log2-lrs=-8:-7:1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["spec"]["recipe"]["arch"] == "mixtral" and result["counts"]["COMPLETE"] == 8
    for t in result["trials"]:  # below uniform over 257 bytes after 4 steps
        assert not t["diverged"] and 0 < t["val_loss"] < math.log(257) + 0.5
    config = lm_config("mixtral", 64, vocab_size=257)
    assert config.output_router_logits and config.num_local_experts == 4  # the load-balancing loss is trained
