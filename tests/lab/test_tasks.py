"""Fine-tuning tasks: the TSV loader, the WikiText-2 next-sentence task, the held-out accuracy and the loop."""
import pytest
import torch
from conftest import make_config, require_polarity

import hf_mup
from hf_mup.lab import data, tasks


def test_next_sentence_pairs_are_balanced_and_true():
    path = data.wikitext_dir() / "valid.txt"
    pairs = tasks.next_sentence_pairs(path, seed=0)
    assert len(pairs) > 1000
    assert sum(label for *_, label in pairs) * 2 == len(pairs)  # exactly balanced
    assert all(a != b for a, b, _ in pairs)
    articles = tasks.wikitext_articles(path)
    follows = {(art[j], art[j + 1]) for art in articles for j in range(len(art) - 1)}
    article_of = {s: i for i, art in enumerate(articles) for s in art}
    for a, b, label in pairs[:500]:
        if label:
            assert (a, b) in follows
        else:
            assert article_of[a] != article_of[b]  # a negative comes from another article
    assert tasks.next_sentence_pairs(path, seed=0) == pairs  # seeded
    assert tasks.next_sentence_pairs(path, seed=1) != pairs


def test_load_tsv(tmp_path):
    polarity = require_polarity()
    train = tasks.load_tsv(polarity / "train.tsv")
    assert len(train) == 3200 and {label for _, label in train} == {0, 1}
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(hf_mup.MuPError, match=r"lacks the column\(s\) \['sentence'\].*has \['text', 'label'\]"):
        tasks.load_tsv(bad)
    bad.write_text("sentence\tlabel\nhello\tpositive\n")
    with pytest.raises(hf_mup.MuPError, match="line 2: label 'positive' is not an integer"):
        tasks.load_tsv(bad)


def _tokenizer():
    tok = data.train_tokenizer([data.wikitext_dir() / "valid.txt"], vocab_size=200, max_chars=100_000)
    tok.pad_token = tok.eos_token
    return tok


def test_accuracy_counts_held_out_predictions():
    class Fixed(torch.nn.Module):  # predicts class 1 exactly when the first token id is even
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, **_):
            even = (input_ids[:, 0] % 2 == 0).float()
            return type("Out", (), {"logits": torch.stack([1 - even, even], -1)})

    tok = _tokenizer()
    examples = [("the", 0), ("a", 1), ("of", 0), ("and", 1)]
    expected = sum((tok(t)["input_ids"][0] % 2 == 0) == bool(y) for t, y in examples) / 4
    assert 0 < expected < 1  # the check can tell right from wrong
    assert tasks.accuracy(Fixed(), tok, examples) == expected
    # logits (1, 0) or (0, 1): cross-entropy log(1 + e^-1) when right, log(1 + e) when wrong, i.e. that + 1
    right = torch.nn.functional.softplus(torch.tensor(-1.0)).item()
    assert tasks.evaluate(Fixed(), tok, examples)["loss"] == pytest.approx(right + (1 - expected))


@pytest.mark.slow
def test_finetune_learns_an_easy_task():
    """A μP BERT classifier learns "does the sentence contain 'the'" well above chance on held-out sentences."""
    tok = _tokenizer()
    words = "cat dog the a big small red blue runs sits".split()
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(240):
        sent = [words[i] for i in torch.randint(len(words), (5,), generator=g)]
        examples.append((" ".join(sent), int("the" in sent)))
    train, test = tasks.split(examples, 0.25, seed=0)
    torch.manual_seed(0)
    config = make_config("BertForSequenceClassification", 64, num_labels=2, vocab_size=len(tok))
    model = hf_mup.MuPModel.from_config(config, base_hidden_size=32, model_class="BertForSequenceClassification",
                                        output_mult=4.0)
    recipe = tasks.finetune_recipe(model, len(train), lr=3e-3, epochs=6, batch_size=16)
    result = tasks.finetune(model, tok, train, test, recipe)
    assert not result["diverged"] and result["accuracy"] >= 0.8
    assert result["train_loss"][-1] < result["train_loss"][0]
