"""Trains a tiny μP GPT-2 under DeepSpeed ZeRO on CPU (gloo); run by tests/integration/test_deepspeed.py as 2 processes
(`python -m torch.distributed.run --nproc_per_node 2`). For each run named in --runs, rank 0 writes
OUT/<run>/results.json beside the folders the run saved.

Runs: "trainer-before" / "trainer-zinit": MuPTrainer for 4 steps with a checkpoint at step 2 (the model built before
the DeepSpeed config exists, or under zero.Init while it does), the per-group LRs of every step, save_model, the
engine's save_16bit_model and accelerator.get_state_dict, then a fresh MuPTrainer resumed from checkpoint-2.
"trainer-lora": MuPTrainer on the model with PEFT LoRA adapters (its groups, LRs and losses), resumed from
checkpoint-2. "accelerate-before" / "accelerate-zinit": a plain accelerate loop (DeepSpeedPlugin), then
accelerator.save_model and get_state_dict. "refuse": MuPTrainer with an "optimizer" section in the DeepSpeed
config (the error's text).
"""
import argparse
import faulthandler
import json
import os
import sys

faulthandler.enable(all_threads=True)  # should a rank still abort, its log says where
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate's state: DeepSpeed, on the gloo group named below

import torch  # noqa: E402

import hf_mup  # noqa: E402
import hf_mup.zero  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--stage", type=int, choices=(2, 3), required=True)
parser.add_argument("--runs", required=True, help="comma-separated run names (see the docstring)")
args = parser.parse_args()

hf_mup.zero.disable_jit_ops()  # no C++ build of DeepSpeed's shm collectives at init (gloo does them)

from accelerate import PartialState  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from tiny_gpt2 import BATCH, LR, STEPS, WD, lora_model, model, tokens, train  # noqa: E402 (beside this script)
from transformers import TrainerCallback, TrainingArguments  # noqa: E402
from transformers.integrations.deepspeed import unset_hf_deepspeed_config  # noqa: E402

state = PartialState(backend="gloo")  # with no GPU accelerate would pick no backend (each rank alone)
rank = state.process_index
PROBE = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(3))


def ds_config(stage: int, **extra) -> dict:
    # persistence threshold 0: ZeRO-3 would keep every tensor of a tiny model gathered (below 100,000 elements)
    return {"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0,
                                  "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 10**9, **extra}


def initial_state(m) -> dict | None:
    """The model's own (unfolded) parameters, gathered: rank 0 gets them."""
    with hf_mup.zero.gathered(m.parameters()):
        return {n: p.detach().clone() for n, p in m.named_parameters()} if rank == 0 else None


def probe_logits(engine) -> list:
    """The μP model's logits on PROBE (every rank runs the forward: ZeRO-3 gathers the parameters)."""
    engine.eval()
    with torch.no_grad():
        out = engine(PROBE).logits
    engine.train()
    return out.tolist()


def groups(optimizer) -> list:
    return [[g["mup_kind"], g["lr_mult"], g["lr"], g["weight_decay"]] for g in optimizer.param_groups]


def is_partitioned(m) -> bool:
    return all(p.numel() == 0 and hasattr(p, "ds_id") for p in m.parameters())


class RecordLRs(TrainerCallback):
    def __init__(self):
        self.lrs = {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs[state.global_step] = groups(optimizer)


def training_args(out, **kw):
    AcceleratorState._reset_state(reset_partial_state=False)  # another Trainer: a new Accelerator, the same group
    return TrainingArguments(out, per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
                             warmup_steps=1, lr_scheduler_type="linear", weight_decay=WD, logging_steps=1,
                             report_to=[], save_strategy="steps", save_steps=2, seed=0, data_seed=0,
                             disable_tqdm=True, deepspeed=ds_config(args.stage), use_cpu=True,
                             accelerator_config={"use_configured_state": True}, **kw)


def trainer_run(out, zinit, resume=None, build=model):
    from hf_mup import MuPTrainer

    unset_hf_deepspeed_config()  # "before": no DeepSpeed config alive while the model is built
    early = None if zinit else build()
    targs = training_args(out)
    m = build() if zinit else early  # zinit: built under zero.Init (ZeRO-3), the config being alive
    built_partitioned = is_partitioned(m)
    init = initial_state(m)
    record = RecordLRs()
    trainer = MuPTrainer(model=m, args=targs, train_dataset=[{"input_ids": r, "labels": r} for r in tokens()],
                         callbacks=[record])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, record, built_partitioned, init


def run_trainer(out, zinit):
    trainer, record, built_partitioned, init = trainer_run(os.path.join(out, "run"), zinit)
    engine = trainer.model_wrapped
    if rank == 0:
        torch.save(init, os.path.join(out, "initial.pt"))
    result = {
        "built_partitioned": built_partitioned,
        "trained_partitioned": is_partitioned(engine.module),
        "losses": {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h},
        "lrs": record.lrs,
        "planned": [[g["mup_kind"], g["lr_mult"], g["weight_decay"]]
                    for g in hf_mup.mup_param_groups(engine.module, lr=LR, weight_decay=WD)],
        "logits": probe_logits(engine),
    }
    hf_mup.check_optimizer(engine, trainer.optimizer)  # the ZeRO optimizer's groups are μP's
    trainer.save_model(os.path.join(out, "save_model"))
    engine.save_16bit_model(os.path.join(out, "save_16bit"))
    state_dict = trainer.accelerator.get_state_dict(engine)
    if rank == 0:
        torch.save(state_dict, os.path.join(out, "get_state_dict.pt"))
    if zinit:  # the saved folder loaded under zero.Init: planned from the partitioned parameters' ds_shape
        loaded = hf_mup.MuPModel.from_pretrained(os.path.join(out, "save_model"))
        result["loaded_partitioned"] = is_partitioned(loaded)
        result["loaded_planned"] = [[g["mup_kind"], g["lr_mult"], g["weight_decay"]]
                                    for g in hf_mup.mup_param_groups(loaded, lr=LR, weight_decay=WD)]
        loaded.eval()
        with hf_mup.zero.gathered(loaded.parameters()), torch.no_grad():
            result["loaded_logits"] = loaded(PROBE).logits.tolist()
    resumed, *_ = trainer_run(os.path.join(out, "resumed"), zinit, resume=os.path.join(out, "run", "checkpoint-2"))
    result["resumed_losses"] = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    return result


def run_trainer_lora(out):
    trainer, record, _, _ = trainer_run(os.path.join(out, "run"), False, build=lora_model)
    engine = trainer.model_wrapped
    hf_mup.check_optimizer(engine, trainer.optimizer)  # the ZeRO optimizer's groups are μP's, the adapters' too
    result = {"losses": {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}, "lrs": record.lrs,
              "planned": [[g["mup_kind"], g["lr_mult"], g["weight_decay"]]
                          for g in hf_mup.mup_param_groups(engine.module, lr=LR, weight_decay=WD)]}
    resumed, *_ = trainer_run(os.path.join(out, "resumed"), False, resume=os.path.join(out, "run", "checkpoint-2"),
                              build=lora_model)
    result["resumed_losses"] = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    return result


def run_accelerate(out, zinit):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(reset_partial_state=False)
    early = None if zinit else model()
    config = ds_config(args.stage, train_micro_batch_size_per_gpu=BATCH, train_batch_size=2 * BATCH,
                       gradient_accumulation_steps=1, gradient_clipping=0.0)
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))  # (cpu=True: no DeepSpeed)
    m = model() if zinit else early  # ZeRO-3's plugin keeps an HfDeepSpeedConfig alive: zero.Init
    built_partitioned = is_partitioned(m)
    init = initial_state(m)
    if rank == 0:
        torch.save(init, os.path.join(out, "initial.pt"))
    optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(m, lr=LR, weight_decay=WD))
    loader = torch.utils.data.DataLoader(tokens(), batch_size=BATCH)
    engine, optimizer, loader = accelerator.prepare(m, optimizer, loader)
    hf_mup.check_optimizer(engine, optimizer)  # the ZeRO optimizer's groups are μP's
    losses = train(accelerator, engine, optimizer, loader)
    result = {"built_partitioned": built_partitioned, "trained_partitioned": is_partitioned(engine.module),
              "losses": losses, "lrs": groups(optimizer), "logits": probe_logits(engine),
              "planned": [[g["mup_kind"], g["lr_mult"], g["weight_decay"]]
                          for g in hf_mup.mup_param_groups(engine.module, lr=LR, weight_decay=WD)]}
    accelerator.save_model(engine, os.path.join(out, "save_model"))
    state_dict = accelerator.get_state_dict(engine)
    if rank == 0:
        torch.save(state_dict, os.path.join(out, "get_state_dict.pt"))
        hf_mup.model.unwrap(engine).config.save_pretrained(os.path.join(out, "save_model"))
    return result


def run_refuse(out):
    from hf_mup import MuPTrainer

    optimizer = {"type": "AdamW", "params": {"lr": LR, "torch_adam": True}}
    targs = TrainingArguments(out, max_steps=1, report_to=[], use_cpu=True,
                              deepspeed=ds_config(args.stage, optimizer=optimizer),
                              accelerator_config={"use_configured_state": True})
    try:
        MuPTrainer(model=model(), args=targs, train_dataset=[])
    except hf_mup.MuPError as e:
        return {"refused": str(e)}
    return {"refused": None}


for name in args.runs.split(","):
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    if name == "refuse":
        AcceleratorState._reset_state(reset_partial_state=False)
        result = run_refuse(out)
    elif name == "trainer-lora":
        result = run_trainer_lora(out)
    elif name.startswith("trainer"):
        result = run_trainer(out, zinit=name.endswith("zinit"))
    else:
        result = run_accelerate(out, zinit=name.endswith("zinit"))
    result["num_processes"] = state.num_processes
    state.wait_for_everyone()
    if rank == 0:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(result, f)

state.wait_for_everyone()
torch.distributed.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
# gloo's threads outlive destroy_process_group(), and a normal interpreter exit can meet one still joinable and
# abort ("terminate called without an active exception", about half of the ZeRO-3 runs): everything is written.
os._exit(0)
