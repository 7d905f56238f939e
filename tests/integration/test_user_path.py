"""A newcomer's path, tried as a user takes it: the README's μTransfer chain run as written (sizes
shrunk by flags appended to its own commands) to a target of another depth; missing extras, missing task data and
typos refused before any work with the line that fixes them; logs without torchao / _pytree noise or progress bars."""
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import hf_mup
from hf_mup import MuPError
from hf_mup.lab import cli, data
from hf_mup.lab import coord_check as cc

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
BAR = re.compile(r"\d+%\|| \d+/\d+ \[|it/s\]|s/it\]")  # a tqdm progress bar


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _readme_chain() -> list[str]:
    """The commands of the μTransfer chain (check, tune the proxy, copy to the target) as the docs give it: the bash
    block of docs/guides/sweeps.md (moved there from the README) that runs `hf-mup sweep --mode tune`, one per line."""
    text = (ROOT / "docs" / "guides" / "sweeps.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    block = next(b for b in blocks if "hf-mup sweep --mode tune" in b)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _command(lines: list[str], start: str) -> list[str]:
    matches = [line for line in lines if line.startswith(start)]
    assert len(matches) == 1, (start, lines)
    return shlex.split(matches[0], comments=True)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-mup: error: "), err
    return err[0]


# Appended to the README's own commands (argparse keeps an option's last value): seconds-sized runs.
SMALL_SWEEP = ["--widths", "64", "--head-dim", "16", "--layers", "1", "--base-layers", "1", "--n-trials", "1",
               "--steps", "3", "--batch-size", "4", "--seq-len", "32", "--train-chars", "20000", "--val-blocks", "4",
               "--vocab-size", "300"]


@pytest.mark.slow
def test_readme_transfer_chain_runs_as_written_to_a_deeper_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = _readme_chain()
    sweep = _command(lines, "hf-mup sweep --mode tune")
    assert "--base-layers" in sweep  # depth-scaled, so a 12-layer target may follow a 2-layer proxy
    assert cli.main(sweep[1:] + SMALL_SWEEP) == 0
    out = capsys.readouterr()
    assert "best trial 0" in out.out and not BAR.search(out.err)  # not a terminal: no progress bars, but
    assert re.search(r"^trial 0 \(mup width 64 seed 0, log2 LR -?[\d.]+\): train loss [\d.]+, val loss [\d.]+ "
                     r"\(\d+ s\); 1 complete$", out.out, re.M)  # a line per trial
    # The README's one-liner that writes the target's config.json, shrunk from GPT-2 small to 128 wide, 2 layers.
    python = _command(lines, "python -c")
    code = python[2]
    small = re.sub(r"n_layer=\d+", "n_layer=2", re.sub(r"n_head=\d+", "n_head=8", re.sub(r"n_embd=\d+", "n_embd=128",
                                                                                       code)))
    assert small != code and "save_pretrained('target')" in code
    exec(small, {})
    transfer = _command(lines, "hf-mup transfer")
    assert "target/config.json" in transfer
    assert cli.main(transfer[1:]) == 0
    assert "depth scaling (CompleteP, α = 1, base 1 layers) carries the settings over" in capsys.readouterr().out
    hparams = json.loads(Path("hparams.json").read_text())
    assert hparams["recipe"]["mup"]["base_num_layers"] == 1 and hparams["recipe"]["layers"] == 2
    # The recipe, on the tiny preset (128 wide, 2 layers: the target above) for two steps.
    recipe = _command(lines, "python recipes/gpt2_wikitext.py")
    text = tmp_path / "text.txt"
    text.write_text((data.wikitext_dir() / "valid.txt").read_text()[:40_000])
    metrics = _recipe("gpt2_wikitext").main(recipe[2:] + [
        "--preset", "tiny", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
        "--max_eval_blocks", "4", "--vocab_size", "300", "--per_device_train_batch_size", "4",
        "--train_file", str(text), "--validation_file", str(text)])
    assert metrics["eval_loss"] < 10
    model = hf_mup.MuPModel.from_pretrained("out/small")
    assert model.config.n_layer == 2 and model.config.mup["base_num_layers"] == 1
    assert hf_mup.get_plan(model).residual_scale == pytest.approx(0.5)  # (base 1 / 2 layers)^α, α = 1
    assert "note:" not in capsys.readouterr().err  # hparams.json was made for this shape


def test_depth_change_without_depth_scaling_names_the_cli_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = _readme_chain()
    sweep = _command(lines, "hf-mup sweep --mode tune")
    argv = sweep[1:] + SMALL_SWEEP + ["--study", "width"]
    i = argv.index("--base-layers")
    while "--base-layers" in argv:  # a proxy tuned without depth scaling
        i = argv.index("--base-layers")
        del argv[i:i + 2]
    assert cli.main(argv) == 0
    Path("target.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 128, "n_head": 8, "n_layer": 2}))
    capsys.readouterr()
    transfer = ["transfer", "--study", "width", "--out", "sweep_tune", "--target-config", "target.json",
                "--output", "hparams.json"]
    assert cli.main(transfer) == 2
    line = _error(capsys)
    assert "The target has 2 layers, the proxy of study 'width' 1" in line
    assert "hf-mup sweep --layers 1 --base-layers 1" in line and "hf-mup transfer --allow-depth-change" in line
    assert not Path("hparams.json").exists()
    assert cli.main(transfer + ["--allow-depth-change"]) == 0
    assert "copied without depth scaling (allow_depth_change): the optimum may move" in capsys.readouterr().out
    assert "base_num_layers" not in json.loads(Path("hparams.json").read_text())["recipe"]["mup"]


# ------------------------------------------------------------------------------------------------ missing extras


def _fail(*args, **kwargs):
    raise AssertionError("work started before the refusal")


@pytest.mark.parametrize("module, argv, what, extra", [
    ("matplotlib", ["coord-check"], "hf-mup coord-check (its plot, coord_check.png) needs matplotlib", "sweep"),
    ("optuna", ["sweep", "--widths", "32,64"], "hf-mup sweep needs optuna", "sweep"),
    ("optuna", ["transfer", "--study", "x", "--target-config", "t.json"], "hf-mup transfer (it reads an Optuna "
     "study) needs optuna", "sweep"),
    ("datasets", ["sweep", "--widths", "32,64", "--dataset", "wikitext"], "hf-mup sweep --dataset (a Hub dataset) "
     "needs datasets", "train"),
])
def test_cli_names_a_missing_extra_before_any_work(module, argv, what, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed: `import module` fails
    monkeypatch.setattr(cc, "coord_check", _fail)
    assert cli.main(argv) == 2
    assert _error(capsys) == f"hf-mup: error: {what}, which is not installed: pip install 'hf_mup[{extra}]'"
    assert not list(tmp_path.rglob("*"))  # no CSV, no study, no folder


def test_demo_and_recipes_name_a_missing_extra_before_any_work(tmp_path, monkeypatch, capsys):
    from hf_mup.lab import demo
    from hf_mup.lab.pipeline import BERT_PRESETS, main

    monkeypatch.setattr(data, "train_tokenizer", _fail)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main(["--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err.strip() == ("python -m hf_mup.lab.demo: error: the demo (its loss-curve plot) needs "
                                               "matplotlib, which is not installed: pip install 'hf_mup[sweep]'")
    assert main(["--preset", "tiny", "--output_dir", str(tmp_path / "bert"), "--tasks", "nsp"], BERT_PRESETS,
                "bert_large") == 2
    assert "needs matplotlib, which is not installed: pip install 'hf_mup[train,sweep]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "accelerate", None)
    assert main(["--preset", "tiny", "--output_dir", str(tmp_path / "bert"), "--tasks", "nsp", "--dry_run"],
                BERT_PRESETS, "bert_large") == 2
    assert "needs accelerate, matplotlib, which are not installed" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SystemExit, match=r"gpt2_wikitext: error: recipes/gpt2_wikitext.py needs accelerate, datasets, "
                                         r"which are not installed: pip install 'hf_mup\[train\]'"):
        _recipe("gpt2_wikitext").main(["--output_dir", str(tmp_path / "gpt2")])
    assert not list(tmp_path.rglob("*"))


def test_coord_check_gives_its_verdict_before_the_plot(tmp_path, monkeypatch, capsys):
    def broken_plot(records, path):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(cc, "plot", broken_plot)
    with pytest.raises(RuntimeError, match="the plot failed"):
        cli.main(["coord-check", "--widths", "32,64", "--steps", "2", "--seeds", "2", "--layers", "1",
                  "--seq-len", "8", "--batch-size", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^(PASS: every μP slope is inside the band|FAIL: \d+ μP slope\(s\) outside)", out, re.M)
    assert (tmp_path / "coord_check.csv").is_file() and not (tmp_path / "coord_check.png").exists()


# ------------------------------------------------------------------------------------------- inputs and typos


def test_inspect_a_missing_local_looking_name_fails_at_once(tmp_path, monkeypatch, capsys):
    import transformers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _fail)  # no Hub lookup, no retries
    assert cli.main(["inspect", "my_ckpt"]) == 2
    assert _error(capsys) == ("hf-mup: error: my_ckpt: no such file or folder here (expected a config.json or a "
                              "checkpoint folder; a Hub model is named owner/name, e.g. openai-community/gpt2).")


def test_mupconfig_unknown_keyword_says_did_you_mean():
    import dataclasses

    with pytest.raises(MuPError, match=r"Unknown μP setting\(s\) for MuPConfig: 'zero_init_quey' \(did you mean "
                                       r"'zero_init_query'\?\)\. μP settings: base_hidden_size, "):
        hf_mup.MuPConfig(base_hidden_size=64, zero_init_quey=False)
    config = hf_mup.MuPConfig(base_hidden_size=64, zero_init_query=False)  # still a plain frozen dataclass
    assert dataclasses.replace(config, output_mult=2.0).output_mult == 2.0
    assert dataclasses.asdict(config)["zero_init_query"] is False
    assert [f.name for f in dataclasses.fields(config)][:2] == ["base_hidden_size", "base_intermediate_size"]
    with pytest.raises(MuPError, match="did you mean 'output_mult'"):
        dataclasses.replace(config, output_mul=2.0)


def test_pipeline_checks_every_stage_input_before_the_first(tmp_path, monkeypatch, capsys):
    from hf_mup.lab.pipeline import BERT_PRESETS, Pipeline, main

    monkeypatch.setenv("HF_MUP_POLARITY", str(tmp_path / "no_polarity"))
    out = tmp_path / "bert"
    for extra in ([], ["--dry_run"]):
        assert main(["--preset", "tiny", "--output_dir", str(out), *extra], BERT_PRESETS, "bert_large") == 2
        err = capsys.readouterr().err
        assert err.startswith("bert_large: error: sentence-polarity data not found: ") and "HF_MUP_POLARITY" in err
        assert "--tasks nsp" in err
    assert main(["--preset", "tiny", "--output_dir", str(out), "--tasks", "polarty"], BERT_PRESETS, "bert_large") == 2
    assert "unknown task 'polarty'" in capsys.readouterr().err
    with pytest.raises(MuPError, match="HF_MUP_POLARITY"):
        Pipeline(BERT_PRESETS["tiny"], out).run()  # the library refuses before the search too
    assert not out.exists()  # nothing was started
    assert main(["--preset", "tiny", "--output_dir", str(out), "--tasks", "nsp", "--dry_run"], BERT_PRESETS,
                "bert_large") == 0
    assert json.loads(capsys.readouterr().out)["finetune"]["tasks"] == ["nsp"]


@pytest.mark.slow
def test_a_recipe_log_has_no_noise(tmp_path):
    """torchao's failed CUDA-kernel loads, torch's _pytree Enum deprecation and progress bars are not in a log file."""
    text = tmp_path / "text.txt"
    text.write_text((data.wikitext_dir() / "valid.txt").read_text()[:20_000])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "c")}
    env.pop("TRANSFORMERS_VERBOSITY", None)  # the user's default verbosity
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "gpt2_wikitext.py"), "--preset", "tiny", "--output_dir", str(tmp_path / "out"),
         "--max_steps", "1", "--eval_steps", "1", "--logging_steps", "1", "--max_eval_blocks", "2", "--vocab_size",
         "300", "--per_device_train_batch_size", "2", "--train_file", str(text), "--validation_file", str(text)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "eval loss" in proc.stdout and "'loss'" in proc.stdout  # progress and results, as lines
    for noise in ("Failed to load", "_pytree", "Enum subclass", "pin_memory", "loss_type"):
        assert noise not in log, log[-3000:]
    assert not BAR.search(log), log[-3000:]


def test_recipe_says_when_hparams_were_made_for_another_shape(tmp_path, capsys):
    from hf_mup.lab.recipe import Recipe
    from hf_mup.lab.transfer import Transferred

    hparams = tmp_path / "hparams.json"
    Transferred(Recipe(width=128, layers=12, head_dim=16, base_width=64)).save(hparams)  # 8 heads, as tiny's
    _recipe("gpt2_wikitext").parse_args(["--preset", "tiny", "--hparams", str(hparams), "--output_dir", str(tmp_path)])
    assert capsys.readouterr().err.strip() == (
        f"note: {hparams} was transferred to a target with n_layer 12; training --preset tiny's shape n_layer 2 "
        "(pick the preset of that target)")
