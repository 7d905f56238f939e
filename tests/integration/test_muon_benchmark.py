"""benchmarks/muon_transfer.py end to end on its --quick setting: Muon with and without μP's factor, the report."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import muon_transfer as mt


def test_the_full_setting_spans_8x_width():
    s = mt.settings(quick=False, seeds=1)
    assert (s["widths"][0], s["widths"][-1] / s["widths"][0], s["steps"]) == (64, 8, 150)
    assert set(mt.ROWS) == {"muon", "muon_torch", "adamw"}


@pytest.mark.slow
def test_quick_run_writes_the_rows(tmp_path):
    assert mt.main(["--quick", "--rows", "muon,muon_torch", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "muon_transfer_quick.json").read_text())
    assert set(r["summary"]) == {"muon", "muon_torch"}
    curves = {row: {w: o["curve"] for w, o in opt["optimum"].items()} for row, opt in r["optima"].items()}
    # at the base width μP's Muon factor is 1: the two rows are the same run; at 2× it is 1/√2, so they differ
    assert curves["muon"]["64"] == pytest.approx(curves["muon_torch"]["64"], abs=1e-6)
    assert curves["muon"]["128"] != pytest.approx(curves["muon_torch"]["128"], abs=1e-4)
    assert "| Muon, μP's factor |" in (tmp_path / "muon_transfer_quick.md").read_text()
    assert (tmp_path / "muon_transfer_quick.png").stat().st_size > 10_000


def test_the_adamw_row_is_figure1s_run_only_if_it_trained_the_same_spec(tmp_path):
    s = mt.settings(quick=False, seeds=1)
    row = mt.figure1_adamw(s)
    assert sorted(row["optimum"]) == s["widths"] and row["drift"] is not None
    ref = json.loads(mt.FIGURE1.read_text())
    ref["spec"]["output_mult"] = 1.0
    changed = tmp_path / "lr_transfer.json"
    changed.write_text(json.dumps(ref))
    with pytest.raises(SystemExit, match="output_mult"):
        mt.figure1_adamw(s, changed)
