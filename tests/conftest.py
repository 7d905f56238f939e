import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import BertConfig, GPT2Config, TrainerCallback

VOCAB = 128


def gpt2_config(width: int = 64, head_dim: int = 16, **kw) -> GPT2Config:
    kw = {"n_layer": 2, "n_positions": 64, "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **kw}
    return GPT2Config(n_embd=width, n_head=width // head_dim, **kw)


def bert_config(width: int = 64, head_dim: int = 16, **kw) -> BertConfig:
    kw = {"num_hidden_layers": 2, "max_position_embeddings": 64, "vocab_size": VOCAB,
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "intermediate_size": 4 * width, **kw}
    return BertConfig(hidden_size=width, num_attention_heads=width // head_dim, **kw)


def roberta_config(width: int = 64, head_dim: int = 16, **kw):
    from transformers import RobertaConfig

    kw = {"num_hidden_layers": 2, "max_position_embeddings": 64 + 2, "vocab_size": VOCAB,  # positions start at 2
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "intermediate_size": 4 * width, **kw}
    return RobertaConfig(hidden_size=width, num_attention_heads=width // head_dim, **kw)


def llama_like_config(model_type: str):
    """A 2-layer config of the Llama family: grouped-query attention (2 query heads per key/value head), a fixed
    head size, SwiGLU MLP of 4× width (Qwen2's q/k/v biases and Qwen3's q/k norms as the stock classes have them)."""

    def make(width: int = 64, head_dim: int = 16, **kw):
        from transformers import AutoConfig

        heads = width // head_dim
        kw = {"num_hidden_layers": 2, "max_position_embeddings": 64, "vocab_size": VOCAB, "intermediate_size": 4 * width,
              "num_key_value_heads": max(1, heads // 2), "head_dim": head_dim, "bos_token_id": 0, "eos_token_id": 0,
              **kw}
        return AutoConfig.for_model(model_type, hidden_size=width, num_attention_heads=heads, **kw)

    return make


CONFIGS = {"gpt2": gpt2_config, "bert": bert_config, "roberta": roberta_config,
           **{t: llama_like_config(t) for t in ("llama", "mistral", "qwen2", "qwen3")}}
MODEL_CLASSES = {
    "GPT2LMHeadModel": "gpt2",
    "GPT2ForSequenceClassification": "gpt2",
    "GPT2Model": "gpt2",
    "BertForMaskedLM": "bert",
    "BertForSequenceClassification": "bert",
    "BertModel": "bert",
    "RobertaForMaskedLM": "roberta",
    "RobertaForSequenceClassification": "roberta",
    "LlamaForCausalLM": "llama",
    "LlamaForSequenceClassification": "llama",
    "LlamaModel": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# The classes each model-level test runs on: every architecture's LM and a classifier.
LM_CLASSES = ["GPT2LMHeadModel", "BertForMaskedLM", "RobertaForMaskedLM", "LlamaForCausalLM", "MistralForCausalLM",
              "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def make_config(model_class: str, width: int, **kw):
    arch = MODEL_CLASSES[model_class]
    if model_class.endswith("SequenceClassification"):
        kw.setdefault("num_labels", 3)
        kw.setdefault("pad_token_id", 0)
    return CONFIGS[arch](width, **kw)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def one_thread():
    """torch on one thread while the test runs, restored after (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_polarity():
    """The sentence-polarity folder (`hf_mup.lab.tasks.polarity_dir`); the test skips, with the reason, where it is not."""
    from hf_mup.lab.tasks import polarity_dir

    folder = polarity_dir()
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here (the shared data folder sits beside the project)")
    return folder


def free_port() -> int:
    """A loopback port the OS just gave out (a random one may be taken, or be an ephemeral port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logits(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class StopAfter(TrainerCallback):
    """Stops a Trainer after `step` steps, as a kill would (after that step's checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
