"""A plain accelerate loop with μP groups: 2 processes (gloo, CPU), DDP and FSDP2, equal one process on the doubled
batch, with AdamW and with hf_mup's Muon. Runs tests/scripts/accelerate_train.py under `accelerate launch`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.multiprocess  # `accelerate launch` / torch.distributed.run with 2 processes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "accelerate_train.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
OPTIMIZERS = "adamw,muon"  # each launch trains a fresh model with each


def _run(out: Path, *launch_args: str, script_args=()) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(ACCELERATE), "launch", *launch_args, str(SCRIPT), "--out", str(out), *script_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return json.loads(out.read_text())


def _one_process(out: Path) -> dict:
    return _run(out, "--cpu", "--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                script_args=["--batch-size", "8", "--optimizers", OPTIMIZERS])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _one_process(tmp_path_factory.mktemp("single") / "out.json")


def _two_processes(tmp_path, *script_args):
    port = str(free_port())
    return _run(tmp_path / "out.json", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
                port, "--mixed_precision", "no", "--dynamo_backend", "no",
                script_args=["--batch-size", "4", "--optimizers", OPTIMIZERS, *script_args])


def _assert_same_training(result: dict, single: dict) -> None:
    assert result["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert result["param_sums"].keys() == single["param_sums"].keys()
    for name, value in single["param_sums"].items():
        # Adam divides tiny gradients (zero-init query biases) by their RMS: allreduce order shows at 1e-5.
        assert result["param_sums"][name] == pytest.approx(value, rel=1e-4), name


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_equal_one_on_doubled_batch(single, tmp_path, mode):
    result = _two_processes(tmp_path, *(["--fsdp"] if mode == "fsdp2" else []))
    assert result["num_processes"] == 2 and single["num_processes"] == 1
    assert result["process_group_alive"] is False  # torn down before exit: no abort from a rank at exit
    adamw, muon = result["adamw"], result["muon"]
    assert adamw["sharded"] == muon["sharded"] == (mode == "fsdp2")
    _assert_same_training(adamw, single["adamw"])
    # μP survived the wrapping: per-tensor LRs (η/m, m = 2), the readout multiplier output_mult/m, 1/d attention.
    assert adamw["lr_mults"] == [0.5, 1.0]
    assert adamw["readout_scale"] == 4.0 / 2
    assert adamw["attn_scaling"] == [16**-0.5] * 2
    # Muon orthogonalises each hidden matrix's whole (allreduced) gradient: under DDP every process holds the matrix;
    # under FSDP2 each holds a shard (a DTensor) and the Newton-Schulz iteration runs on DTensors.
    _assert_same_training(muon, single["muon"])
    assert muon["lr_mults"] == pytest.approx([2**-0.5, 1.0])  # Muon's 1/√m (match_rms_adamw), Adam's η
