"""At base width, with zero-inits off and multipliers 1, a μP model *is* the stock HF model."""
import pytest
import torch
import transformers
from conftest import LM_CLASSES, make_config

import hf_mup


def _stock_groups(model, lr, weight_decay):
    """What transformers.Trainer does: no decay on biases and LayerNorm weights."""
    no_decay = lambda n: n.endswith("bias") or "ln_" in n or "norm" in n.lower()  # noqa: E731
    params = list(model.named_parameters())
    return [
        {"params": [p for n, p in params if not no_decay(n)], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0, "lr": lr},
    ]


@pytest.mark.parametrize("model_class", [*LM_CLASSES, "BertForSequenceClassification", "LlamaForSequenceClassification"])
def test_base_width_equals_stock(model_class, tokens):
    config = make_config(model_class, 64)
    torch.manual_seed(0)
    stock = getattr(transformers, model_class)._from_config(config)
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class=model_class,
                                        zero_init_query=False, zero_init_readout=False)
    # Same init for the same seed (planning on the meta device draws nothing).
    stock_state = stock.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stock_state[name]), name
    # Same logits.
    torch.testing.assert_close(model(tokens).logits, stock(tokens).logits, rtol=0, atol=0)
    # Same losses over 5 AdamW steps, weight decay included.
    labels = torch.tensor([0, 2]) if model_class.endswith("SequenceClassification") else tokens
    opt_stock = torch.optim.AdamW(_stock_groups(stock, 1e-2, 0.1))
    opt_mup = torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=1e-2, weight_decay=0.1))
    losses = {"stock": [], "mup": []}
    for _ in range(5):
        for key, m, opt in (("stock", stock, opt_stock), ("mup", model, opt_mup)):
            loss = m(tokens, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[key].append(loss.item())
    assert losses["mup"] == losses["stock"]
    assert losses["mup"][-1] < losses["mup"][0]


def test_base_width_with_zero_inits_differs_only_there(tokens):
    """The zero-inits are the only init difference at base width: query columns and the untied readout."""
    config = make_config("GPT2ForSequenceClassification", 64)
    torch.manual_seed(0)
    stock = transformers.GPT2ForSequenceClassification(config)
    torch.manual_seed(0)
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=64, model_class="GPT2ForSequenceClassification")
    stock_state = stock.state_dict()
    for name, tensor in model.state_dict().items():
        if name == "score.weight":
            assert not tensor.any()
        elif name.endswith("c_attn.weight"):
            assert not tensor[:, :64].any()
            assert torch.equal(tensor[:, 64:], stock_state[name][:, 64:])
        else:
            assert torch.equal(tensor, stock_state[name]), name
    assert not model(tokens).logits.any()  # zero readout: logits start at 0
