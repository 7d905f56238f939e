"""Transfer carries everything the proxy trained with to the target: a study with non-default settings (β, Lion, a
linear schedule, weight decay in independent mode, clipping, warmup, ε) gives a target recipe with every one of them,
the pipeline's μTransfer row trains with them, and recipes/gpt2_wikitext.py --hparams builds that optimizer."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from hf_mup import Lion, MuPError
from hf_mup.lab import sweep as sw
from hf_mup.lab.data import Corpus
from hf_mup.lab.recipe import Recipe
from hf_mup.lab.storage import load_study
from hf_mup.lab.transfer import Transferred, transfer

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# The setting: weight decay 0.1 in independent mode (hf_mup warns that this is 10% per step; it is on purpose).
pytestmark = pytest.mark.filterwarnings("ignore:weight_decay_mode='independent'")
# Every training setting away from its default.
SETTINGS = {"optimizer": "lion", "betas": (0.9, 0.98), "schedule": "linear", "weight_decay": 0.1,
            "weight_decay_mode": "independent", "warmup_frac": 0.05, "final_lr_frac": 0.02, "clip": 0.5,
            "initializer_range": 0.03, "mup": {"output_mult": 4.0, "attn_mult": 1.5},
            "config": {"activation_function": "relu"}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    recipe = Recipe(arch="gpt2", width=32, base_width=32, vocab_size=256, seq_len=32, batch_size=4, steps=3,
                    **SETTINGS)
    spec = sw.SweepSpec("grid", recipe, Corpus(tokenizer="bytes", train_chars=20_000, val_blocks=4))
    data = spec.load_data(out)
    url = f"sqlite:///{out / 'sweep.db'}"
    st = sw.open_study("grid", url, spec.stamp(data))
    sw.run_grid(st, spec, sw.grid_points([32, 64], [-9.0, -8.0], ["mup"], seeds=1), data, progress=False)
    return load_study("grid", url)


@pytest.mark.slow
def test_every_setting_reaches_the_target_recipe(study, tmp_path):
    target_config = Recipe(arch="gpt2", width=128, base_width=32, vocab_size=256, seq_len=32).model_config()
    result = transfer(study, target_config, target_tokens=4 * 32 * 10, batch_size=4, rule="copy")
    r = result.recipe
    for name, value in SETTINGS.items():
        assert getattr(r, name) == value, name
    assert (r.width, r.base_width, r.steps, r.batch_size, r.parametrization) == (128, 32, 10, 4, "mup")
    assert r.lr in (2.0**-9, 2.0**-8) and result.source["proxy_width"] == 64
    # The JSON written for the target run holds the same recipe.
    result.save(tmp_path / "hparams.json")
    assert Transferred.load(tmp_path / "hparams.json").recipe == r
    assert json.loads((tmp_path / "hparams.json").read_text())["recipe"]["betas"] == [0.9, 0.98]
    # The target's optimizer: Lion with the proxy's β, per-tensor independent weight decay, and the linear schedule.
    model = r.build_model()
    optimizer = r.build_optimizer(model)
    assert isinstance(optimizer, Lion) and optimizer.defaults["betas"] == (0.9, 0.98)
    decayed = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert decayed and all(g["weight_decay"] * g["lr"] == pytest.approx(0.1) for g in decayed)  # independent: lr·wd
    factor = r.lr_factor()
    assert factor(r.steps - 1) == pytest.approx(0.02 + 0.98 * (1 - (r.steps - 1 - 1) / (r.steps - 1)))  # linear
    assert model.config.activation_function == "relu" and model.config.initializer_range == 0.03


@pytest.mark.slow
def test_the_target_run_trains_with_the_transferred_recipe(study, tmp_path):
    """recipes/gpt2_wikitext.py --hparams: the Trainer gets the transferred optimizer, schedule and mode."""
    spec = importlib.util.spec_from_file_location("gpt2_wikitext", RECIPES / "gpt2_wikitext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    target_config = Recipe(arch="gpt2", width=128, base_width=32, vocab_size=256, seq_len=64, layers=2,
                           head_dim=16).model_config()
    transfer(study, target_config, batch_size=4, rule="copy").save(tmp_path / "hparams.json")
    args, training = module.parse_args(["--preset", "tiny", "--hparams", str(tmp_path / "hparams.json"),
                                        "--output_dir", str(tmp_path / "out"), "--max_steps", "7"])
    r = args.transferred
    assert (r.optimizer, r.betas, r.schedule, r.weight_decay, r.weight_decay_mode, r.clip) == (
        "lion", (0.9, 0.98), "linear", 0.1, "independent", 0.5)
    assert r.steps == training.max_steps == 7 and training.max_grad_norm == 0.5
    assert (training.adam_beta1, training.adam_beta2, training.weight_decay) == (0.9, 0.98, 0.1)
    assert args.mup_defaults["output_mult"] == 4.0 and args.init_overrides == {"initializer_range": 0.03}
    # An explicit flag still overrides the recipe.
    args, training = module.parse_args(["--preset", "tiny", "--hparams", str(tmp_path / "hparams.json"),
                                        "--output_dir", str(tmp_path / "out"), "--learning_rate", "0.001"])
    assert args.transferred.lr == 0.001 and args.transferred.optimizer == "lion"
    # --weight_decay_timescale replaces the recipe's decay: λ = 1/(lr·τ·steps) in the optimizer the Trainer gets
    args, training = module.parse_args(["--preset", "tiny", "--hparams", str(tmp_path / "hparams.json"),
                                        "--output_dir", str(tmp_path / "out"), "--weight_decay", "0",
                                        "--weight_decay_timescale", "0.5", "--max_steps", "40",
                                        "--mup_weight_decay_mode", "width_independent"])
    r = args.transferred
    assert r.weight_decay_timescale == 0.5 and r.decay == pytest.approx(1 / (r.lr * 0.5 * 40))
    with pytest.raises(MuPError, match="--warmup_tokens with --hparams"):
        module.parse_args(["--preset", "tiny", "--hparams", str(tmp_path / "hparams.json"), "--warmup_tokens", "64"])


def test_recipe_warmup_in_tokens_and_timescale_without_hparams(tmp_path):
    """recipes/gpt2_wikitext.py --warmup_tokens: warmup steps = tokens / (global batch × block); the same tokens at
    another batch give other steps."""
    spec = importlib.util.spec_from_file_location("gpt2_wikitext", RECIPES / "gpt2_wikitext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for batch, steps in ((16, 10), (4, 40)):  # 10240 tokens in blocks of 64
        args, training = module.parse_args(["--preset", "tiny", "--output_dir", str(tmp_path), "--warmup_tokens",
                                            "10240", "--per_device_train_batch_size", str(batch)])
        assert training.warmup_steps == steps
    args, _ = module.parse_args(["--preset", "tiny", "--output_dir", str(tmp_path), "--weight_decay_timescale", "1"])
    assert args.weight_decay_timescale == 1.0


def test_recipe_round_trips_and_refuses_bad_settings():
    r = Recipe(**{k: v for k, v in SETTINGS.items()})
    assert Recipe.from_json(r.to_json()) == r and hash(Recipe.from_json(r.to_json())) == hash(r)
    timed = Recipe(weight_decay_timescale=0.5)
    assert Recipe.from_json(timed.to_json()) == timed and "weight_decay_timescale" not in Recipe().to_dict()
    with pytest.raises(MuPError, match="unknown Recipe field"):
        Recipe.from_dict({**r.to_dict(), "decay": "cosine"})
    with pytest.raises(MuPError, match="optimizer='sgd'"):
        r.replace(optimizer="sgd")
    with pytest.raises(MuPError, match="base_width"):
        Recipe(mup={"base_hidden_size": 64})
    with pytest.raises(TypeError, match="frozen"):
        r.mup["output_mult"] = 1.0
    assert r.replace(mup={"input_mult": 2.0}).mup == {**SETTINGS["mup"], "input_mult": 2.0}


def test_training_setting_reaches_the_optimizer_through_the_loop():
    """The lab's one loop builds its optimizer from the recipe: ε given in the recipe is the optimizer's."""
    r = Recipe(width=32, base_width=32, vocab_size=64, seq_len=8, steps=1, batch_size=2, eps=1e-6)
    model = r.build_model()
    optimizer = r.build_optimizer(model)
    assert optimizer.defaults["eps"] == 1e-6
    assert all(g["eps"] == pytest.approx(1e-6 * g["eps_mult"]) for g in optimizer.param_groups if "eps_mult" in g)
    assert torch.optim.AdamW is type(optimizer)


def test_target_config_fields_beyond_the_shape_reach_the_recipe():
    """A target config's own MLP size and key/value heads are the target's: transfer keeps them in Recipe.config
    (its class defaults and its shape are not copied); the proxy's config fields stay where the target says nothing."""
    from transformers import GPT2Config, LlamaConfig

    from hf_mup.lab.recipe import config_fields_of

    proxy = Recipe(arch="llama", width=64, base_width=64, vocab_size=256, config={"hidden_act": "relu"})
    target = LlamaConfig(hidden_size=128, num_attention_heads=8, head_dim=16, num_hidden_layers=2,
                         intermediate_size=1000, num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    fields = config_fields_of(target, proxy.replace(width=128))
    assert fields == {"intermediate_size": 1000, "num_key_value_heads": 2}
    model = proxy.replace(width=128, config=fields).build_model()
    assert (model.config.intermediate_size, model.config.num_key_value_heads, model.config.hidden_act) == (1000, 2, "relu")
    gpt2 = Recipe(width=128, base_width=64, vocab_size=256, config={"activation_function": "relu"})
    assert config_fields_of(GPT2Config(n_embd=128, n_head=8, n_layer=2, vocab_size=256, n_positions=64), gpt2) == {}


def test_frozen_recipe_copies_pickles_and_refuses_edits():
    import copy
    import pickle

    r = Recipe(arch="llama", width=64, mup={"output_mult": 8}, config={"rope_parameters": {"rope_type": "default",
                                                                                              "rope_theta": 1e4}})
    assert copy.deepcopy(r) == pickle.loads(pickle.dumps(r)) == r
    assert r == r.replace(mup={"output_mult": 8.0}) and hash(r) == hash(r.replace(mup={"output_mult": 8.0}))
    with pytest.raises(TypeError, match="frozen"):
        r.mup |= {"input_mult": 2.0}
    assert r.build_model().config.rope_parameters["rope_theta"] == 1e4  # transformers gets plain, editable dicts
    with pytest.raises(MuPError, match="set those fields instead"):
        Recipe(config={"n_embd": 128})
    with pytest.raises(MuPError, match="weight_decay and clip"):
        Recipe(weight_decay=float("nan"))


def test_a_study_of_the_old_layout_is_refused_by_name(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'old.db'}"
    optuna.create_study(study_name="old", storage=url).set_user_attr("spec", {"mode": "grid", "arch": "gpt2"})
    with pytest.raises(MuPError, match="made by an older hf_mup"):
        load_study("old", url)


def test_gpt2_recipe_refuses_what_the_transferred_recipe_decides(tmp_path):
    spec = importlib.util.spec_from_file_location("gpt2_wikitext", RECIPES / "gpt2_wikitext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    path = tmp_path / "hparams.json"
    Transferred(Recipe(width=128, base_width=64, optimizer="lion", schedule="linear")).save(path)
    common = ["--preset", "tiny", "--hparams", str(path), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(MuPError, match="--lr_scheduler_type with --hparams"):
        module.parse_args([*common, "--lr_scheduler_type", "cosine"])
    args, _ = module.parse_args(common)
    assert args.mup_defaults == {"base_hidden_size": 64}  # the proxy's multipliers only: not the preset's output_mult 8
    Transferred(Recipe(arch="llama", width=128, base_width=64)).save(path)
    with pytest.raises(MuPError, match="holds a llama recipe"):
        module.parse_args(common)
