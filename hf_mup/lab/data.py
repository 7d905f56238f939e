"""Small offline data helpers: the WikiText-2 files shipped inside the package, a locally trained tokenizer, and
fixed-length blocks of token ids. Nothing here touches the network.

Usage:
    from hf_mup import data
    train_file = data.wikitext_dir() / "valid.txt"
    tokenizer = data.train_tokenizer([train_file], vocab_size=2048)
    blocks = data.token_blocks([train_file], tokenizer, block_size=64)   # LongTensor (n_blocks, 64)
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------------------- the one data loader


@dataclass(frozen=True)
class Corpus:
    """Where a run's tokens come from: local text files (default: the WikiText-2 shipped with hf_mup, valid.txt to
    train, test.txt to validate) or a Hub dataset (online), as raw bytes or a byte-level BPE trained locally.

    Usage: `train, val, tokenizer = load_corpus(Corpus(tokenizer="bpe", vocab_size=2048), seq_len=64)`

    `masked`: the corpus feeds a masked LM: bytes get a 257th id for [MASK]; a BPE holds `MASK_TOKEN` among its
    `special_tokens` (ids 1, 2, ... after <|endoftext|>, inside `vocab_size`).
    """

    tokenizer: str = "bpe"  # "bpe" or "bytes"
    vocab_size: int = 2048  # the BPE's (bytes: 256, 257 when masked)
    special_tokens: tuple[str, ...] = ()
    masked: bool = False
    train_file: str | None = None
    val_file: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    text_column: str = "text"
    train_chars: int | None = None  # only the first N characters of the training text
    val_blocks: int = 128

    def __post_init__(self) -> None:
        from ..errors import MuPError

        if self.tokenizer not in ("bpe", "bytes"):
            raise MuPError(f"tokenizer {self.tokenizer!r}: use bpe or bytes.")
        if self.val_blocks < 1:
            raise MuPError(f"val_blocks {self.val_blocks}: at least 1.")
        tokens = tuple(self.special_tokens)
        if self.masked and self.tokenizer == "bpe" and MASK_TOKEN not in tokens:
            tokens = (MASK_TOKEN, *tokens)
        object.__setattr__(self, "special_tokens", tokens if self.tokenizer == "bpe" else ())
        if self.tokenizer == "bytes":
            object.__setattr__(self, "vocab_size", 256 + self.masked)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> Corpus:
        return cls(**{**d, "special_tokens": tuple(d.get("special_tokens", ()))})

    @property
    def mask_id(self) -> int | None:
        if not self.masked:
            return None
        return 256 if self.tokenizer == "bytes" else 1 + self.special_tokens.index(MASK_TOKEN)

    @property
    def special_ids(self) -> list[int]:
        """Ids never chosen as masking targets: the BPE's <|endoftext|> and its special tokens but [MASK]."""
        if self.tokenizer == "bytes":
            return []
        return [0] + [1 + i for i, t in enumerate(self.special_tokens) if t != MASK_TOKEN]

    def masking(self) -> dict:
        """The masked-LM keywords of `hf_mup.lab.lm.train_lm` / `evaluate` (none for a causal LM)."""
        return {"mask_id": self.mask_id, "special_ids": self.special_ids} if self.masked else {}


def _text_to_file(dataset: str, config: str | None, column: str, out: Path) -> tuple[Path, Path]:
    """A Hub dataset's train and validation text written to files in `out` (online users)."""
    from datasets import load_dataset

    from ..errors import MuPError

    raw = load_dataset(dataset, config)
    val_split = next((s for s in ("validation", "valid", "test") if s in raw), None)
    if "train" not in raw or val_split is None:
        raise MuPError(f"dataset {dataset!r} needs a train and a validation (or test) split; it has {list(raw)}.")
    paths = []
    for split, name in (("train", "train.txt"), (val_split, "val.txt")):
        path = out / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for text in raw[split][column]:
                f.write(text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _byte_blocks(path: PathLike, block: int, max_chars: int | None, max_blocks: int | None = None) -> torch.Tensor:
    from ..errors import MuPError

    text = "".join(read_lines([path], max_chars)).encode("utf-8")
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = len(ids) // block if max_blocks is None else min(len(ids) // block, max_blocks)
    if n == 0:
        raise MuPError(f"{path} has too little text for one block of {block} tokens.")
    return ids[: n * block].view(n, block)


def load_corpus(corpus: Corpus, seq_len: int, out: PathLike = ".") -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(train blocks, validation blocks, tokenizer) of `corpus` in blocks of `seq_len` (the tokenizer: None for
    bytes); the validation blocks are the first `val_blocks` of the validation text. A Hub dataset is written to
    text files under `out` first.

    Usage: `train, val, tok = load_corpus(Corpus(), seq_len=64)`
    """
    from ..errors import MuPError

    if corpus.dataset:
        train_file, val_file = _text_to_file(corpus.dataset, corpus.dataset_config, corpus.text_column, Path(out))
    else:  # None: the WikiText-2 shipped with hf_mup (kept out of the recipe, so machines may keep it elsewhere)
        train_file = Path(corpus.train_file or wikitext_dir() / "valid.txt")
        val_file = Path(corpus.val_file or wikitext_dir() / "test.txt")
    for path in (train_file, val_file):
        if not Path(path).is_file():
            raise MuPError(f"data file {path} not found.")
    n_val = corpus.val_blocks
    # Enough text for n_val blocks without tokenizing a whole file; at least 100k characters, because the cap is
    # applied per line and WikiText has paragraphs of thousands (the first n_val blocks are the same either way).
    val_chars = max(n_val * seq_len * 8, 100_000)
    if corpus.tokenizer == "bytes":
        return (_byte_blocks(train_file, seq_len, corpus.train_chars),
                _byte_blocks(val_file, seq_len, val_chars, n_val), None)
    tok = train_tokenizer([train_file], vocab_size=corpus.vocab_size, max_chars=corpus.train_chars,
                          special_tokens=corpus.special_tokens)
    if len(tok) != corpus.vocab_size:
        raise MuPError(f"the BPE trained on {train_file} reached {len(tok)} tokens, not the vocabulary size "
                       f"{corpus.vocab_size}: use a smaller vocabulary or more text.")
    try:
        blocks = (token_blocks([train_file], tok, seq_len, max_chars=corpus.train_chars),
                  token_blocks([val_file], tok, seq_len, max_blocks=n_val, max_chars=val_chars))
    except ValueError as e:
        raise MuPError(str(e)) from None
    return (*blocks, tok)


def fingerprint(*tensors: torch.Tensor) -> str:
    """A short hash of `tensors`' contents: a study stores its data's, so that other data is refused."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def epochs(examples: list, n: int, seed: int) -> list:
    """The first `n` examples of a shuffled pass over `examples`, then another, ...: read in order, one batch per
    step, this is the batch sequence whatever the number of processes (accelerate gives each process its slice of
    consecutive batches) and after a resume (the Trainer skips the batches done)."""
    g = torch.Generator().manual_seed(seed)
    out: list = []
    while len(out) < n:
        out += [examples[i] for i in torch.randperm(len(examples), generator=g).tolist()]
    return out[:n]


def stack(examples: list[dict]) -> dict[str, torch.Tensor]:
    """The pretraining collator: the examples' tensors stacked (masks were drawn once, in `Pipeline.examples`)."""
    return {k: torch.stack([torch.as_tensor(e[k]) for e in examples]) for k in examples[0]}
