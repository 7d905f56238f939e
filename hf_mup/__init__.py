"""hf_mup: μP (the Maximal Update Parametrization) and μTransfer for Hugging Face Transformers.

Usage:
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=256)
    optimizer = hf_mup.mup_optimizer(model, torch.optim.AdamW, lr=3e-3, weight_decay=0.1)
"""
import logging as _logging
import typing as _typing

# With torchao installed (the [compress] extra), importing a transformers model imports it; on a CPU-only torch its
# CUDA kernels fail to load (a warning each) and it registers enums torch calls deprecated. Drop just those lines.
_logging.getLogger("torchao").addFilter(lambda r: not r.getMessage().startswith("Failed to load"))
_logging.getLogger("torch.utils._pytree").addFilter(lambda r: "is an Enum subclass" not in r.getMessage())
# DeepSpeed, where installed, is imported by transformers' and accelerate's availability checks and announces on a
# CPU machine that it found no GPU, whether or not the run uses it.
_logging.getLogger("DeepSpeed").addFilter(lambda r: not r.getMessage().startswith("Setting accelerator to CPU"))

from .config import MuPConfig
from .describe import describe
from .errors import MuPError
from .fold import fold
from .lion import Lion
from .model import MuPModel, MuPPlan, convert, get_plan, is_mup
from .optim import check_optimizer, mup_min_lrs, mup_optimizer, mup_param_groups
from .rules import Kind, TensorRule, optimizer_family, timescale_of, weight_decay_from_timescale

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:  # for type checkers; at run time `__getattr__` imports them on first use
    from .muon import MuonAdamW
    from .trainer import MuPTrainer, mup_model_init


def __getattr__(name: str) -> _typing.Any:
    # The Trainer pulls in much of transformers and accelerate: import it only when asked for.
    if name in ("MuPTrainer", "mup_model_init"):
        from . import trainer

        return getattr(trainer, name)
    if name == "MuonAdamW":  # torch.optim.Muon came with torch 2.9: only its users need it
        from .muon import MuonAdamW

        return MuonAdamW
    raise AttributeError(f"module 'hf_mup' has no attribute {name!r}")

__all__ = [
    "Kind",
    "Lion",
    "MuPConfig",
    "MuPError",
    "MuPModel",
    "MuPPlan",
    "MuPTrainer",
    "MuonAdamW",
    "TensorRule",
    "check_optimizer",
    "convert",
    "describe",
    "fold",
    "get_plan",
    "is_mup",
    "mup_min_lrs",
    "mup_model_init",
    "mup_optimizer",
    "mup_param_groups",
    "optimizer_family",
    "timescale_of",
    "weight_decay_from_timescale",
]
