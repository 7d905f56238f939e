"""What the multi-process tests and their worker scripts share: the tiny μP GPT-2, its data, its training settings,
and the plain accelerate loop. Imported by the workers (tests/scripts/ is their sys.path[0]) and by the tests."""
import torch
from transformers import GPT2Config

import hf_mup

STEPS, BATCH, LR, WD = 4, 4, 1e-2, 0.1
MULTS = {"output_mult": 3.0, "attn_mult": 1.5, "input_mult": 2.0}  # not powers of two: folding rounds


def model(**mults: float) -> torch.nn.Module:
    """The μP GPT-2 (width 128, base 64, 2 layers), seeded: the same initial weights in every process."""
    torch.manual_seed(0)
    config = GPT2Config(n_embd=128, n_head=8, n_layer=2, vocab_size=128, n_positions=32, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return hf_mup.MuPModel.from_config(config, base_hidden_size=64, **(mults or MULTS))


def lora_model() -> torch.nn.Module:
    """`model()` with PEFT LoRA adapters on c_attn and c_fc (r 4), seeded: A at η/m, B at η under μP's rules."""
    import peft

    base = model()
    torch.manual_seed(1)
    return peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                     task_type="CAUSAL_LM"))


def tokens(processes: int = 2, seed: int = 0) -> torch.Tensor:
    """STEPS batches of BATCH rows per process, 16 tokens each."""
    return torch.randint(1, 128, (STEPS * BATCH * processes, 16), generator=torch.Generator().manual_seed(seed))


def train(accelerator, model: torch.nn.Module, optimizer, loader) -> list[float]:
    """The plain accelerate loop: each step's loss, averaged over the processes."""
    losses = []
    for batch in loader:
        loss = model(batch, labels=batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.gather(loss.detach()[None]).mean().item())
    return losses
