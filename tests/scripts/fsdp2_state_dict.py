"""FSDP2 (fully_shard) μP model: its gathered full state dict is the folded one, and loads back into a μP model.
Run by tests/core/test_state.py in a fresh process (a 1-process gloo group); prints a JSON line of the differences."""
import json
import os
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import make_config

import hf_mup

torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0, world_size=1)
options = {"base_hidden_size": 64, "output_mult": 3.0, "attn_mult": 1.5, "input_mult": 2.0}
torch.manual_seed(0)
model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), **options)
unsharded = {k: v.clone() for k, v in model.state_dict().items()}
for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
twin = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", 128), **options)
twin.load_state_dict(full)
x = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(0))
model.eval(), twin.eval()
with torch.no_grad():
    logits_diff = (model(x).logits - twin(x).logits).abs().max().item()
print(json.dumps({"keys": sorted(full) == sorted(unsharded),
                  "state_dict_diff": max((full[k] - unsharded[k]).abs().max().item() for k in unsharded),
                  "logits_diff": logits_diff}))
torch.distributed.destroy_process_group()
