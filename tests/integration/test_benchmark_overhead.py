"""Smoke test of benchmarks/overhead.py: the tiniest run, and the one exact check it makes (memory)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_overhead_quick_tiny(tmp_path):
    out = tmp_path / "overhead_cpu.json"
    results = load_script().main([
        "--quick", "--widths", "128", "--layers", "1", "--seq", "16", "--batch", "2", "--vocab", "128",
        "--warmup", "1", "--rounds", "2", "--bootstrap", "50", "--threads", "1", "--out", str(out),
    ])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    assert {"config", "environment", "cases", "summary"} <= data.keys()
    assert {"torch", "transformers", "cpu_count"} <= data["environment"].keys()
    assert [(c["model"], c["width"]) for c in data["cases"]] == [("gpt2", 128), ("bert", 128)]
    for case in data["cases"]:
        assert set(case["variants"]) == {"stock", "mup", "mup_input_mult"}
        assert set(case["comparisons"]) == {"mup", "mup_input_mult"}
        stock = case["variants"]["stock"]
        for name, comp in case["comparisons"].items():
            assert {"time_ratio", "time_ratio_ci95", "paired_ratio_iqr", "saved_for_backward_ratio"} <= comp.keys()
            mup = case["variants"][name]
            assert mup["timing"]["n"] == 2 and mup["timing"]["median_ms"] > 0
            # the exact, deterministic part: μP saves the same bytes for backward and holds the same state
            assert mup["memory"]["saved_for_backward_bytes"] == stock["memory"]["saved_for_backward_bytes"] > 0
            assert mup["memory"]["saved_activation_bytes"] == stock["memory"]["saved_activation_bytes"]
            for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
                assert mup["memory"][key] == stock["memory"][key] > 0
            # SDPA is the attention in both, once per layer, with μP's own scale
            assert mup["attention"]["sdpa_calls_forward"] == stock["attention"]["sdpa_calls_forward"] == 1
            assert mup["attention"]["sdpa_scales"] != stock["attention"]["sdpa_scales"]
            assert mup["attention"]["sdpa_kernel_nodes"] == stock["attention"]["sdpa_kernel_nodes"] != {}
            assert comp["memory_equal"] and comp["sdpa_in_both"]
        assert case["variants"]["mup_input_mult"]["hooks"]["embedding_hooks"]
        assert 0 < case["variants"]["mup"]["hooks"]["guard_us_per_forward"] < mup["timing"]["median_ms"] * 1e3
