"""benchmarks/horizon_transfer.py end to end on its --quick setting: every stage (the proxy's horizon grid, the
target's LR and timescale grids, each rule's transfer trained at the target) at toy sizes."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import horizon_transfer as ht


def test_the_target_differs_from_the_proxy_on_every_axis():
    s = ht.settings(quick=False)
    proxy = s["proxy"]
    assert (s["target_width"] / proxy.width, s["target_layers"] / proxy.layers) == (8, 2)
    assert (s["target_batch"] / proxy.batch_size, s["target_tokens"] / proxy.tokens) == (2, 16)
    assert proxy.mup["base_num_layers"] == proxy.layers  # depth scaling (CompleteP) carries the LR to 4 layers
    keys = {(p["batch_size"], p["tokens"], p["timescale"]) for p in ht.proxy_points(s)}
    assert (s["target_batch"], s["target_tokens"], 1.0) in keys  # the fit measures the target's batch and tokens


@pytest.mark.slow
def test_quick_run_writes_every_rule(tmp_path):
    assert ht.main(["--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "horizon_transfer_quick.json").read_text())
    assert set(r["rules"]) == {"copy", "published", "fitted"}
    for rule, row in r["rules"].items():
        assert row["val_loss"] is not None and math.isfinite(row["regret"]), rule
        assert row["log2_lr_distance"] == pytest.approx(abs(row["log2_lr"] - r["target_optimum"]["log2_lr"]))
    copy, published = r["rules"]["copy"], r["rules"]["published"]
    assert published["log2_lr"] == pytest.approx(copy["log2_lr"] + 0.5 * 1 - 0.32 * 2, abs=1e-3)  # 2× batch, 4× tokens
    assert "| fitted |" in (tmp_path / "horizon_transfer_quick.md").read_text()
    assert (tmp_path / "horizon_transfer_quick.png").stat().st_size > 10_000
    assert (tmp_path / "horizon_transfer_quick_proxy" / "horizon_fit.json").exists()
