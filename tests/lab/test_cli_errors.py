"""Bad input to `hf-mup`: one clear line `hf-mup: error: ...` on stderr, exit code 2, no traceback."""
import json
import os
import subprocess
import sys

import pytest

from hf_mup import MuPError
from hf_mup.lab import cli
from hf_mup.lab import sweep as sw


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-mup: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


@pytest.mark.parametrize("lrs", ["--log2-lrs=-12:-5:0", "--log2-lrs=-12:-5:-1"])
def test_log2_lr_step_keeps_its_message(lrs, tmp_path, capsys):
    assert cli.main(["sweep", "--widths", "32,64", lrs, "--out", str(tmp_path)]) == 2
    assert "the step must be positive" in _error_line(capsys)


def test_tune_with_zero_trials_is_refused(tmp_path, capsys):
    argv = ["sweep", "--mode", "tune", "--widths", "32", "--n-trials", "0", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "--n-trials must be at least 1, got 0" in _error_line(capsys)
    assert not (tmp_path / "results.csv").exists()
    with pytest.raises(MuPError, match="--n-trials must be at least 1"):  # the library refuses too
        sw.run_tune(None, {}, 0, None)


@pytest.mark.parametrize("name", ["missing.json", "some/deep/folder/config", "./nothing_here"])
def test_inspect_missing_path(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", name, "--base-hidden-size", "64"]) == 2
    line = _error_line(capsys)
    assert name in line and "no such file or folder" in line


def test_inspect_hub_name_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: no network
    assert cli.main(["inspect", "hf-mup-tests/no-such-model", "--base-hidden-size", "64"]) == 2
    assert "cannot load a config from 'hf-mup-tests/no-such-model'" in _error_line(capsys)


def test_inspect_folder_without_config(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path), "--base-hidden-size", "64"]) == 2
    assert f"cannot load a config from {str(tmp_path)!r} as the folder" in _error_line(capsys)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not a readable JSON file"),
    ("[1, 2]", "has no model_type"),
    (json.dumps({"model_type": "no-such-architecture"}), "is not a valid transformers config"),
])
def test_inspect_bad_config_file(text, message, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert cli.main(["inspect", str(path), "--base-hidden-size", "64"]) == 2
    line = _error_line(capsys)
    assert message in line and str(path) in line


@pytest.mark.slow
def test_inspect_missing_file_in_a_fresh_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hf_mup", "inspect", "missing.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "hf-mup: error: missing.json: no such file or folder (expected a config.json, a checkpoint folder or a Hub "
        "model name)."]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1"], "the μP verdict needs at least 2 seeds"),
    (["--seeds", "1", "--parametrization", "mup_global_lr,mup"], "the μP verdict needs at least 2 seeds"),
    (["--seeds", "0", "--parametrization", "sp"], "--seeds must be at least 1"),
    (["--steps", "0"], "--steps and --seeds must be at least 1"),
])
def test_coord_check_needs_seeds_for_a_verdict(argv, message, tmp_path, capsys):
    assert cli.main(["coord-check", *argv, "--out", str(tmp_path)]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "coord_check.csv").exists()  # refused before any work


@pytest.mark.parametrize("argv, message", [
    (["--arch", "t5"], "--arch 't5' is not supported by the sweep; use one of gpt2, bert"),
    (["--arch", "bert", "--input-mult", "2"], "--input-mult has no effect on bert"),
])
def test_sweep_arch_errors(argv, message, tmp_path, capsys):
    assert cli.main(["sweep", "--widths", "32,64", *argv, "--out", str(tmp_path)]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "sweep.db").exists()  # refused before any work


@pytest.mark.parametrize("argv, message", [
    (["--widths", "32,64", "--brackets", "2"], "--brackets splits --pruner sha's trials: use it with --mode tune"),
    (["--mode", "tune", "--widths", "32", "--brackets", "2"], "--brackets 2 splits --pruner sha's trials"),
    (["--mode", "tune", "--widths", "32", "--pruner", "asha", "--checkpoint-dir", "ck"], "--checkpoint-dir is where"),
    (["--mode", "tune", "--widths", "32", "--pruner", "sha", "--n-trials", "4", "--brackets", "5"],
     "--brackets 5: between 1 and --n-trials (4)"),
    (["--mode", "tune", "--widths", "32", "--pruner", "sha", "--steps", "20", "--min-steps", "10"],
     "--min-steps 10 leaves successive halving no rung before the end of the trial's 20 steps: use at most a third "
     "of them (6)"),
    (["--mode", "tune", "--widths", "32", "--pruner", "sha", "--eval-every", "4"], "--eval-every is how often a pruner"),
    (["--mode", "tune", "--widths", "32", "--eval-every", "4"], "use it with --mode tune and --pruner asha"),
])
def test_successive_halving_options_are_refused_where_they_do_nothing(argv, message, tmp_path, capsys):
    assert cli.main(["sweep", *argv, "--out", str(tmp_path)]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "sweep.db").exists()  # refused before any work
