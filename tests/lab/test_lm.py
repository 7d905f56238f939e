"""hf_mup.lab.lm: the masking rule of masked-LM batches, and one training loop for causal (GPT-2) and masked (BERT) LMs."""
import math

import pytest
import torch

from hf_mup import MuPError
from hf_mup.lab import data, lm
from hf_mup.lab.recipe import Recipe, lr_lambda

VOCAB, MASK, SPECIAL = 1000, 999, (0, 1)


def tiny_bert(parametrization="mup"):
    """(model, recipe) of a 2-layer width-32 BERT masked LM on bytes (vocabulary 257: [MASK] is 256)."""
    model, _ = lm.build_lm(lm.lm_config("bert", 32, seq_len=32, vocab_size=257), parametrization, 2**-7, 32, seed=0)
    return model, Recipe(arch="bert", width=32, seq_len=32, vocab_size=257, parametrization=parametrization,
                         lr=2**-7, base_width=32)


@pytest.fixture(scope="module")
def blocks():
    corpus = data.Corpus(tokenizer="bytes", masked=True, train_chars=20000, val_blocks=4)
    train, val, _ = data.load_corpus(corpus, seq_len=32)
    return train, val


def test_mask_tokens_follows_the_collator_rule():
    ids = torch.randint(0, VOCAB - 1, (2000, 500), generator=torch.Generator().manual_seed(0))  # 1M positions
    original = ids.clone()
    x, labels = lm.mask_tokens(ids, MASK, VOCAB, torch.Generator().manual_seed(1), special_ids=SPECIAL)
    assert torch.equal(ids, original)  # not modified in place
    special = torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != -100
    assert special.sum() > 1000 and not (chosen & special).any()  # special ids are never targets
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    assert torch.equal(x[~chosen], ids[~chosen])  # only targets change
    assert chosen.sum() / (~special).sum() == pytest.approx(0.15, abs=0.002)
    n = chosen.sum()
    masked = (x == MASK) & chosen
    unchanged = (x == ids) & chosen
    randomized = chosen & ~masked & ~unchanged
    assert masked.sum() / n == pytest.approx(0.8, abs=0.005)
    assert unchanged.sum() / n == pytest.approx(0.1, abs=0.005)  # (+ random draws of the same id: 1e-4)
    assert randomized.sum() / n == pytest.approx(0.1, abs=0.005)
    assert x[randomized].float().std() > 250  # uniform over the vocabulary (s.d. ~289), not one id
    # seeded: the same generator seed gives the same batch
    again = lm.mask_tokens(ids, MASK, VOCAB, torch.Generator().manual_seed(1), special_ids=SPECIAL)
    assert torch.equal(again[0], x) and torch.equal(again[1], labels)
    # the mask token itself is never a target
    x2, labels2 = lm.mask_tokens(torch.full((100, 100), MASK), MASK, VOCAB, torch.Generator().manual_seed(2))
    assert (labels2 == -100).all() and (x2 == MASK).all()


def test_mask_tokens_equals_the_transformers_collator():
    from transformers import DataCollatorForLanguageModeling

    tok = data.train_tokenizer([data.wikitext_dir() / "valid.txt"], vocab_size=300, max_chars=20000,
                               special_tokens=[data.MASK_TOKEN])
    assert tok.mask_token_id == 1 and len(tok) == 300
    ids = torch.randint(0, len(tok), (64, 32), generator=torch.Generator().manual_seed(0))
    collator = DataCollatorForLanguageModeling(tok, mlm=True)
    collator.generator = torch.Generator().manual_seed(3)
    expected = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=torch.isin(ids, torch.tensor(
        tok.all_special_ids)))
    got = lm.mask_tokens(ids, tok.mask_token_id, len(tok), torch.Generator().manual_seed(3), tok.all_special_ids)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_task_from_the_model():
    assert lm.lm_task(lm.lm_config("bert", 32)) == "masked_lm"
    assert lm.lm_task(lm.lm_config("gpt2", 32)) == "causal_lm"
    assert lm.lm_task(lm.lm_config("bert", 32, is_decoder=True)) == "causal_lm"


def test_train_lm_masked_lm_is_reproducible_with_fixed_validation_masks(blocks):
    train, val = blocks
    runs = []
    for _ in range(2):
        model, recipe = tiny_bert()
        runs.append(lm.train_lm(model, recipe.replace(steps=4, batch_size=8, seed=5), train, val, eval_every=2,
                                mask_id=256))
    r = runs[0]
    assert r["task"] == "masked_lm" and not r["diverged"] and r["steps_run"] == 4
    assert all(math.isfinite(v) for v in r["train_loss"] + r["val_loss"])
    assert r["train_loss"] == runs[1]["train_loss"] and r["val_loss"] == runs[1]["val_loss"]
    assert r["train_loss"][0] == pytest.approx(math.log(257), abs=0.5)  # per masked target, near uniform at init
    # validation masks are fixed: the same model evaluates to the same loss every time
    assert lm.evaluate(model, val, mask_id=256) == lm.evaluate(model, val, mask_id=256)
    assert lm.evaluate(model, val, mask_id=256, seed=1) != lm.evaluate(model, val, mask_id=256)
    # another training seed: other masks (and batches), other losses
    model, recipe = tiny_bert()
    assert lm.train_lm(model, recipe.replace(steps=4, batch_size=8, seed=6), train, val)["train_loss"] != r["train_loss"]


def test_evaluate_weighs_masked_targets(blocks):
    """The masked-LM validation loss is the mean over every masked target of the set (not of the batch means)."""
    _, val = blocks
    model, _ = tiny_bert("sp")
    model.eval()
    g = torch.Generator().manual_seed(lm.EVAL_MASK_SEED)
    total = count = 0
    for i in range(0, len(val), 3):
        x, labels = lm.mask_tokens(val[i : i + 3], 256, 257, g)
        with torch.no_grad():
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
        total, count = total + loss.item(), count + int((labels != -100).sum())
    assert lm.evaluate(model, val, batch_size=3, mask_id=256) == pytest.approx(total / count, rel=1e-5)


def test_gpt2_numbers_unchanged(blocks):
    """The causal-LM path gives the numbers it gave before the loop became task-generic (recorded then, 1 thread)."""
    train, val = blocks  # bytes: the same blocks as a GPT-2 sweep spec's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = lm.build_lm(lm.gpt2_config(32, seq_len=32, vocab_size=256), "mup", 2**-7, 32, seed=3)
        recipe = Recipe(width=32, seq_len=32, vocab_size=256, base_width=32, lr=2**-7, steps=5, batch_size=4, seed=3)
        r = lm.train_lm(model, recipe, train, val, eval_every=2)
    finally:
        torch.set_num_threads(threads)
    assert r["task"] == "causal_lm"
    assert r["train_loss"] == pytest.approx([5.5594306, 5.2139568, 4.9852152, 4.7686028, 4.5317621], rel=1e-4)
    assert r["val_loss"] == pytest.approx([4.9572144, 4.5398550, 4.4754686], rel=1e-4)


def test_unknown_task_is_refused(blocks):
    model, _ = lm.build_lm(lm.gpt2_config(32, seq_len=32, vocab_size=256), "sp", 1e-3)
    recipe = Recipe(width=32, seq_len=32, vocab_size=256, parametrization="sp", lr=1e-3, steps=1)
    with pytest.raises(MuPError, match="task 'seq2seq'"):
        lm.train_lm(model, recipe, blocks[0], None, task="seq2seq")


def test_lr_schedules_warm_up_then_decay_to_the_final_fraction():
    for schedule in ("cosine", "linear"):
        f = lr_lambda(100, warmup_frac=0.1, final_lr_frac=0.01, schedule=schedule)
        assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
        assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.01)
    linear, cosine = lr_lambda(100, 0.1, 0.0, "linear"), lr_lambda(100, 0.1, 0.0, "cosine")
    assert linear(55) == pytest.approx(0.5) and cosine(55) == pytest.approx(0.5)  # both halfway at the middle
    assert linear(32.5) == pytest.approx(0.75) and cosine(32.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(MuPError, match="unknown schedule 'step'"):
        lr_lambda(10, schedule="step")
    with pytest.raises(MuPError, match="schedule='step'"):
        Recipe(schedule="step")


def test_train_lm_with_lion_and_coupled_weight_decay(blocks):
    """Lion through the loop: each group's LR and (coupled) decay as mup_param_groups built them."""
    train, val = blocks
    model, groups = lm.build_lm(lm.lm_config("llama", 64, seq_len=32, vocab_size=257), "mup", 2**-9, 32, seed=0,
                                optimizer="lion", weight_decay=0.1, weight_decay_mode="coupled")
    decays = {g["mup_kind"]: g["weight_decay"] for g in groups if g["weight_decay"]}
    assert decays == {"hidden": 0.1, "input": 0.1, "readout": 0.1}  # coupled: the plain value (× each group's LR)
    recipe = Recipe(arch="llama", width=64, seq_len=32, vocab_size=257, base_width=32, lr=2**-9, optimizer="lion",
                    weight_decay=0.1, weight_decay_mode="coupled", schedule="linear", betas=(0.95, 0.98), steps=6,
                    batch_size=4)
    assert {g["mup_kind"]: g["weight_decay"] for g in recipe.param_groups(model) if g["weight_decay"]} == decays
    r = lm.train_lm(model, recipe, train, val)
    assert not r["diverged"] and r["train_loss"][-1] < r["train_loss"][0]
    with pytest.raises(MuPError, match="optimizer='adafactor'"):
        lm.train_lm(model, recipe.replace(optimizer="adafactor", steps=1), train, None)
