"""benchmarks/depth_transfer.py end to end on its --quick setting (2 depths, 2 LRs, 1 seed, a few steps)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import depth_transfer as dt


def test_specs_scale_depth_only_where_asked():
    s = {"arch": "gpt2", "width": 32, "depths": [2, 8], "log2_lrs": [-8.0], "half_steps": True, "seeds": 1,
         "steps": 4, "batch": 8, "train_chars": None, "val_blocks": 4}
    complete = dt.spec_for("completep", 8, s, 16)
    assert complete.recipe.layers == 8 and dict(complete.recipe.mup) == {"base_num_layers": 2, "depth_alpha": 1.0}
    assert dt.spec_for("alpha_0.5", 8, s, 16).recipe.mup["depth_alpha"] == 0.5
    assert dict(dt.spec_for("mup", 8, s, 16).recipe.mup) == {} and dict(dt.spec_for("sp", 8, s, 16).recipe.mup) == {}


def test_summary_drift_and_deeper_never_worse():
    curve = lambda a, b: {"-8": a, "-7": b}  # noqa: E731
    per = {2: {"log2_lr": -8.0, "loss": 5.0, "curve": curve(5.0, 5.2)},
           4: {"log2_lr": -7.0, "loss": 4.8, "curve": curve(4.9, 4.8)}}
    r = dt.summarize("x", per)
    assert r["drift"] == 1.0 and r["transferred_log2_lr"] == -8.0
    assert r["loss_at_transferred"] == {2: 5.0, 4: 4.9} and r["deeper_never_worse"] is True
    per[4]["curve"]["-8"] = 5.1
    assert dt.summarize("x", per)["deeper_never_worse"] is False


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path):
    assert dt.main(["--quick", "--only", "mup,completep", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "depth_transfer_quick.json").read_text())
    assert list(summary["results"]) == ["mup", "completep"]
    for r in summary["results"].values():
        assert set(r["argmin_log2_lr"]) == {"2", "4"} and r["drift"] in (0.0, 2.0)
    assert "| completep |" in (tmp_path / "depth_transfer_quick.md").read_text()
    assert (tmp_path / "depth_transfer_quick.png").stat().st_size > 10_000
    assert dt.main(["--quick", "--only", "completep", "--out", str(tmp_path)]) == 0  # resumed: nothing trains again
    assert dt.main(["--quick", "--only", "completep", "--out", str(tmp_path), "--longer", "3"]) == 0
    longer = json.loads((tmp_path / "depth_transfer_quick.json").read_text())["longer"]
    assert longer["steps"] == 3 and set(longer["val_loss"]) == {"completep/L2", "completep/L4"}
    assert dt.main(["--quick", "--only", "completep", "--out", str(tmp_path)]) == 0  # a new report keeps it
    assert json.loads((tmp_path / "depth_transfer_quick.json").read_text())["longer"] == longer
