"""The offline demo and the data helpers: a tiny end-to-end run and a tokenizer round trip."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import math

import pytest
import torch

from hf_mup.lab import data, demo


@pytest.fixture(scope="module")
def tokenizer():
    return data.train_tokenizer([data.wikitext_dir() / "valid.txt"], vocab_size=512)


def test_wikitext_files_are_shipped():
    folder = data.wikitext_dir()
    for name in ("valid.txt", "test.txt", "ATTRIBUTION.md"):
        assert (folder / name).is_file(), name


def test_wikitext_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.wikitext_dir() == tmp_path
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        data.wikitext_dir()


def test_tokenizer_trains_and_round_trips(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.eos_token == data.EOS_TOKEN and tokenizer.eos_token_id is not None
    text = " = Homarus gammarus = \n The lobster , <unk> 60 cm ( 24 in ) ; café – 日本語 !\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode())  # merges learned: fewer tokens than bytes
    assert tokenizer.decode(ids) == text


def test_tokenizer_max_chars():
    tok = data.train_tokenizer([data.wikitext_dir() / "valid.txt"], vocab_size=300, max_chars=50_000)
    assert len(tok) == 300
    assert tok.decode(tok("lobster")["input_ids"]) == "lobster"


def test_token_blocks(tokenizer):
    file = data.wikitext_dir() / "test.txt"
    blocks = data.token_blocks([file], tokenizer, block_size=32, max_blocks=10, max_chars=20_000)
    assert blocks.shape == (10, 32) and blocks.dtype == torch.long
    assert 0 <= int(blocks.min()) and int(blocks.max()) < len(tokenizer)
    flat = data.token_ids([file], tokenizer, max_chars=20_000)
    assert torch.equal(blocks.flatten(), flat[: 10 * 32])


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    out = tmp_path / "demo"
    argv = [
        "--out", str(out), "--steps", "4", "--eval-every", "2", "--eval-blocks", "4",
        "--base-width", "32", "--wide-width", "64", "--batch-size", "4", "--seq-len", "32",
        "--vocab-size", "300", "--train-chars", "100000", "--no-progress",
    ]
    assert demo.main(argv) == 0
    assert (out / "loss_curves.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"mup_proxy", "mup_wide", "sp_wide"}
    for name, r in results["models"].items():
        assert len(r["train_loss"]) == 4, name
        assert all(math.isfinite(v) for v in r["train_loss"]), name
        assert r["val_steps"] == [2, 4], name
        assert math.isfinite(r["final_val_loss"]), name
    assert results["models"]["mup_wide"]["width"] == 64
    assert results["hyperparameters"]["lr"] == 2**-8
    assert results["data"]["val_tokens"] == 4 * 32
    assert results["summary"]
