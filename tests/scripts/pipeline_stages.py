"""Runs pipeline stages through the recipes' command line (`hf_mup.lab.pipeline.main`) for a preset given as JSON;
run by tests/integration/test_pipeline_accelerate.py under `accelerate launch --num_processes 2`."""
import faulthandler
import json
import os
import sys

faulthandler.enable(all_threads=True)  # should a rank abort, its log says where
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_mup.lab.pipeline import Preset, main  # noqa: E402

preset_file, *argv = sys.argv[1:]
preset = Preset.from_dict(json.load(open(preset_file)))
rc = main(["--preset", preset.name, "--no_progress", *argv], {preset.name: preset}, "pipeline_stages")
sys.stdout.flush()
sys.stderr.flush()
# run_stages tore the process group down; gloo's threads may outlive it (pytorch/pytorch#130345), so leave without
# the interpreter's C++ static destructors (see tests/scripts/accelerate_train.py).
os._exit(rc)
