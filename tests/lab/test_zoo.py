"""`hf-mup zoo` (hf_mup/lab/zoo.py): a representative subset of the walk in the suite; the whole walk is a
benchmark-style command whose results (benchmarks/results/zoo/) generate the docs' supported-models page."""
import json
from pathlib import Path

import pytest
import torch

import hf_mup
from hf_mup.lab import zoo, zoo_checks

ROOT = Path(__file__).resolve().parents[2]
WALK = ROOT / "benchmarks" / "results" / "zoo" / "zoo.json"


def _failures(row):
    return {k: v for k, v in row.items() if isinstance(v, dict) and not v.get("ok", True)}


# Each stands for a kind of model the generic description handles: Gemma (√hidden embeddings, (1 + w) norms, tied),
# Mixtral and Qwen2-MoE (experts, routers, a shared expert and its gate), GPT-NeoX (fused per-head q/k/v, partial
# rotary, parallel residual), Phi-3 (fused [q|k|v] and gate/up), DistilBERT (an encoder, its own field names),
# OLMo 2 (QK-norm over the full width), Granite (its own multipliers in the config).
@pytest.mark.parametrize("model_type, coords", [("gemma", True), ("mixtral", True), ("gpt_neox", True),
                                                ("qwen2_moe", False), ("phi3", False), ("distilbert", False),
                                                ("olmo2", False), ("granite", False)])
def test_representative_models_pass_every_check(model_type, coords):
    class_name = dict(zoo.model_types())[model_type]
    row = zoo.check_model(model_type, class_name, coords=coords)
    assert row["status"] == "verified", _failures(row)
    if coords:
        assert row["coord_check"]["sp_logits_slope"] > zoo_checks.DEFAULT_BAND[1]  # the stock model's logits do grow


def test_the_committed_walk_meets_the_goal_and_its_verified_models_still_convert():
    version, rows = zoo.load_rows(WALK)
    verified = [r for r in rows if r["status"] == "verified"]
    assert len(verified) >= 30 and sum(bool(r.get("moe")) for r in verified) >= 3
    # the conversion (planning and its refusals) of every verified type, on the meta device: no drift since the run
    for r in verified:
        config = zoo_checks.tiny_config(r["model_type"], 128)
        with torch.device("meta"):
            hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class=r["class"])
    # no model type that fails a check converts: the package refuses it, naming the check
    for r in (r for r in rows if r["status"] == "failed"):
        failing = [k for k in zoo.CHECKS if k in r and not r[k]["ok"]]
        with pytest.raises(hf_mup.MuPError, match=rf"checks fail on model_type '{r['model_type']}'.*{failing[0]}"), \
                torch.device("meta"):
            hf_mup.MuPModel.from_config(zoo_checks.tiny_config(r["model_type"], 128), base_hidden_size=64,
                                        model_class=r["class"])


def test_the_package_ships_the_committed_walks_verdicts():
    # hf_mup/architectures/verified.json is the walk's verified_list (hf-mup zoo writes it beside zoo.json)
    from hf_mup.architectures.generic import VERIFIED_FILE

    version, rows = zoo.load_rows(WALK)
    assert json.loads(VERIFIED_FILE.read_text()) == zoo.verified_list(rows, version)


def test_support_table_counts_and_lists_each_status():
    rows = [{"model_type": "a", "class": "AForCausalLM", "status": "verified", "moe": True,
             "coord_check": {"slopes": {"logits@3": 0.1}, "worst": "logits@3", "sp_logits_slope": 0.9}},
            {"model_type": "b", "class": "B", "status": "refused", "reason": "a reason"},
            {"model_type": "c", "class": "C", "status": "failed", "fold": {"ok": False, "stock_diff": 0.5}},
            {"model_type": "d", "class": "D", "status": "skipped", "reason": "not built"}]
    text = zoo.support_table(rows, "5.x")
    assert "**1 verified** (1 mixture-of-experts), 1 failing a check, 1 refused, 1 not checked" in text
    assert "| a | AForCausalLM | yes | +0.10 (logits@3) | +0.90 |" in text
    assert "| b | a reason |" in text and "stock_diff" in text and "| d | not built |" in text
