"""The pipeline's pretraining under `accelerate launch` with 2 processes (gloo, CPU): the preset's batch is the
global batch, so both rows end where one process ends on the same steps, and only the main process writes files."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import free_port
from lab.test_pipeline import MINI  # tests/ is on sys.path (its conftest.py)
from safetensors.torch import load_file

from hf_mup.lab.pipeline import Pipeline

pytestmark = pytest.mark.multiprocess  # `accelerate launch` / torch.distributed.run with 2 processes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pipeline_stages.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
PRESET = replace(MINI, pretrain_steps=6, pretrain_batch=8, tasks=())


def _launch(out: Path, preset_file: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
           str(preset_file), "--output_dir", str(out), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_pretrain_as_one_on_the_same_global_batch(tmp_path):
    one = tmp_path / "one"
    Pipeline(PRESET, one, progress=False).run(("search", "transfer", "pretrain"))
    two = tmp_path / "two"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("pretrain"))
    state = json.loads((two / "stages.json").read_text())
    del state["pretrain"]
    (two / "stages.json").write_text(json.dumps(state))
    preset_file = tmp_path / "preset.json"
    preset_file.write_text(json.dumps(PRESET.to_dict()))

    proc = _launch(two, preset_file, "--stages", "pretrain")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert json.loads((two / "stages.json").read_text())["pretrain"]["done"]
    for row in ("mutransfer", "megatron"):
        a = json.loads((one / "pretrain" / row / "final_metrics.json").read_text())
        b = json.loads((two / "pretrain" / row / "final_metrics.json").read_text())
        train = lambda r: [h["loss"] for h in r["history"] if "loss" in h]  # noqa: E731
        assert len(train(b)) == len(train(a)) > 0
        assert train(b) == pytest.approx(train(a), abs=1e-4), row
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-4), row
        wa, wb = (load_file(d / "pretrain" / row / "model.safetensors") for d in (one, two))
        assert wa.keys() == wb.keys()
        for name in wa:
            torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-4, msg=f"{row}: {name}")


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_stage(tmp_path):
    preset_file = tmp_path / "preset.json"
    preset_file.write_text(json.dumps(replace(PRESET, pretrain_batch=7).to_dict()))
    proc = _launch(tmp_path / "out", preset_file, "--stages", "search,transfer,pretrain")
    assert proc.returncode != 0
    assert "the pretraining batch 7 does not split over 2 processes" in proc.stderr
    assert not (tmp_path / "out" / "stages.json").exists()  # refused before the first stage started
