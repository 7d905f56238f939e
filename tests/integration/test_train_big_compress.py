"""benchmarks/train_big_compress.py: the FLOP budget gives every size the same training FLOPs, the Pareto front, and
the --quick run end to end (proxy grid → train two widths → prune / quantize → report), resumed."""
import json
import sys
from pathlib import Path

import pytest
from conftest import require_polarity

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_big_compress as tbc

from hf_mup import MuPError

pytest.importorskip("torchao")


def test_every_size_gets_the_same_flops():
    s = {"widths": [64, 128, 256], "layers": 2, "base_steps": 1000, "batch": 16, "train_chars": None, "val_blocks": 8}
    spec = tbc.make_spec(s)
    budget, steps = tbc.budget_steps(spec, s["widths"])
    assert steps[64] == 1000 and steps[64] > steps[128] > steps[256] >= 1
    for w, n in steps.items():
        per_step = 6 * tbc.n_params(spec, w) * spec.recipe.batch_size * spec.recipe.seq_len
        assert budget - per_step < n * per_step <= budget  # within one step of the budget
    with pytest.raises(MuPError, match="smaller than one training step of width 128"):
        tbc.budget_steps(tbc.make_spec({**s, "base_steps": 1}), s["widths"])


def test_wallclock_budget_gives_each_size_the_base_widths_seconds():
    s = {"widths": [64, 128, 256], "layers": 2, "base_steps": 100, "batch": 16, "train_chars": None, "val_blocks": 8}
    spec = tbc.make_spec(s)
    assert spec.recipe.steps == 100
    budget, steps = tbc.wallclock_steps(spec, [64, 128, 256], {64: 0.05, 128: 0.08, 256: 0.2})
    assert budget == pytest.approx(5.0) and steps == {64: 100, 128: 62, 256: 25}
    with pytest.raises(MuPError, match="shorter than one training step of width 256"):
        tbc.wallclock_steps(tbc.make_spec({**s, "base_steps": 1}), [64, 256], {64: 0.05, 256: 0.2})


def test_pareto_front():
    rows = [{"bytes": 10, "val_loss": 5.0}, {"bytes": 20, "val_loss": 4.0}, {"bytes": 15, "val_loss": 6.0},
            {"bytes": 30, "val_loss": 4.5}, {"bytes": 40, "val_loss": 3.0}]
    assert [r["bytes"] for r in tbc.pareto(rows)] == [10, 20, 40]


@pytest.mark.slow
def test_quick_run(tmp_path):
    argv = ["--quick", "--out", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    assert tbc.main(argv) == 0
    result = json.loads((tmp_path / "res_quick" / "results.json").read_text())
    assert len(result["rows"]) == 2 * 2 * 2 and any(r["pareto"] for r in result["rows"])
    flops = [r["flops"] for r in result["training"].values()]
    assert max(flops) <= result["budget_flops"]
    by = {(r["width"], r["sparsity"], r["format"]): r for r in result["rows"]}
    assert by[(64, 0.5, "fp32")]["nonzeros"] < by[(64, 0.0, "fp32")]["nonzeros"]
    assert by[(64, 0.0, "int8")]["bytes"] < by[(64, 0.0, "fp32")]["bytes"]
    assert (tmp_path / "res_quick" / "loss_vs_bytes.png").stat().st_size > 10_000
    evaluations = (tmp_path / "work_quick" / "evaluations.json").read_text()
    assert tbc.main(argv) == 0  # resumed: nothing retrained or re-evaluated
    assert (tmp_path / "work_quick" / "evaluations.json").read_text() == evaluations


@pytest.mark.slow
def test_quick_polarity_run(tmp_path):
    """BERT pretrained for the same FLOPs per width, fine-tuned on sentence polarity (the base width's LR copied),
    then compressed: accuracies in [0, 1] against inference bytes."""
    require_polarity()
    argv = ["--quick", "--task", "polarity", "--out", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    assert tbc.main(argv) == 0
    result = json.loads((tmp_path / "res_polarity_quick" / "results.json").read_text())
    assert result["finetuning"]["lr"] == 1e-3 and set(result["finetuning"]["accuracy"]) == {"32", "64"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and "val_loss" not in r for r in result["rows"])
    assert (tmp_path / "work_polarity_quick" / "width64" / "finetuned" / "config.json").exists()


@pytest.mark.slow
def test_quick_wallclock_run(tmp_path):
    """--budget seconds: steps from the measured seconds per step, kept in the work folder so a rerun trains the same."""
    argv = ["--quick", "--budget", "seconds", "--out", str(tmp_path / "res"), "--work", str(tmp_path / "work")]
    assert tbc.main(argv) == 0
    result = json.loads((tmp_path / "res_seconds_quick" / "results.json").read_text())
    timing = json.loads((tmp_path / "work_seconds_quick" / "seconds_per_step.json").read_text())
    assert result["budget"] == "seconds" and result["budget_flops"] is None
    assert {int(w): v for w, v in timing.items()} == {int(w): v for w, v in result["seconds_per_step"].items()}
    for w, record in result["training"].items():
        assert record["steps"] == int(result["budget_seconds"] / timing[w] + 1e-9)
