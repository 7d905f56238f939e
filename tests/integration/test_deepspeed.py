"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 processes (gloo, CPU): MuPTrainer and a plain accelerate loop, the model built
before DeepSpeed or under zero.Init. Per-group LRs are μP's, the losses are a one-process run's on the doubled batch
(what DDP gives) from the same initial weights, every way of saving writes the folded checkpoint that stock loaders
open with the μP logits, and a resumed run gives the uninterrupted run's losses.

Each stage is one `torch.distributed.run` of tests/scripts/deepspeed_train.py running several scenarios in the same
2 processes (imports are most of a launch's time)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

deepspeed = pytest.importorskip("deepspeed")

import hf_mup  # noqa: E402
import hf_mup.zero  # noqa: E402

pytestmark = pytest.mark.multiprocess  # `accelerate launch` / torch.distributed.run with 2 processes

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deepspeed_train.py"
sys.path.insert(0, str(SCRIPT.parent))
import tiny_gpt2  # noqa: E402 (the workers' model, data and settings)
from tiny_gpt2 import BATCH, LR, STEPS, WD  # noqa: E402

# accelerate's runs first: a Trainer's state lingers
RUNS = {2: ["accelerate-before", "refuse", "trainer-before", "trainer-lora"],
        3: ["accelerate-zinit", "trainer-before", "trainer-zinit"]}
# Measured: 2 processes under ZeRO vs one process on the doubled batch differ by at most 4.8e-7 in the loss.
LOSS_TOL = 5e-6


def _launch(out: Path, stage: int) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(SCRIPT), "--out", str(out), "--stage", str(stage),
           "--runs", ",".join(RUNS[stage])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return out


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("zero2"), 2)


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("zero3"), 3)


CASES = [(2, "trainer-before"), (2, "accelerate-before"), (3, "trainer-before"), (3, "trainer-zinit"),
         (3, "accelerate-zinit")]


@pytest.fixture
def run(request, stage2, stage3):
    stage, name = request.param
    folder = (stage2 if stage == 2 else stage3) / name
    result = json.loads((folder / "results.json").read_text())
    assert result["num_processes"] == 2
    return stage, name, folder, result


def _from_initial(folder: Path):
    """A one-process μP model holding the run's initial (unfolded) parameters."""
    model = tiny_gpt2.model()
    initial = torch.load(folder / "initial.pt")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(initial[name])
    return model, initial


def _one_process_losses(name: str, folder: Path, tmp_path, model=None) -> list[float]:
    """The same training in one process on the doubled batch (what DDP equals), from the same initial weights."""
    model = model or _from_initial(folder)[0]
    if name.startswith("accelerate"):
        optimizer = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=LR, weight_decay=WD))
        losses = []
        for batch in tiny_gpt2.tokens().split(2 * BATCH):
            loss = model(batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2 * BATCH, max_steps=STEPS, learning_rate=LR,
                             warmup_steps=1, lr_scheduler_type="linear", weight_decay=WD, logging_steps=1, report_to=[],
                             save_strategy="no", seed=0, data_seed=0, disable_tqdm=True, use_cpu=True)
    train = [{"input_ids": r, "labels": r} for r in tiny_gpt2.tokens()]
    trainer = hf_mup.MuPTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("run", CASES, indirect=True, ids=[f"zero{s}-{n}" for s, n in CASES])
def test_groups_losses_and_init(run, tmp_path):
    stage, name, folder, result = run
    assert result["trained_partitioned"] == (stage == 3)  # ZeRO-3 really partitioned the parameters
    assert result["built_partitioned"] == name.endswith("zinit")
    # The ZeRO optimizer's groups are μP's (mup_param_groups' order, kinds, LR multipliers, weight decay), at the
    # scheduled LR: the Trainer's linear schedule (1 warmup step, to 0 at step 4), the plain loop's constant LR.
    planned = result["planned"]
    assert ["hidden", 0.5, 2 * WD] in planned and ["input", 1.0, WD] in planned
    scheduled = {"0": 0.0, "1": 1.0, "2": 2 / 3, "3": 1 / 3} if name.startswith("trainer") else {"all": 1.0}
    recorded = result["lrs"] if name.startswith("trainer") else {"all": result["lrs"]}
    assert recorded.keys() == scheduled.keys()
    for step, lam in scheduled.items():
        assert [[k, m, wd] for k, m, _, wd in recorded[step]] == planned
        assert [lr for *_, lr, _ in recorded[step]] == pytest.approx([LR * m * lam for _, m, _ in planned]), step
    # The initial weights are μP's, also when zero.Init partitioned the model before hf_mup rescaled it: every
    # tensor's spread is the unpartitioned μP model's (zero-init query and readout included).
    _, initial = _from_initial(folder)
    reference = dict(tiny_gpt2.model().named_parameters())
    for n, p in initial.items():
        if p.numel() >= 4096:
            assert p.std().item() == pytest.approx(reference[n].std().item(), rel=0.05), n
    query = initial["transformer.h.0.attn.c_attn.weight"][:, :128]
    assert query.abs().max().item() == 0.0
    # The losses: a one-process run on the doubled batch from the same initial weights.
    losses = result["losses"]
    losses = [losses[str(s)] for s in range(1, STEPS + 1)] if isinstance(losses, dict) else losses
    assert losses == pytest.approx(_one_process_losses(name, folder, tmp_path), abs=LOSS_TOL)


def _logits(model) -> torch.Tensor:
    probe = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        return model(probe).logits


def _stock(folder: Path, state_dict: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    model.load_state_dict(state_dict)
    return model


@pytest.mark.parametrize("run", CASES, indirect=True, ids=[f"zero{s}-{n}" for s, n in CASES])
def test_every_save_is_folded(run):
    """save_model / accelerator.save_model, the Trainer's checkpoint, engine.save_16bit_model,
    accelerator.get_state_dict and the ZeRO checkpoint's fp32 consolidation (hf_mup.zero.fp32_state_dict) all hold
    the folded weights: the stock AutoModelForCausalLM computes the μP model's logits from each (measured: 8.3e-7 at
    most; DeepSpeed's own zero_to_fp32 weights: 1.0)."""
    from transformers import AutoModelForCausalLM

    stage, name, folder, result = run
    mup_logits = torch.tensor(result["logits"])
    saved = folder / "save_model"
    assert hf_mup.MuPModel.from_pretrained(saved).config.mup["output_mult"] == 3.0
    opened = {
        "save_model": AutoModelForCausalLM.from_pretrained(saved),
        "save_model, MuPModel": hf_mup.MuPModel.from_pretrained(saved),
        "get_state_dict": _stock(saved, torch.load(folder / "get_state_dict.pt")),
    }
    if name.startswith("trainer"):
        opened["save_16bit_model"] = _stock(saved, torch.load(folder / "save_16bit" / "pytorch_model.bin"))
        checkpoint = folder / "run" / f"checkpoint-{STEPS}"
        opened["Trainer checkpoint"] = AutoModelForCausalLM.from_pretrained(checkpoint)
        opened["fp32_state_dict"] = _stock(saved, hf_mup.zero.fp32_state_dict(str(checkpoint)))
        # DeepSpeed's own consolidation holds μP's unfolded weights: a stock model computes other logits from them.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        raw = _stock(saved, get_fp32_state_dict_from_zero_checkpoint(str(checkpoint)))
        assert (_logits(raw) - mup_logits).abs().max().item() > 0.1
    for how, model in opened.items():
        torch.testing.assert_close(_logits(model), mup_logits, rtol=0, atol=1e-5, msg=how)
    if name == "trainer-zinit":
        # MuPModel.from_pretrained under zero.Init: planned from the partitioned parameters (ds_shape), unfolded
        # on the gathered ones: the same groups and, gathered, the same logits.
        assert result["loaded_partitioned"] and result["loaded_planned"] == result["planned"]
        torch.testing.assert_close(torch.tensor(result["loaded_logits"]), mup_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("run", [c for c in CASES if c[1].startswith("trainer")], indirect=True,
                         ids=[f"zero{s}-{n}" for s, n in CASES if n.startswith("trainer")])
def test_resume_is_exact(run):
    """A fresh MuPTrainer resumed from the DeepSpeed checkpoint at step 2 gives the uninterrupted run's losses."""
    _, _, _, result = run
    for step in ("3", "4"):
        assert result["resumed_losses"][step] == pytest.approx(result["losses"][step], abs=1e-6), step


def test_optimizer_section_is_refused(stage2):
    """DeepSpeed would build a config's optimizer with one group of every parameter: not μP, refused with the fix."""
    refused = json.loads((stage2 / "refuse" / "results.json").read_text())["refused"]
    assert refused and '"optimizer" section' in refused and "Leave the section out" in refused


def test_lora_adapters_train_by_their_rules_under_zero2(stage2, tmp_path):
    """MuPTrainer on a PEFT LoRA model under ZeRO-2: A at η/m, B at η in the ZeRO optimizer's groups at the scheduled
    LR, the losses of one process on the doubled batch, and an exact resume from checkpoint-2."""
    result = json.loads((stage2 / "trainer-lora" / "results.json").read_text())
    planned = result["planned"]
    assert ["down", 0.5, 2 * WD] in planned and ["input", 1.0, WD] in planned  # m = 2: A's LR η/2
    for step, lam in {"0": 0.0, "1": 1.0, "2": 2 / 3, "3": 1 / 3}.items():
        assert [[k, m, wd] for k, m, _, wd in result["lrs"][step]] == planned
        assert [lr for *_, lr, _ in result["lrs"][step]] == pytest.approx([LR * m * lam for _, m, _ in planned])
    losses = [result["losses"][str(s)] for s in range(1, STEPS + 1)]
    one_process = _one_process_losses("trainer-lora", stage2, tmp_path, model=tiny_gpt2.lora_model())
    assert losses == pytest.approx(one_process, abs=LOSS_TOL)
    for step in ("3", "4"):
        assert result["resumed_losses"][step] == pytest.approx(result["losses"][step], abs=1e-6), step
