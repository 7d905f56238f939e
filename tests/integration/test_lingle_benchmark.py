"""benchmarks/lingle_ablations.py end to end on its --quick setting (2 widths, 2 LRs, 1 seed, a few steps)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import lingle_ablations as la


def test_every_ablation_is_known_to_lingle_and_builds():
    assert set(la.ABLATIONS) == set(la.LINGLE)
    s = {"widths": [16, 64], "log2_lrs": [-8.0], "seeds": 1, "steps": 8, "batch": 16, "train_chars": None,
         "val_blocks": 4}
    specs = {name: la.spec_for(name, s, 16) for name in la.ABLATIONS}
    recipe = {name: spec.recipe for name, (spec, _) in specs.items()}
    assert recipe["baseline"].mup["attn_mult"] == pytest.approx(0.25)  # q·k/d with d = 16
    assert recipe["attention_1_over_sqrt_d"].mup["attn_mult"] == 1.0
    assert (recipe["batch_4x_larger"].batch_size, recipe["batch_4x_larger"].steps) == (64, 2)
    assert (recipe["batch_4x_smaller"].batch_size, recipe["batch_4x_smaller"].steps) == (4, 32)
    assert specs["standard_parametrization"][1] == "sp"
    assert la.options_for("baseline")["mup"] == {"trainable_norm_gains": False, "zero_init_query": False,
                                                 "zero_init_readout": False}
    flags = ("trainable_norm_gains", "zero_init_query", "zero_init_readout")
    assert {k: recipe["baseline"].mup[k] for k in flags} == la.options_for("baseline")["mup"]
    assert recipe["trainable_gains"].mup["trainable_norm_gains"] is True
    assert recipe["lion"].optimizer == "lion" and recipe["lion"].betas == (0.95, 0.98)


def test_verdict_is_lingles_rule():
    same = {"16": {"log2_lr": -6.0}, "64": {"log2_lr": -6.0}, "256": {"log2_lr": -6.0}}
    moved = {**same, "256": {"log2_lr": -8.0}}
    assert la.verdict(same)["verdict"] == "transfers" and la.verdict(same)["spread"] == 0
    assert la.verdict(moved)["verdict"] == "fails" and la.verdict(moved)["spread"] == 2
    assert la.verdict({**same, "64": {"log2_lr": None}})["verdict"] is None  # every width diverged there: no verdict
    assert la.verdict({"16": {"log2_lr": -6.0}}, [16, 64, 256])["verdict"] is None  # a study not finished yet


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path):
    assert la.main(["--quick", "--only", "baseline,multi_query,standard_parametrization", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "lingle_ablations_quick.json").read_text())
    assert list(summary["results"]) == ["baseline", "multi_query", "standard_parametrization"]
    for r in summary["results"].values():
        assert set(r["argmin_log2_lr"]) == {"16", "64"} and r["verdict"] in ("transfers", "fails")
    table = (tmp_path / "lingle_ablations_quick.md").read_text()
    assert "| multi_query |" in table and "Agreement with Lingle" in table
    assert (tmp_path / "lingle_ablations_quick.png").stat().st_size > 10_000
    # rerun: every point is done, nothing trains again
    assert la.main(["--quick", "--only", "baseline", "--out", str(tmp_path)]) == 0
