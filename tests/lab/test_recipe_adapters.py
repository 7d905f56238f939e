"""The Recipe's adapter settings: how a PEFT model's adapter tensors train ("mup", "plain", "loraplus")."""
import pytest
from conftest import make_config

import hf_mup
from hf_mup.lab.recipe import LORAPLUS_RATIO, Recipe

peft = pytest.importorskip("peft")
LR = 1e-2


def _lora():
    model = hf_mup.MuPModel.from_config(make_config("LlamaForCausalLM", 128), base_hidden_size=32)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("adapters, lr_a, lr_b", [("mup", LR / 4, LR), ("plain", LR, LR),
                                                  ("loraplus", LR, LR * LORAPLUS_RATIO)])
def test_each_way_gives_a_and_b_their_learning_rates(adapters, lr_a, lr_b):
    lora = _lora()
    recipe = Recipe(arch="llama", lr=LR, adapters=adapters)
    optimizer = recipe.build_optimizer(lora)
    lrs = {n.split(".lora_")[1][0]: g["lr"] for g in optimizer.param_groups for n in g.get("param_names", [])
           if ".lora_" in n}
    assert lrs == {"A": pytest.approx(lr_a), "B": pytest.approx(lr_b)}
    hf_mup.check_optimizer(lora, optimizer)  # loraplus: its groups are marked unchecked (no μP rule gives them)
    assert ("adapters" in recipe.to_dict()) == (adapters != "mup")  # a stored study's spec stays as it was
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_an_unknown_way_is_refused():
    with pytest.raises(hf_mup.MuPError, match="adapters='lora'.*mup, plain, loraplus"):
        Recipe(adapters="lora")
