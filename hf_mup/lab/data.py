"""Small offline data helpers: the WikiText-2 files shipped inside the package, a locally trained tokenizer, and
fixed-length blocks of token ids. Nothing here touches the network.

Usage:
    from hf_mup import data
    train_file = data.wikitext_dir() / "valid.txt"
    tokenizer = data.train_tokenizer([train_file], vocab_size=2048)
    blocks = data.token_blocks([train_file], tokenizer, block_size=64)   # LongTensor (n_blocks, 64)
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

DATA_ENV = "HF_MUP_DATA"
EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "[MASK]"  # a masked LM's mask token: `train_tokenizer(..., special_tokens=[MASK_TOKEN])`

PathLike = str | os.PathLike

# Package data (setup.cfg [options.package_data]): WikiText-2 raw, CC BY-SA 3.0, see its ATTRIBUTION.md.
PACKAGED_WIKITEXT = Path(__file__).resolve().parents[1] / "_data" / "wikitext-2"


def wikitext_dir() -> Path:
    """The folder with the WikiText-2 raw files (valid.txt, test.txt) shipped inside the package (`hf_mup/_data/`).

    Override it with the environment variable `HF_MUP_DATA` (a folder holding the same two files).
    """
    override = os.environ.get(DATA_ENV)
    folder = Path(override) if override else PACKAGED_WIKITEXT
    if not folder.is_dir():
        where = f"{DATA_ENV}={override!r}" if override else f"the copy shipped with hf_mup ({folder})"
        raise FileNotFoundError(
            f"WikiText-2 folder not found: {where}. Set the environment variable {DATA_ENV} to a folder holding "
            "valid.txt and test.txt (the WikiText-2 raw validation and test splits)."
        )
    return folder


def read_lines(files: Iterable[PathLike], max_chars: int | None = None) -> list[str]:
    """The lines of `files` in order, newlines kept; at most `max_chars` characters in all when given."""
    lines: list[str] = []
    total = 0
    for file in files:
        with open(file, encoding="utf-8") as f:
            for line in f:
                if max_chars is not None and total + len(line) > max_chars:
                    return lines
                lines.append(line)
                total += len(line)
    return lines


def train_tokenizer(
    files: Sequence[PathLike], vocab_size: int = 2048, min_frequency: int = 2, max_chars: int | None = None,
    special_tokens: Sequence[str] = (),
):
    """A byte-level BPE trained locally on `files` (about a second for WikiText-2), as a `PreTrainedTokenizerFast`.

    `max_chars`: train on the first `max_chars` characters only.
    Its eos token is `<|endoftext|>` (id 0); byte-level, so any text round-trips through encode/decode.
    `special_tokens`: more special tokens, ids 1, 2, ... in order (inside `vocab_size`); `MASK_TOKEN` among them
    becomes the tokenizer's `mask_token` (for masked-LM training, e.g. `DataCollatorForLanguageModeling`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if max_chars is None:
        tok.train([str(f) for f in files], trainer)
    else:
        tok.train_from_iterator(read_lines(files, max_chars), trainer)
    extra = [t for t in special_tokens if t != MASK_TOKEN]
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                   **({"mask_token": MASK_TOKEN} if MASK_TOKEN in special_tokens else {}),
                                   **({"extra_special_tokens": extra} if extra else {}))


def token_ids(files: Sequence[PathLike], tokenizer, max_chars: int | None = None) -> torch.Tensor:
    """All of `files` (or their first `max_chars` characters) as one 1-d LongTensor of token ids."""
    lines = read_lines(files, max_chars)
    if not lines:
        return torch.empty(0, dtype=torch.long)
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return torch.tensor([i for line in ids for i in line], dtype=torch.long)


def token_blocks(
    files: Sequence[PathLike],
    tokenizer,
    block_size: int = 64,
    max_blocks: int | None = None,
    max_chars: int | None = None,
) -> torch.Tensor:
    """`files` tokenized, concatenated and cut into a LongTensor (n_blocks, block_size); the remainder is dropped.

    For causal LM training use a block as both `input_ids` and `labels` (the model shifts them).
    """
    ids = token_ids(files, tokenizer, max_chars)
    n = len(ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"{len(ids)} tokens in {[str(f) for f in files]} do not fill one block of {block_size}.")
    return ids[: n * block_size].view(n, block_size)
