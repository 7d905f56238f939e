"""recipes/gpt2_wikitext.py --preset tiny: a smoke run offline, --hparams from `hf-mup transfer`, and the process
group torn down at the end of a distributed run."""
import importlib.util
import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch

import hf_mup
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.transfer import Transferred

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "gpt2_wikitext.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("gpt2_wikitext", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_preset_trains_saves_and_resumes(tmp_path):
    hparams = tmp_path / "hparams.json"
    # what `hf-mup transfer` writes: the target's recipe (here of another width, 4096: the preset's shape is trained)
    target = Recipe(width=4096, base_width=64, mup={"output_mult": 2.0}, lr=0.004, initializer_range=0.03)
    Transferred(target).save(hparams)
    common = ["--preset", "tiny", "--output_dir", str(tmp_path / "out"), "--max_eval_blocks", "8", "--vocab_size", "512",
              "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true",
              "--hparams", str(hparams), "--per_device_train_batch_size", "4"]
    metrics = _recipe().main(common + ["--max_steps", "2"])
    assert math.isfinite(metrics["eval_loss"])
    model = hf_mup.MuPModel.from_pretrained(tmp_path / "out")
    assert model.config.mup["output_mult"] == 2.0 and model.config.n_embd == 128  # the preset's shape
    assert model.config.initializer_range == 0.03  # the proxy's tuned init scale
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if h.get("learning_rate/input", 0) > 0]
    assert logged and all(h["learning_rate/hidden"] == h["learning_rate/input"] / 2 for h in logged)  # m = 128/64
    # Resume from checkpoint-2 and go on to step 4.
    metrics = _recipe().main(common + ["--max_steps", "4", "--resume", "true"])
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and math.isfinite(metrics["eval_loss"])


@pytest.mark.slow
def test_process_group_is_destroyed_at_the_end(tmp_path):
    """Under `accelerate launch` the recipe must destroy the process group before exit (a rank exiting with gloo's
    threads alive can abort: "terminate called without an active exception"). Here a one-process gloo group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        metrics = _recipe().main(["--preset", "tiny", "--output_dir", str(tmp_path / "out"), "--max_eval_blocks", "4",
                                  "--vocab_size", "300", "--max_steps", "1", "--per_device_train_batch_size", "2",
                                  "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true"])
        assert math.isfinite(metrics["eval_loss"])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
