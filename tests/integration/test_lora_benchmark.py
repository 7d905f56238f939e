"""benchmarks/lora_transfer.py end to end on its --quick setting: pretraining at two widths, every way of fine-tuning
(μP LoRA, plain LoRA, LoRA+, full), the report."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import lora_transfer as lt

pytest.importorskip("peft")


def test_the_full_setting_spans_8x_width_with_two_seeds():
    s = lt.settings(quick=False)
    assert (s["widths"][0], s["widths"][-1] / s["widths"][0], s["base"], s["seeds"]) == (32, 8, 32, 2)
    assert set(s["lrs"]) == set(lt.WAYS) and all(len(v) >= 7 for v in s["lrs"].values())


@pytest.mark.slow
def test_quick_run_writes_every_way(tmp_path):
    assert lt.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "lora_transfer_quick.json").read_text())
    assert set(r["summary"]) == set(lt.WAYS)
    for way, row in r["summary"].items():
        for width, p in row["per_width"].items():
            assert p["optimum"]["x"] is not None and math.isfinite(p["best_loss"]), (way, width)
    runs = (tmp_path / "lora_transfer_quick_runs.jsonl").read_text().splitlines()
    assert len(runs) == len(lt.WAYS) * 2 * 2  # ways × widths × LRs, one seed
    # At the base width μP's adapter rules are plain LoRA's: the same LR for A and B, so the same run.
    by = {(j["way"], j["width"], j["log2_lr"]): j["loss"] for j in map(json.loads, runs)}
    assert by["mup", 32, -8.0] == pytest.approx(by["plain", 32, -8.0], abs=1e-6)
    assert by["mup", 64, -6.0] != pytest.approx(by["plain", 64, -6.0], abs=1e-6)
    assert "| mup |" in (tmp_path / "lora_transfer_quick.md").read_text()
    assert (tmp_path / "lora_transfer_quick.png").stat().st_size > 10_000
