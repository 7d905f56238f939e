"""Sentence tasks for fine-tuning, offline: labelled TSV files (e.g. sentence polarity) and a next-sentence task
derived from WikiText-2; and a short fine-tuning loop that reports held-out accuracy.

Usage:
    train, test = tasks.load_tsv("../shared/data/sentence-polarity/train.tsv"), tasks.load_tsv(".../test.tsv")
    pairs = tasks.next_sentence_pairs(data.wikitext_dir() / "valid.txt", seed=0)      # [(a, b, label)]
    recipe = tasks.finetune_recipe(classifier, len(train), lr=1e-4, epochs=2)
    acc = tasks.finetune(classifier, tokenizer, train, test, recipe)["accuracy"]
"""
from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import MuPError
from .recipe import Recipe

# A labelled example: (text, label) or (text_a, text_b, label).
Example = tuple


def load_tsv(path: str | Path, text_columns: Sequence[str] = ("sentence",), label_column: str = "label") -> list[Example]:
    """Rows of a TSV file with a header, as (text..., label) tuples; a file without the columns is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise MuPError(f"Fine-tuning data file {path} not found.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in (*text_columns, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise MuPError(
                f"{path} lacks the column(s) {missing}: it has {reader.fieldnames}. A task file needs a header line with "
                f"{', '.join((*text_columns, label_column))} (tab-separated)."
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                label = int(row[label_column])
            except (TypeError, ValueError):
                raise MuPError(f"{path}, line {i}: label {row[label_column]!r} is not an integer.") from None
            rows.append((*(row[c] for c in text_columns), label))
    if not rows:
        raise MuPError(f"{path} has no examples.")
    return rows


# GLUE tasks (online, through `datasets`): their text columns and evaluation split.
GLUE = {"sst2": (("sentence",), "validation"), "cola": (("sentence",), "validation"),
        "mrpc": (("sentence1", "sentence2"), "validation"), "qqp": (("question1", "question2"), "validation"),
        "mnli": (("premise", "hypothesis"), "validation_matched"), "qnli": (("question", "sentence"), "validation"),
        "rte": (("sentence1", "sentence2"), "validation")}


def polarity_dir() -> Path:
    """The sentence-polarity folder: the one HF_MUP_POLARITY names, else ../shared/data/sentence-polarity beside the
    project (read from there, never copied into it)."""
    import os

    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "sentence-polarity"
    return Path(os.environ.get("HF_MUP_POLARITY", default))


def check_task(task: str) -> None:
    """Refuse, without reading it, a fine-tuning task whose data is not there: an unknown name, the sentence-polarity
    folder missing (`HF_MUP_POLARITY`), WikiText-2 missing (nsp), `datasets` not installed (GLUE)."""
    from . import data

    if task == "polarity":
        folder = polarity_dir()
        missing = [f for f in ("train.tsv", "test.tsv") if not (folder / f).is_file()]
        if missing:
            raise MuPError(f"sentence-polarity data not found: {folder} has no {' or '.join(missing)}. Set "
                           "HF_MUP_POLARITY to the folder holding train.tsv and test.tsv (columns sentence, label), "
                           "or leave the task out (--tasks nsp).")
    elif task == "nsp":
        try:
            folder = data.wikitext_dir()
        except FileNotFoundError as e:
            raise MuPError(str(e)) from None
        if not (folder / "test.txt").is_file():
            raise MuPError(f"the next-sentence task reads WikiText-2's test.txt, which {folder} does not hold: set "
                           f"{data.DATA_ENV} to a folder holding valid.txt and test.txt.")
    elif task in GLUE:
        from ..extras import require

        require("train", "datasets", what=f"the GLUE task {task!r} (read from the Hub with datasets)")
    else:
        raise MuPError(f"unknown task {task!r}: use polarity or nsp (offline) or a GLUE task ({', '.join(GLUE)}; "
                       "online).")


def load_task(task: str) -> tuple[list[Example], list[Example]]:
    """(train, test) examples of a fine-tuning task: "polarity" (`polarity_dir()`), "nsp" (next sentence, from
    WikiText-2), or a GLUE name (online)."""
    from . import data

    check_task(task)
    if task == "polarity":
        folder = polarity_dir()
        return load_tsv(folder / "train.tsv"), load_tsv(folder / "test.tsv")
    if task == "nsp":
        return split(next_sentence_pairs(data.wikitext_dir() / "test.txt", seed=0), 0.2)
    return load_glue(task)


def load_glue(task: str) -> tuple[list[Example], list[Example]]:
    """(train, dev) examples of a GLUE task from the Hub (online users; the test sets have no labels)."""
    from datasets import load_dataset

    columns, dev = GLUE[task]
    raw = load_dataset("nyu-mll/glue", task)
    return ([(*(r[c] for c in columns), int(r["label"])) for r in raw["train"]],
            [(*(r[c] for c in columns), int(r["label"])) for r in raw[dev]])


_HEADING = re.compile(r"^ = [^=].* = $")  # a WikiText article title (sections have == or more)


def wikitext_articles(path: str | Path) -> list[list[str]]:
    """WikiText-2 raw text as articles, each a list of sentences (split after " . ", the corpus's tokenised full stop)."""
    articles: list[list[str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if _HEADING.match(line):
            articles.append([])
        elif articles and line.strip() and not line.lstrip().startswith("="):
            parts = [s.strip() for s in re.split(r"(?<= \.) ", line.strip())]
            articles[-1] += [s for s in parts if len(s.split()) >= 4]
    return [a for a in articles if len(a) >= 2]


def next_sentence_pairs(path: str | Path, seed: int = 0, max_pairs: int | None = None) -> list[Example]:
    """A balanced next-sentence task: (A, B, 1) when B follows A in its article, (A, B, 0) when B is a sentence of
    another article. Exactly half of the pairs are positive; no pair holds the same sentence twice."""
    articles = wikitext_articles(path)
    if len(articles) < 2:
        raise MuPError(f"{path} has fewer than two articles: no next-sentence task can be made from it.")
    rng = random.Random(seed)
    firsts = [(i, j) for i, art in enumerate(articles) for j in range(len(art) - 1)]
    rng.shuffle(firsts)
    if max_pairs is not None:
        firsts = firsts[: max_pairs - max_pairs % 2]
    firsts = firsts[: len(firsts) - len(firsts) % 2]
    pairs = []
    for k, (i, j) in enumerate(firsts):
        a = articles[i][j]
        if k % 2 == 0:
            b, label = articles[i][j + 1], 1
        else:
            while True:
                other = rng.randrange(len(articles))
                if other != i:
                    b, label = rng.choice(articles[other]), 0
                    break
        if b == a:  # a repeated sentence: take the other label's partner instead of pairing it with itself
            continue
        pairs.append((a, b, label))
    positives = sum(p[2] for p in pairs)
    pairs = _balance(pairs, positives, rng)
    rng.shuffle(pairs)
    return pairs


def _balance(pairs: list[Example], positives: int, rng: random.Random) -> list[Example]:
    negatives = len(pairs) - positives
    drop_label, excess = (1, positives - negatives) if positives > negatives else (0, negatives - positives)
    keep = []
    for p in pairs:
        if excess and p[2] == drop_label:
            excess -= 1
            continue
        keep.append(p)
    return keep


def add_pair_template(tokenizer) -> None:
    """BERT's input layout on a locally trained tokenizer with [CLS], [SEP] and [PAD] special tokens:
    `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with token type ids 0 / 1."""
    from tokenizers.processors import TemplateProcessing

    cls, sep = tokenizer.convert_tokens_to_ids("[CLS]"), tokenizer.convert_tokens_to_ids("[SEP]")
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token = "[CLS]", "[SEP]", "[PAD]"
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]


def split(examples: list[Example], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A seeded (train, test) split."""
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, int(len(shuffled) * test_fraction))
    return shuffled[n_test:], shuffled[:n_test]


def _encode(tokenizer, batch: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    texts = [e[:-1] for e in batch]
    firsts = [t[0] for t in texts]
    seconds = [t[1] for t in texts] if len(texts[0]) > 1 else None
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    enc["labels"] = torch.tensor([e[-1] for e in batch])
    return dict(enc)


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer, examples: list[Example], batch_size: int = 64,
             max_length: int = 128) -> dict[str, float]:
    """Held-out `accuracy` and mean cross-entropy `loss` of a sequence classifier."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    for i in range(0, len(examples), batch_size):
        enc = {k: v.to(device) for k, v in _encode(tokenizer, examples[i : i + batch_size], max_length).items()}
        labels = enc.pop("labels")
        logits = model(**enc).logits.float()
        correct += (logits.argmax(-1) == labels).sum().item()
        loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    return {"accuracy": correct / len(examples), "loss": loss / len(examples)}


def accuracy(model: torch.nn.Module, tokenizer, examples: list[Example], batch_size: int = 64,
             max_length: int = 128) -> float:
    """Held-out accuracy of a sequence classifier."""
    return evaluate(model, tokenizer, examples, batch_size, max_length)["accuracy"]


def finetune_recipe(model: torch.nn.Module, n_examples: int, lr: float, epochs: int = 2, batch_size: int = 32,
                    warmup_frac: float = 0.1, weight_decay: float = 0.0, seed: int = 0, adapters: str = "mup") -> Recipe:
    """The `Recipe` of a fine-tuning run: AdamW (β = (0.9, 0.999)), linear warmup then linear decay to 0, clipping
    at 1, `epochs` passes over `n_examples` in batches of `batch_size`; μP groups for a μP model, one LR otherwise;
    `adapters`: how a PEFT model's adapter tensors train (`hf_mup.lab.recipe.ADAPTERS`)."""
    from ..model import get_plan, is_mup

    config: Any = model.config
    plan = get_plan(model) if is_mup(model) else None
    shape: dict[str, Any] = {"width": config.hidden_size, "head_dim": config.hidden_size // config.num_attention_heads,
             "layers": config.num_hidden_layers, "vocab_size": config.vocab_size}
    return Recipe(arch=config.model_type, **shape, parametrization="mup" if plan else "sp",
                  base_width=plan.mup.base_hidden_size if plan else None, optimizer="adamw", lr=lr,
                  betas=(0.9, 0.999), weight_decay=weight_decay, schedule="linear", warmup_frac=warmup_frac,
                  final_lr_frac=0.0, clip=1.0, batch_size=batch_size, steps=epochs * math.ceil(n_examples / batch_size),
                  seed=seed, adapters=adapters)


def finetune(model: torch.nn.Module, tokenizer, train: list[Example], test: list[Example], recipe: Recipe,
             max_length: int = 128) -> dict:
    """Fine-tune a sequence classifier as `recipe` says (the lab's one loop, `hf_mup.lab.train`), in shuffled passes
    over `train` drawn from the recipe's seed; returns `accuracy` and `loss` on `test` and the per-step `train_loss`.

    Usage: `finetune(model, tok, train, test, finetune_recipe(model, len(train), lr=1e-4, epochs=2))`
    """
    from .train import train as train_loop

    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    rng = random.Random(recipe.seed)

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            order = train[:]
            rng.shuffle(order)
            for i in range(0, len(order), recipe.batch_size):
                yield {k: v.to(device) for k, v in _encode(tokenizer, order[i : i + recipe.batch_size],
                                                           max_length).items()}

    r = train_loop(model, recipe, batches())
    nan = {"accuracy": float("nan"), "loss": float("nan")}
    held_out = nan if r["diverged"] else evaluate(model, tokenizer, test, max_length=max_length)
    return {**held_out, "train_loss": r["train_loss"], "diverged": r["diverged"]}


class load_report_off:
    """transformers' load report (unexpected MLM-head and missing classifier tensors) silenced while a pretrained
    masked LM opens as a classifier: expected for every fine-tuning run, and a table each in the log otherwise."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.level)
