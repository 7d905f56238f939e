"""`hf-mup coord-check`: outputs, verdict exit codes, bad input, and a correct μP model passing the default command."""
import csv

import pytest

from hf_mup.lab import cli

SMALL = ["--widths", "32,64,128", "--steps", "2", "--seeds", "2", "--seq-len", "16", "--batch-size", "4"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_coord_check_cli_passes_and_writes(tmp_path, capsys):
    assert cli.main(["coord-check", *SMALL, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "lm_head" in out
    rows = list(csv.DictReader(open(tmp_path / "coord_check.csv")))
    assert {r["parametrization"] for r in rows} == {"mup", "sp"}
    assert {int(r["width"]) for r in rows} == {32, 64, 128}
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000


@pytest.mark.slow
def test_coord_check_cli_fails_outside_band(tmp_path, capsys):
    # A band no real run fits in: the exit code must say so (users put this command in their CI).
    code = cli.main(["coord-check", *SMALL, "--parametrization", "mup", "--low", "-0.001", "--high", "0.001",
                     "--out", str(tmp_path)])
    assert code == 1 and "FAIL" in capsys.readouterr().out


@pytest.mark.slow
def test_one_seed_without_verdict(tmp_path, capsys):
    # a plot of SP alone has no verdict: one seed is enough
    assert cli.main(["coord-check", *SMALL, "--seeds", "1", "--parametrization", "sp", "--out", str(tmp_path)]) == 0
    assert "mean of 1 seed(s)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "coord_check.csv")))
    assert {r["seed"] for r in rows} == {"0"}


@pytest.mark.parametrize("arch, first_seed", [("gpt2", 100), ("gpt2", 200), ("bert", 300)])
@pytest.mark.slow
def test_default_command_passes_a_correct_model(arch, first_seed, tmp_path, capsys):
    """The default settings (widths 64-512, 3 steps, 3 seeds) are a CI gate: a correct μP model passes whatever
    the seeds (seeds 0-35 measured; see hf_mup/coord_check.py). SP is left out: it has no say in the verdict."""
    argv = ["coord-check", "--arch", arch, "--parametrization", "mup", "--first-seed", str(first_seed),
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0, capsys.readouterr().out
    assert "PASS" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "coord_check.csv")))
    assert {int(r["seed"]) for r in rows} == {first_seed, first_seed + 1, first_seed + 2}
    assert {int(r["width"]) for r in rows} == {64, 128, 256, 512} and {int(r["step"]) for r in rows} == {0, 1, 2}


@pytest.mark.parametrize("argv, message", [
    (["--widths", "128,64"], "increasing order"),
    (["--widths", ""], "two or more"),
    (["--widths", "64"], "two or more"),
    (["--widths", "a,b"], "comma-separated integers"),
    (["--arch", "t5"], "not supported"),
    (["--parametrization", "mu"], "unknown ['mu']"),
    (["--widths", "40,80"], "multiple of --head-dim"),
])
def test_coord_check_cli_bad_input(argv, message, tmp_path, capsys):
    assert cli.main(["coord-check", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
