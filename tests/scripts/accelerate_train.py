"""Trains a tiny μP GPT-2 with a plain accelerate loop; run by tests/integration/test_accelerate.py, alone or under
`accelerate launch --cpu --num_processes 2`. Writes, per optimizer in --optimizers (a fresh model each, one launch),
the losses and a parameter checksum to --out (rank 0)."""
import argparse
import faulthandler
import json
import os
import sys

faulthandler.enable(all_threads=True)  # should a rank still abort, its log says where

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tiny_gpt2  # noqa: E402 (beside this script)
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import hf_mup  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--batch-size", type=int, default=4, help="per process")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2's fully_shard")
parser.add_argument("--optimizers", default="adamw",
                    help="comma-separated: adamw (torch's, μP groups), muon (hf_mup.MuonAdamW, Newton-Schulz in float32)")
args = parser.parse_args()

accelerator = Accelerator(cpu=True)
data = torch.randint(0, 128, (args.steps * args.batch_size * accelerator.num_processes, 16),
                     generator=torch.Generator().manual_seed(1))


def without_key_biases(name: str, t: torch.Tensor) -> torch.Tensor:
    """GPT-2's key biases (the middle third of c_attn.bias) have a zero gradient in exact arithmetic (softmax ignores a
    shift shared by all keys): Adam, with μP's ε/m, turns the allreduce-order rounding of that zero into updates of
    its full size. No output depends on them, so the checksum leaves them out."""
    if not name.endswith("c_attn.bias"):
        return t
    third = t.numel() // 3
    return torch.cat([t[:third], t[2 * third:]])


def run(optimizer_name: str) -> dict:
    model = tiny_gpt2.model(output_mult=4.0)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    if args.fsdp:
        # accelerate's FSDP plugin needs GPUs; on CPU (gloo) shard with FSDP2 directly and let accelerate do the rest.
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    if optimizer_name == "muon":
        optimizer = hf_mup.mup_optimizer(model, hf_mup.MuonAdamW, lr=1e-2, weight_decay=0.1, ns_dtype=torch.float32)
    else:
        optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-2, weight_decay=0.1))
    if args.fsdp:
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    hf_mup.check_optimizer(model, optimizer)  # the groups survived wrapping

    losses = tiny_gpt2.train(accelerator, model, optimizer, loader)
    unwrapped = hf_mup.model.unwrap(model)
    state = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in unwrapped.named_parameters()}
    plan = hf_mup.get_plan(unwrapped)
    return {
        "sharded": any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()),
        "losses": losses,
        "param_sums": {hf_mup.model.canonical_name(n): without_key_biases(n, t).double().abs().sum().item()
                       for n, t in state.items()},
        "lr_mults": sorted({g["lr_mult"] for g in optimizer.param_groups}),
        "readout_scale": plan.readouts["lm_head"],
        "attn_scaling": [m.scaling for m in unwrapped.modules() if hasattr(m, "mup_stock_scaling")],
    }


result: dict = {name: run(name) for name in args.optimizers.split(",")}
result["num_processes"] = accelerator.num_processes
# Tear the process group down on every rank, after a barrier, before the interpreter exits. A rank that exits with
# it alive may destroy gloo's threads while they are still joinable: "terminate called without an active
# exception", SIGABRT, and `accelerate launch` fails (3 test runs in 10 on a busy 2-core machine).
accelerator.wait_for_everyone()
accelerator.end_training()
result["process_group_alive"] = torch.distributed.is_initialized()
if accelerator.is_main_process:
    with open(args.out, "w") as f:
        json.dump(result, f)
# gloo's threads outlive destroy_process_group() (pytorch/pytorch#130345: no shutdown() for gloo), so the C++ static
# destructors that run at interpreter exit can still meet a joinable thread and abort. Everything is written and the
# group is gone: leave without running them.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
