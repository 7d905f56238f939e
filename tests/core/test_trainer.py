"""MuPTrainer: μP groups for args.optim, per-kind LR logs, refused plain optimizers, exact resume, Optuna search."""
import pytest
import torch
import transformers
from conftest import StopAfter, make_config
from transformers import TrainerCallback, TrainingArguments

import hf_mup
from hf_mup import MuPTrainer, mup_model_init

WIDTH, BASE, LR = 128, 64, 1e-2


def _dataset(n=48, seq=16, seed=0):
    x = torch.randint(1, 128, (n, seq), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": r, "labels": r} for r in x]


def _args(tmp_path, **kw):
    kw = {"per_device_train_batch_size": 8, "max_steps": 10, "learning_rate": LR, "warmup_steps": 4,
          "lr_scheduler_type": "linear", "logging_steps": 1, "report_to": [], "save_strategy": "no", "use_cpu": True,
          "seed": 0, "data_seed": 0, "disable_tqdm": True, "weight_decay": 0.1, **kw}
    return TrainingArguments(str(tmp_path), **kw)


def _model(**kw):
    torch.manual_seed(0)
    return hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", WIDTH), base_hidden_size=BASE, **kw)


class RecordLRs(TrainerCallback):
    def __init__(self):
        self.lrs = {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs[state.global_step] = {g["mup_kind"] + str(g["lr_mult"]): g["lr"] for g in optimizer.param_groups}


@pytest.mark.parametrize("optim, family", [("adamw_torch", "adamw"), ("sgd", "sgd")])
def test_group_lrs_follow_mup_and_the_schedule(tmp_path, optim, family):
    record = RecordLRs()
    trainer = MuPTrainer(model=_model(), args=_args(tmp_path, optim=optim), train_dataset=_dataset(), callbacks=[record])
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert {g["mup_optimizer"] for g in groups} == {family}
    hf_mup.check_optimizer(trainer.model, trainer.optimizer)
    lambdas = {0: 0.0, 2: 2 / 4, 9: (10 - 9) / (10 - 4)}  # linear warmup over 4 steps, then linear decay to 0 at 10
    for step, lam in lambdas.items():
        for g in groups:
            assert record.lrs[step][g["mup_kind"] + str(g["lr_mult"])] == pytest.approx(LR * g["lr_mult"] * lam)
    # μP's hidden LR for Adam is η/m (m = 2) and SGD's input LR is η·m: the groups really differ.
    mults = {(g["mup_kind"], g["lr_mult"]) for g in groups}
    assert ("hidden", 0.5) in mults if family == "adamw" else ("input", 2.0) in mults
    # Weight decay: width-independent, not on biases/norms.
    hidden = next(g for g in groups if g["mup_kind"] == "hidden" and g["weight_decay"] > 0)
    assert hidden["weight_decay"] == pytest.approx(0.1 / hidden["lr_mult"])
    # Per-kind LRs are logged.
    logged = [h for h in trainer.state.log_history if "learning_rate/hidden" in h]
    # Adam: input η, hidden η/2; SGD: input η·2, hidden η. Either way input = 2 × hidden.
    assert logged and all(h["learning_rate/input"] == pytest.approx(2 * h["learning_rate/hidden"]) for h in logged)


def test_unscalable_optimizer_is_refused(tmp_path):
    trainer = MuPTrainer(model=_model(), args=_args(tmp_path, optim="adafactor"), train_dataset=_dataset())
    with pytest.raises(hf_mup.MuPError,
                       match=r"no μP rule for the optimizer optim='adafactor': Adafactor's relative step.*adamw_torch"):
        trainer.train()


def test_plain_optimizer_is_refused(tmp_path):
    model = _model()
    with pytest.raises(hf_mup.MuPError, match="no μP parameter groups"):
        MuPTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(),
                   optimizers=(torch.optim.AdamW(model.parameters(), lr=LR), None))
    # With μP groups it is accepted.
    MuPTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(),
               optimizers=(torch.optim.AdamW(hf_mup.mup_param_groups(model, lr=LR)), None))


def _losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    # Multipliers that are not powers of two: the checkpoint's folded weights (× 3/m, × 1.5) do not round-trip to
    # the bit, and resuming must still give the same run.
    mults = {"output_mult": 3.0, "attn_mult": 1.5}
    full = MuPTrainer(model=_model(**mults), args=_args(tmp_path / "full"), train_dataset=_dataset())
    full.train()
    # Interrupted run: killed after step 5's checkpoint; a fresh start then resumes from it.
    first = MuPTrainer(model=_model(**mults), args=_args(tmp_path / "cut", save_strategy="steps", save_steps=5),
                       train_dataset=_dataset(), callbacks=[StopAfter(5)])
    first.train()
    assert first.state.global_step == 5
    checkpoint = tmp_path / "cut" / "checkpoint-5"
    assert hf_mup.MuPModel.from_pretrained(checkpoint).config.mup["output_mult"] == 3.0
    # The checkpoint opened by the stock loader (an eval harness on checkpoint-5) computes the μP model's logits.
    x = _dataset(2, seed=3)[0]["input_ids"][None]
    stock = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    first.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(x).logits, first.model(x).logits, rtol=1e-5, atol=1e-5)
    assert (checkpoint / "model.safetensors").exists()
    other_seed_model = hf_mup.MuPModel.from_config(make_config("GPT2LMHeadModel", WIDTH), base_hidden_size=BASE,
                                                   **mults)
    resumed = MuPTrainer(model=other_seed_model, args=_args(tmp_path / "cut"), train_dataset=_dataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected, got = _losses(full), _losses(resumed)
    assert sorted(got) == list(range(1, 11))  # steps 1-5 come back from the checkpoint's trainer state
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-6)
    # Parameters agree to 1e-5: the unfolded weights differ from the uninterrupted run's in the last bit, and Adam
    # turns the rounding noise of gradients that are zero in exact arithmetic (the key bias: softmax ignores it)
    # into updates of its full step size, which differ (without changing any output).
    # The key biases are such gradients (softmax ignores them), only more so with μP's smaller ε (ε/m_N): they agree
    # to 1e-4, every other tensor to 1e-5.
    for name, p in resumed.model.named_parameters():
        expected_p = full.model.get_parameter(name)
        if name.endswith("c_attn.bias"):
            keys = slice(WIDTH, 2 * WIDTH)
            torch.testing.assert_close(p[keys], expected_p[keys], rtol=0, atol=1e-4)
            p, expected_p = p[torch.arange(3 * WIDTH) // WIDTH != 1], expected_p[torch.arange(3 * WIDTH) // WIDTH != 1]
        torch.testing.assert_close(p, expected_p, rtol=0, atol=1e-5)


def _lora(seed=0):
    peft = pytest.importorskip("peft")
    model = _model(output_mult=3.0)
    torch.manual_seed(seed)  # the adapters' init
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                      task_type="CAUSAL_LM"))


@pytest.mark.slow
def test_lora_under_the_trainer_trains_by_mup_rules_and_resumes_exactly(tmp_path):
    """A PEFT LoRA model under MuPTrainer: A at η/m, B at η, the per-kind LR logged; `mup_adapters="plain"` puts
    every adapter tensor at η; killed after step 5's checkpoint (the adapter), the resumed run's losses and adapter
    weights are the uninterrupted run's."""
    full = MuPTrainer(model=_lora(), args=_args(tmp_path / "full"), train_dataset=_dataset())
    full.train()
    kinds = {(g["mup_kind"], g["lr_mult"]) for g in full.optimizer.param_groups if g.get("mup_adapter")}
    assert kinds == {("down", 0.5), ("input", 1.0)}  # m = 2
    logged = [h for h in full.state.log_history if "learning_rate/down" in h]
    assert logged and all(h["learning_rate/down"] == pytest.approx(h["learning_rate/input"] / 2) for h in logged)
    first = MuPTrainer(model=_lora(), args=_args(tmp_path / "cut", save_strategy="steps", save_steps=5),
                       train_dataset=_dataset(), callbacks=[StopAfter(5)])
    first.train()
    checkpoint = tmp_path / "cut" / "checkpoint-5"
    assert (checkpoint / "adapter_model.safetensors").exists()
    resumed = MuPTrainer(model=_lora(seed=1), args=_args(tmp_path / "cut"), train_dataset=_dataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected, got = _losses(full), _losses(resumed)
    assert sorted(got) == list(range(1, 11))
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-6)
    for name, p in resumed.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, full.model.get_parameter(name), rtol=0, atol=1e-6)
    plain = MuPTrainer(model=_lora(), args=_args(tmp_path / "plain", max_steps=1), train_dataset=_dataset(),
                       mup_adapters="plain")
    plain.train()
    assert {(g["mup_kind"], g["lr_mult"]) for g in plain.optimizer.param_groups if g.get("mup_adapter")} == {
        ("unscaled", 1.0)}


@pytest.mark.slow
def test_optuna_search_over_mup_multipliers(tmp_path):
    optuna = pytest.importorskip("optuna")
    built = []

    def hp_space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 3e-2, log=True),
                "output_mult": trial.suggest_float("output_mult", 1.0, 8.0, log=True),
                "initializer_range": trial.suggest_float("initializer_range", 0.01, 0.04)}

    init = mup_model_init(make_config("GPT2LMHeadModel", WIDTH), base_hidden_size=BASE)

    def model_init(trial):
        model = init(trial)
        built.append((model.config.mup["output_mult"], model.config.initializer_range))
        return model

    trainer = MuPTrainer(model_init=model_init, args=_args(tmp_path, max_steps=4, eval_strategy="no"),
                         train_dataset=_dataset(), eval_dataset=_dataset(16, seed=1))
    objectives = []

    def objective(metrics):
        objectives.append(metrics["eval_loss"])
        return metrics["eval_loss"]

    best = trainer.hyperparameter_search(hp_space=hp_space, backend="optuna", n_trials=3, direction="minimize",
                                         compute_objective=objective, sampler=optuna.samplers.RandomSampler(seed=0))
    assert set(best.hyperparameters) == {"learning_rate", "output_mult", "initializer_range"}
    assert len(objectives) == 3 and best.objective == min(objectives)
    assert 3.0 < best.objective < 6.0  # eval loss of a barely trained 128-token LM: about ln 128 = 4.85
    trial_mults = built[1:]  # the first model_init(None) comes from the Trainer's constructor
    assert len(trial_mults) == 3 and len({m for m, _ in trial_mults}) == 3
    assert (best.hyperparameters["output_mult"], best.hyperparameters["initializer_range"]) in trial_mults


@pytest.mark.slow
def test_a_pruned_optuna_search_through_the_trainer(tmp_path):
    """`hyperparameter_search` with an Optuna pruner: each trial reports its eval loss at every evaluation, and
    successive halving stops the worst at equal steps (transformers' own reporting, through MuPTrainer)."""
    optuna = pytest.importorskip("optuna")
    trainer = MuPTrainer(model_init=mup_model_init(make_config("GPT2LMHeadModel", WIDTH), base_hidden_size=BASE),
                         args=_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2),
                         train_dataset=_dataset(), eval_dataset=_dataset(16, seed=1))
    storage = f"sqlite:///{tmp_path / 'hp.db'}"
    trainer.hyperparameter_search(
        hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-5, 1.0, log=True)},
        backend="optuna", n_trials=6, direction="minimize", storage=storage, study_name="hp",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=2))
    trials = optuna.load_study(study_name="hp", storage=storage).trials
    states = {t.state.name for t in trials}
    assert len(trials) == 6 and states == {"COMPLETE", "PRUNED"}, states
    for t in trials:
        steps = list(t.intermediate_values)
        assert steps and all(s % 2 == 0 for s in steps)  # eval losses at equal steps
        assert (max(steps) < 8) == (t.state.name == "PRUNED")


@pytest.mark.parametrize("model_class", ["BertForMaskedLM", "BertForSequenceClassification"])
@pytest.mark.slow
def test_gradient_accumulation_trains_as_the_whole_batch(model_class, tmp_path):
    """BERT's heads average their own loss and ignore num_items_in_batch: 2 accumulated micro-batches of 4 must
    train as one batch of 8 (MLM: the loss summed over the targets of both / their count; a classifier's mean / 2)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 128, (24, 16), generator=g)
    if model_class == "BertForMaskedLM":
        labels = torch.where(torch.rand(x.shape, generator=g) < 0.15, x, torch.full_like(x, -100))
    else:
        labels = torch.randint(0, 3, (24,), generator=g)
    data = [{"input_ids": a, "labels": b} for a, b in zip(x, labels)]

    def train(batch, accumulation):
        torch.manual_seed(0)
        model = hf_mup.MuPModel.from_config(make_config(model_class, WIDTH), base_hidden_size=BASE,
                                            model_class=model_class)
        args = _args(tmp_path / f"{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                     max_steps=3, train_sampling_strategy="sequential")
        MuPTrainer(model=model, args=args, train_dataset=data).train()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    whole, accumulated = train(8, 1), train(4, 2)
    for name, p in whole.items():  # measured: at most 1.2e-6 apart (float32 sums in another order, through Adam)
        torch.testing.assert_close(accumulated[name], p, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(whole.values(), train(4, 1).values()))  # the check can fail


def _decay_by_name(optimizer) -> dict[str, float]:
    return {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}


@pytest.mark.parametrize("wrapper", ["peft", "compile", "ddp"])
def test_weight_decay_through_wrappers(tmp_path, wrapper):
    """The Trainer names decayed parameters as the wrapper does (`base_model.model.…`, `_orig_mod.…`, `module.…`);
    each tensor still gets the weight decay it gets on the bare μP model."""
    bare = MuPTrainer(model=_model(), args=_args(tmp_path))
    expected = _decay_by_name(bare.create_optimizer())
    assert sum(wd > 0 for wd in expected.values()) >= 8 and min(expected.values()) == 0.0  # decays some, not all
    model = _model()
    if wrapper == "peft":
        peft = pytest.importorskip("peft")
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["c_fc"], fan_in_fan_out=True))
        for name, p in wrapped.named_parameters():
            p.requires_grad_("lora_" not in name)  # train what the bare model trains, so the sets compare
    elif wrapper == "compile":
        wrapped = torch.compile(model)
    else:
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    try:
        trainer = MuPTrainer(model=model, args=_args(tmp_path))
        assert _decay_by_name(trainer.create_optimizer(wrapped)) == pytest.approx(expected)
    finally:
        if wrapper == "ddp":
            torch.distributed.destroy_process_group()


def test_weight_decay_timescale_sets_every_groups_decay(tmp_path):
    """mup_weight_decay_timescale=τ: every decayed μP group forgets at lr·λ = 1/(τ·max_steps) per step, whatever its
    LR multiplier; biases and norms stay undecayed."""
    trainer = MuPTrainer(model=_model(), args=_args(tmp_path, weight_decay=0.0), train_dataset=_dataset(),
                         mup_weight_decay_timescale=0.5)
    trainer.train()
    groups = trainer.optimizer.param_groups
    decayed = [g for g in groups if g["weight_decay"] > 0]
    assert {g["mup_kind"] for g in decayed} == {"hidden", "input"}  # (GPT-2 ties its readout to the input)
    assert len({g["lr_mult"] for g in decayed}) > 1  # groups with different LRs, one timescale
    for g in decayed:
        assert LR * g["lr_mult"] * g["weight_decay"] == pytest.approx(1 / (0.5 * 10))
    assert trainer.mup_weight_decay() == pytest.approx(hf_mup.weight_decay_from_timescale(0.5, LR, 10))
    assert hf_mup.timescale_of(trainer.mup_weight_decay(), LR, 10) == pytest.approx(0.5)


def test_weight_decay_timescale_refusals(tmp_path):
    with pytest.raises(hf_mup.MuPError, match="give one"):
        MuPTrainer(model=_model(), args=_args(tmp_path), train_dataset=_dataset(), mup_weight_decay_timescale=0.5)
    with pytest.raises(hf_mup.MuPError, match="η·λ ≥ 1"):  # 0.05 of 10 steps: half a step
        MuPTrainer(model=_model(), args=_args(tmp_path, weight_decay=0.0), train_dataset=_dataset(),
                   mup_weight_decay_timescale=0.05)
    with pytest.raises(hf_mup.MuPError, match="width_independent"):
        MuPTrainer(model=_model(), args=_args(tmp_path, weight_decay=0.0), train_dataset=_dataset(),
                   mup_weight_decay_timescale=0.5, mup_weight_decay_mode="coupled")
    stock = transformers.GPT2LMHeadModel(make_config("GPT2LMHeadModel", WIDTH))
    trainer = MuPTrainer(model=stock, args=_args(tmp_path, weight_decay=0.0), train_dataset=_dataset(),
                         mup_weight_decay_timescale=0.5)
    with pytest.raises(hf_mup.MuPError, match="stock model"):
        trainer.train()
