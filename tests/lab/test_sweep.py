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
from hf_mup.lab.transfer import transfer

TINY = ["--widths", "32,64", "--base-width", "32", "--steps", "4", "--batch-size", "8", "--seq-len", "32",
        "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--seeds", "1", "--threads", "1",
        "--no-progress"]


def tiny_spec(**kw):
    return sw.make_spec(**{"steps": 4, "batch_size": 8, "seq_len": 32, "base_width": 32, "tokenizer": "bytes",
                           "train_chars": 20000, "val_blocks": 4, **kw})


@pytest.fixture(scope="module")
def data():
    return sw.load_data(tiny_spec())


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
    assert hp["training_args"]["learning_rate"] == 2.0 ** best["log2_lr"]
    assert hp["source"]["proxy_width"] == 64 and hp["mup"]["output_mult"] == 1.0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.slow
def test_resume_after_kill_runs_each_point_once(tmp_path, data):
    spec = tiny_spec()
    points = sw.grid_points([32, 64], [-8.0, -7.0], ["mup"], seeds=1)
    url = sw.default_storage(tmp_path)
    study = sw.open_study("g", url, spec, heartbeat=1)

    def crash(st):  # the sweep dies after its first trial
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sw.run_grid(study, spec, points, data, progress=False, after_trial=crash)
    first = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(first) == 1
    # two workers killed mid-trial: their trials stay RUNNING, one after a heartbeat, one before its first
    killed = [study.ask(), study.ask()]
    sw.storage_of(study).record_heartbeat(sw.trial_id(study, killed[0].number))
    assert all(study.get_trials()[t.number].state == TrialState.RUNNING for t in killed)

    study = sw.open_study("g", url, spec, heartbeat=1)  # a new process, same arguments
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
    sw.run_grid(sw.open_study("g", url, spec, heartbeat=1), spec, points, data, progress=False)
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
    url = sw.default_storage(tmp_path)
    sw.open_study("s", url, tiny_spec())
    with pytest.raises(MuPError, match=r"study 's' was made with steps=4; you asked steps=5: use another --study"):
        sw.open_study("s", url, tiny_spec(steps=5))
    sw.open_study("s", url, tiny_spec())  # the same spec reopens


@pytest.mark.slow
def test_tune_three_trials_and_transfer(tmp_path, data, capsys):
    spec = tiny_spec(mode="tune", proxy_width=32)
    url = sw.default_storage(tmp_path)
    study = sw.open_study("tune", url, spec)
    study.sampler = sw.make_sampler("random", 0, len(study.trials))
    sw.run_tune(study, spec, 3, data, progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    sw.run_tune(study, spec, 3, data, progress=False)
    assert len(study.trials) == 3  # resumed: nothing to add
    result = sw.report(study, tmp_path)
    best = min(study.trials, key=lambda t: t.value)
    assert result["best"]["number"] == best.number

    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model_type": "gpt2", "n_embd": 256, "n_head": 16, "n_layer": 2,
                                  "n_positions": 32, "vocab_size": 256}))
    out = tmp_path / "hparams.json"
    assert cli.main(["transfer", "--study", "tune", "--storage", url, "--target-config", str(target),
                     "--target-tokens", "1e6", "--output", str(out)]) == 0
    hp = json.loads(out.read_text())
    assert hp["mup"] == {"base_hidden_size": 32, **{k: best.params[k] for k in ("output_mult", "input_mult",
                                                                                 "attn_mult")}}
    assert hp["training_args"]["learning_rate"] == 2.0 ** best.params["log2_lr"]
    assert hp["model_config"]["initializer_range"] == best.params["initializer_range"]
    assert hp["source"]["trial"] == best.number and hp["source"]["proxy_width"] == 32
    cost = hp["source"]["tuning_cost"]
    assert cost["tuning_flops"] == sum(t.user_attrs["flops"] for t in study.trials)
    assert math.isclose(cost["fraction"], cost["tuning_flops"] / (6 * cost["target_params"] * 1e6))
    assert "tuning cost" in capsys.readouterr().out

    _, cost = transfer(sw.load_study("tune", url), cli.load_config(str(target)))
    assert cost["target_tokens"] == 20 * cost["target_params"]


@pytest.mark.slow
def test_bert_grid_cli_writes_finite_mlm_losses(tmp_path, capsys):
    assert cli.main(["sweep", "--arch", "bert", *TINY, "--log2-lrs=-8:-7:1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["spec"]["arch"] == "bert" and result["spec"]["vocab_size"] == 257 and result["spec"]["mask_id"] == 256
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
    study = sw.load_study("tune", sw.default_storage(tmp_path))
    spec = study.user_attrs["spec"]
    assert spec["arch"] == "bert" and set(spec["space"]) == {"log2_lr", "initializer_range", "output_mult", "attn_mult"}
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
    assert hp["mup"] == {"base_hidden_size": 32, "input_mult": 1.0,
                         **{k: best.params[k] for k in ("output_mult", "attn_mult")}}
    assert hp["training_args"]["learning_rate"] == 2.0 ** best.params["log2_lr"]
    assert hp["model_config"]["model_type"] == "bert" and hp["model_config"]["hidden_size"] == 128
    assert hp["model_config"]["initializer_range"] == best.params["initializer_range"]
    assert hp["source"]["trial"] == best.number and hp["source"]["task"] == "masked_lm"
    assert hp["source"]["notes"] == [] and hp["source"]["tuning_cost"]["trials"] == 2
    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_embd": 128, "n_head": 8, "n_layer": 2, "vocab_size": 257}))
    assert cli.main(["transfer", "--study", "tune", "--out", str(tmp_path), "--target-config", str(gpt2)]) == 2
    assert "tuned a bert proxy" in capsys.readouterr().err


def test_bert_spec():
    spec = sw.make_spec("grid", "bert", tokenizer="bytes")
    assert (spec["vocab_size"], spec["mask_id"], spec["special_ids"]) == (257, 256, [])
    bpe = sw.make_spec("grid", "bert", vocab_size=512)
    assert (bpe["vocab_size"], bpe["mask_id"], bpe["special_ids"]) == (512, 1, [0])  # [MASK] after <|endoftext|>
    assert sw.masking(bpe) == {"mask_id": 1, "special_ids": [0]} and sw.masking(sw.make_spec()) == {}
    tune = sw.make_spec("tune", "bert", proxy_width=64)
    assert list(tune["space"]) == ["log2_lr", "initializer_range", "output_mult", "attn_mult"]  # no input_mult
    with pytest.raises(MuPError, match="--input-mult has no effect on bert"):
        sw.make_spec("grid", "bert", input_mult=2.0)


def test_train_lm_reports_divergence_without_crashing(data):
    model = lm.gpt2_config(32, seq_len=32, vocab_size=256)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = math.nan
    r = lm.train_lm(model, model.parameters(), data[0], data[1], steps=3, batch_size=4)
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
    sw.open_study("grid", sw.default_storage(tmp_path), tiny_spec())
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


def test_make_spec_fields():
    spec = sw.make_spec("grid", steps=7, output_mult=8.0, tokenizer="bytes", vocab_size=999)
    assert list(spec) == ["mode", "arch", "layers", "head_dim", "seq_len", "steps", "batch_size", "warmup_frac",
                          "final_lr_frac", "clip", "base_width", "input_mult", "output_mult", "attn_mult",
                          "initializer_range", "tokenizer", "vocab_size", "train_file", "val_file", "dataset",
                          "dataset_config", "train_chars", "val_blocks"]
    assert spec["steps"] == 7 and spec["output_mult"] == 8.0 and spec["vocab_size"] == 256  # bytes: 256
    tune = sw.make_spec("tune", proxy_width=128, log2_lr_range=(-10.0, -6.0))
    assert tune["proxy_width"] == 128 and tune["space"]["log2_lr"] == [-10.0, -6.0]
    assert not {"input_mult", "output_mult", "attn_mult", "initializer_range"} & set(tune)  # tuned, not fixed
    assert list(tune["space"]) == ["log2_lr", "initializer_range", "input_mult", "output_mult", "attn_mult"]


def test_storage_of_needs_an_hf_mup_study():
    import optuna

    with pytest.raises(MuPError, match="open_study"):
        sw.storage_of(optuna.create_study())


def test_dataset_folder_through_datasets(tmp_path):
    """--dataset goes through `datasets.load_dataset` (a Hub name online; here a local folder of text files)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.txt").write_text("hello world, a line of text\n" * 200)
    (folder / "validation.txt").write_text("another line of validation text\n" * 20)
    train, val = sw.load_data(tiny_spec(dataset=str(folder)), tmp_path / "out")
    assert train.shape[1] == val.shape[1] == 32 and len(val) == 4
    assert (tmp_path / "out" / "data" / "train.txt").read_text().startswith("hello world")


def test_few_validation_blocks_of_bytes():
    """The validation text cap is per line: WikiText's long paragraphs must not leave it short of 2 blocks."""
    train, val = sw.load_data(sw.make_spec("grid", "gpt2", tokenizer="bytes", seq_len=32, val_blocks=2))
    assert val.shape == (2, 32) and train.shape[1] == 32


def test_options_build_the_ablations_model_and_optimizer():
    """make_spec's options (Lingle's ablations): config fields, μP settings, SP fan-in init, Lion, decay."""
    spec = tiny_spec(arch="llama", initializer_range=32**-0.5, options={
        "config": {"num_key_value_heads": 1, "hidden_act": "relu2"}, "mup": {"trainable_norm_gains": False},
        "sp_init": "fan_in", "optimizer": "lion", "decay": "linear", "betas": [0.95, 0.98]})
    hp = {"log2_lr": -8.0, "initializer_range": spec["initializer_range"]}
    model, groups = sw.build(spec, 64, "mup", hp, seed=0)
    assert model.config.num_key_value_heads == 1 and model.config.hidden_act == "relu2"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "norm" in n)
    assert {g["mup_optimizer"] for g in groups} == {"adamw"}  # Lion gets the Adam-like rule
    stock, _ = sw.build(spec, 64, "sp", hp, seed=0)  # SP: the stock model, every weight N(0, 1/width)
    assert stock.config.initializer_range == pytest.approx(64**-0.5)
    assert not hasattr(stock.config, "mup")
    with pytest.raises(MuPError, match="unknown sweep option"):
        tiny_spec(options={"lr_schedule": "cosine"})
    with pytest.raises(MuPError, match="unknown μP setting"):
        tiny_spec(options={"mup": {"zero_query": True}})


def test_llama_grid_with_options_runs(tmp_path, data):
    spec = tiny_spec(arch="llama", options={"optimizer": "lion", "decay": "linear"})
    study = sw.open_study("llama", sw.default_storage(tmp_path), spec)
    sw.run_grid(study, spec, sw.grid_points([32, 64], [-8.0], ["mup"], 1), data, progress=False)
    rows = [r for r in sw.trial_rows(study) if r["state"] == "COMPLETE"]
    assert len(rows) == 2 and all(math.isfinite(r["val_loss"]) for r in rows)
