"""μTransfer end to end, in resumable stages: search a small proxy, transfer its hyperparameters to the target,
pretrain the target in μP beside a baseline in standard parametrization, fine-tune both, report.

Usage (what `recipes/bert_large.py` and `recipes/gpt2_transfer.py` run; they differ in presets and tasks):
    pipe = Pipeline(BERT_PRESETS["tiny"], out="out/bert_tiny")
    pipe.run()                    # every stage; a finished stage is skipped on rerun, a killed one continues
    print(pipe.plan())            # shapes, parameter counts, tokens, FLOPs, steps per stage, without training

Stages and files in `out`:
- search:   an Optuna study (`sweep.db`, or `storage=postgresql://...` shared by many workers) on the proxy;
- transfer: `hparams.json`, the best proxy trial copied to the target (`hf_mup.lab.transfer`);
- pretrain: `pretrain/<row>/` Trainer runs (checkpoints, `final_metrics.json`), rows "mup" (transferred) and the
            baseline in standard parametrization with its published hyperparameters, on the same tokens and steps;
- finetune: `finetune.jsonl`, one line per (row, task, LR, seed), appended as each run finishes;
- report:   `table6.json` / `table6.md`, `pretrain_curves.png`, `cost.json`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import MuPError
from ..logs import quiet_progress_bars

STAGES = ("search", "transfer", "pretrain", "finetune", "report")


@dataclass(frozen=True)
class Shape:
    width: int
    layers: int
    head_dim: int = 64


@dataclass(frozen=True)
class Preset:
    """Everything a pipeline run depends on; stored with the study, so a study of another recipe is refused."""

    name: str
    arch: str  # "bert" (masked LM, fine-tuned on sentence tasks) or "gpt2" (causal LM, no fine-tuning)
    proxy: Shape
    target: Shape
    seq_len: int
    vocab_size: int
    search_trials: int
    search_steps: int
    search_batch: int
    pretrain_steps: int
    pretrain_batch: int
    baseline: dict  # the standard-parametrization row: name, lr, betas, weight_decay, warmup_frac, final_lr_frac, ...
    finetune_lrs: tuple[float, ...] = ()
    finetune_seeds: int = 2
    finetune_epochs: int = 2
    finetune_examples: int | None = None  # per task, for CPU-sized runs
    finetune_batch: int = 32
    tasks: tuple[str, ...] = ()
    log2_lr_range: tuple[float, float] = (-12.0, -4.0)
    eval_blocks: int = 64
    train_chars: int | None = None
    hardware: str = ""
    sp_grid_lrs: tuple[float, ...] = ()  # a small LR grid at full width in SP: the regret of μTransfer is measured on it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        """The inverse of `to_dict` (e.g. of a run's `preset.json`)."""
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        baseline = {k: tuple(v) if isinstance(v, list) else v for k, v in d["baseline"].items()}
        return cls(**{**fields, "proxy": Shape(**d["proxy"]), "target": Shape(**d["target"]), "baseline": baseline})


# Megatron-LM's BERT example (Tensor Programs V's Table 6 baseline): Adam lr 1e-4 decaying linearly to 1e-5, 1% warmup,
# weight decay 0.01, gradient clipping 1.0, init std 0.02, β = (0.9, 0.999).
MEGATRON_BERT = {"name": "megatron", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.01, "warmup_frac": 0.01,
                 "final_lr_frac": 0.1, "decay": "linear", "clip": 1.0, "initializer_range": 0.02}

# GPT-3 paper, Table 2.1, GPT-3 Small (125M, GPT-2 small's shape): Adam lr 6e-4, β = (0.9, 0.95), weight decay 0.1,
# cosine decay to 10%, gradient clipping 1.0, init std 0.02 (GPT-2).
GPT3_SMALL = {"name": "published", "lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "warmup_frac": 0.01,
              "final_lr_frac": 0.1, "decay": "cosine", "clip": 1.0, "initializer_range": 0.02}

GPT2_PRESETS = {
    "tiny": Preset("tiny", "gpt2", proxy=Shape(64, 2, 16), target=Shape(512, 2, 16), seq_len=64, vocab_size=2048,
                   search_trials=16, search_steps=150, search_batch=16, pretrain_steps=300, pretrain_batch=16,
                   baseline=GPT3_SMALL, eval_blocks=128, sp_grid_lrs=(2**-12, 2**-10, 2**-8),
                   hardware="2 CPU cores, under an hour (a narrower target than 'hour')"),
    # About the largest this 2-core machine runs in an hour: a 16× wider target than the proxy (measured ~70 min). (With
    # a width-768 target and an SP grid of 2^-12..2^-8 it took 28 minutes; the SP optimum sat at the grid's low edge.)
    "hour": Preset("hour", "gpt2", proxy=Shape(64, 2, 16), target=Shape(1024, 2, 16), seq_len=64, vocab_size=2048,
                   search_trials=24, search_steps=150, search_batch=16, pretrain_steps=300, pretrain_batch=16,
                   baseline=GPT3_SMALL, eval_blocks=128, sp_grid_lrs=(2**-14, 2**-12, 2**-10, 2**-8),
                   hardware="2 CPU cores, about 70 minutes"),
    "small": Preset("small", "gpt2", proxy=Shape(256, 12, 64), target=Shape(768, 12, 64), seq_len=1024,
                    vocab_size=50257, search_trials=200, search_steps=5000, search_batch=64, pretrain_steps=100_000,
                    pretrain_batch=512, baseline=GPT3_SMALL, eval_blocks=1024,
                    sp_grid_lrs=(2**-12, 2**-11, 2**-10, 2**-9), hardware="8× A100 80GB, about 2 days"),
}

BERT_PRESETS = {
    # CPU-sized: all stages on 2 cores in minutes. Proxy shrunk in width and depth, as Tensor Programs V did.
    "tiny": Preset("tiny", "bert", proxy=Shape(64, 2, 16), target=Shape(256, 4, 16), seq_len=64, vocab_size=2048,
                   search_trials=12, search_steps=120, search_batch=16, pretrain_steps=400, pretrain_batch=16,
                   baseline=MEGATRON_BERT, finetune_lrs=(1e-4, 3e-4, 1e-3), finetune_seeds=2, finetune_epochs=2,
                   finetune_examples=1600, finetune_batch=16, tasks=("polarity", "nsp"), eval_blocks=64, train_chars=None,
                   hardware="2 CPU cores, about 20 minutes"),
    # The real shapes (Tensor Programs V: a 13M-parameter proxy, 10 layers of width 256, for both targets).
    "base": Preset("base", "bert", proxy=Shape(256, 10, 32), target=Shape(768, 12, 64), seq_len=128,
                   vocab_size=30522, search_trials=256, search_steps=5000, search_batch=256,
                   pretrain_steps=1_000_000, pretrain_batch=256, baseline=MEGATRON_BERT,
                   finetune_lrs=(1e-5, 2e-5, 3e-5, 5e-5), finetune_seeds=3, finetune_epochs=3,
                   tasks=("mnli", "qqp", "sst2"), eval_blocks=2048, hardware="8× A100 80GB, about 4 days"),
    "large": Preset("large", "bert", proxy=Shape(256, 10, 32), target=Shape(1024, 24, 64), seq_len=128,
                    vocab_size=30522, search_trials=256, search_steps=5000, search_batch=256,
                    pretrain_steps=1_000_000, pretrain_batch=256, baseline=MEGATRON_BERT,
                    finetune_lrs=(1e-5, 2e-5, 3e-5, 5e-5), finetune_seeds=3, finetune_epochs=3,
                    tasks=("mnli", "qqp", "sst2"), eval_blocks=2048, hardware="16× A100 80GB, about 6 days"),
}


def param_count(arch: str, shape: Shape, vocab_size: int, seq_len: int) -> int:
    """Parameters of the model of `shape`, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from .lm import lm_config

    config = lm_config(arch, shape.width, shape.layers, shape.head_dim, seq_len, vocab_size)
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


class Pipeline:
    """The staged μTransfer run of one preset in one output folder. See the module docstring."""

    def __init__(self, preset: Preset, out: str | os.PathLike, storage: str | None = None, device: str = "cpu",
                 progress: bool = True):
        if preset.proxy.width > preset.target.width:
            raise MuPError(f"the proxy (width {preset.proxy.width}) is wider than the target "
                           f"({preset.target.width}): the proxy is the small model. Fix the preset.")
        if preset.arch not in ("bert", "gpt2"):
            raise MuPError(f"preset arch {preset.arch!r}: use bert or gpt2.")
        self.preset, self.out, self.device, self.progress = preset, Path(out), device, progress
        self.storage = storage
        self._data = None

    # ---------------------------------------------------------------------------------------------- bookkeeping

    @property
    def state_path(self) -> Path:
        return self.out / "stages.json"

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run's files under `accelerate launch`; every process trains."""
        from accelerate import PartialState

        return PartialState().is_main_process

    def _done(self, stage: str, info: dict) -> None:
        if not self.is_main:
            return
        state = self.state()
        state[stage] = {"done": True, **info}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)  # atomic: a kill never leaves half a file

    def _check_recipe(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = self.out / "preset.json"
        mine = json.loads(json.dumps(self.preset.to_dict()))
        if stamp.exists():
            theirs = json.loads(stamp.read_text())
            diff = sorted(k for k in mine.keys() | theirs.keys()
                          if mine.get(k) != theirs.get(k) and k != "hardware")  # a description, not a setting
            if diff:
                raise MuPError(f"{self.out} holds a run of another recipe or preset (differs in {diff}): use another "
                               "--output_dir, or the same preset to resume it.")
        elif self.is_main:
            stamp.write_text(json.dumps(mine, indent=2))

    def check_inputs(self, stages: tuple[str, ...] = STAGES) -> None:
        """Refuse, before the first stage starts, what a later stage would fail on: the packages each stage imports
        (with the `pip install 'hf_mup[...]'` line), the WikiText-2 text and every fine-tuning task's data. Stages
        finished in an earlier run are not checked again."""
        from ..extras import require
        from . import data, tasks

        unknown = set(stages) - set(STAGES)
        if unknown:
            raise MuPError(f"unknown stage(s) {sorted(unknown)}; the stages are {', '.join(STAGES)}.")
        done = self.state() if self.state_path.is_file() else {}
        todo = [s for s in stages if not done.get(s, {}).get("done")]
        needs = {"search": ("optuna", "sqlalchemy", "tqdm"), "transfer": ("optuna", "sqlalchemy"),
                 "pretrain": ("accelerate",), "finetune": (), "report": ("matplotlib",)}
        modules = ["accelerate"] + [m for s in todo for m in needs[s]]  # accelerate: the stages' process handling
        require(("train", "sweep"), *dict.fromkeys(modules), what=f"the pipeline's {', '.join(todo) or 'stages'}")
        if {"search", "pretrain"} & set(todo):
            try:
                folder = data.wikitext_dir()
            except FileNotFoundError as e:
                raise MuPError(str(e)) from None
            missing = [f for f in ("valid.txt", "test.txt") if not (folder / f).is_file()]
            if missing:
                raise MuPError(f"{folder} has no {' or '.join(missing)}: set {data.DATA_ENV} to a folder holding "
                               "WikiText-2's valid.txt and test.txt.")
        if "finetune" in todo:
            for task in self.preset.tasks:
                tasks.check_task(task)

    def run(self, stages: tuple[str, ...] = STAGES) -> dict:
        """Run the stages in order, skipping finished ones; returns the report (or the stages' state)."""
        self.check_inputs(stages)
        self._check_recipe()
        for stage in STAGES:
            if stage in stages and not self.state().get(stage, {}).get("done"):
                start = time.perf_counter()
                self._log(f"{stage}: started")
                info = getattr(self, stage)()
                seconds = round(time.perf_counter() - start, 1)
                self._done(stage, {**info, "seconds": seconds})  # of the last sitting
                self._log(f"{stage}: done in {seconds:.0f} s" + "".join(
                    f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}"
                    for k, v in info.items() if isinstance(v, (int, float, str))))
        return self.state()

    def _log(self, line: str) -> None:
        """A progress line of the run (main process only): what a log shows besides the Trainer's own lines."""
        if self.is_main:
            print(f"[{self.preset.arch} {self.preset.name}] {line}", flush=True)

    # ------------------------------------------------------------------------------------------------- data

    def data(self):
        """(tokenizer, train blocks, validation blocks): WikiText-2 shipped with hf_mup, a local BPE tokenizer."""
        if self._data is None:
            from . import data, tasks

            p = self.preset
            folder = data.wikitext_dir()
            bert = p.arch == "bert"
            tok = data.train_tokenizer([folder / "valid.txt"], vocab_size=p.vocab_size, max_chars=p.train_chars,
                                       special_tokens=BERT_SPECIAL_TOKENS if bert else ())
            if bert:
                tasks.add_pair_template(tok)
            train = data.token_blocks([folder / "valid.txt"], tok, p.seq_len, max_chars=p.train_chars)
            val = data.token_blocks([folder / "test.txt"], tok, p.seq_len, max_blocks=p.eval_blocks,
                                    max_chars=p.eval_blocks * p.seq_len * 8)
            self._data = (tok, train, val)
        return self._data

    def target_config(self, initializer_range: float = 0.02):
        from .lm import lm_config

        tok = self.data()[0]
        t = self.preset.target
        return lm_config(self.preset.arch, t.width, t.layers, t.head_dim, self.preset.seq_len, len(tok),
                         initializer_range=initializer_range)

    # ----------------------------------------------------------------------------------------------- stages

    def search(self) -> dict:
        from . import sweep as sw

        p = self.preset
        tok, train, val = self.data()
        spec = sw.make_spec("tune", p.arch, p.proxy.layers, p.proxy.head_dim, p.seq_len, p.search_steps,
                            p.search_batch, base_width=p.proxy.width, tokenizer="bpe", vocab_size=len(tok),
                            train_chars=p.train_chars, val_blocks=p.eval_blocks, proxy_width=p.proxy.width,
                            log2_lr_range=p.log2_lr_range)
        spec["recipe"] = p.name
        spec["data_hash"] = sw.fingerprint(train, val)
        study = sw.open_study("proxy", self.storage or sw.default_storage(self.out), spec)
        study.sampler = sw.make_sampler("tpe", 0, len(study.trials))  # seeded: a rerun proposes the same trials
        sw.run_tune(study, spec, p.search_trials, (train, val), self.device, self.progress,
                    after_trial=None if self.progress else lambda st: self._log(f"search: {sw.trial_line(st)}"))
        sw.report(study, self.out, plot_name=None)
        return {"trials": p.search_trials, "best_val_loss": study.best_value}

    def transfer(self) -> dict:
        from . import sweep as sw
        from .transfer import transfer

        study = sw.load_study("proxy", self.storage or sw.default_storage(self.out))
        # allow_depth_change: the BERT presets shrink the proxy in depth too, without depth scaling, as Tensor
        # Programs V did (the comparison reproduces theirs); transfer notes it in hparams.json.
        hparams, cost = transfer(study, self.target_config(), target_tokens=self.pretrain_tokens(),
                                 allow_depth_change=True)
        (self.out / "hparams.json").write_text(json.dumps(hparams, indent=2))
        return {"learning_rate": hparams["training_args"]["learning_rate"], "mup": hparams["mup"],
                "fraction": cost["fraction"]}

    def pretrain_tokens(self) -> float:
        return float(self.preset.pretrain_steps * self.preset.pretrain_batch * self.preset.seq_len)

    def rows(self) -> dict[str, dict]:
        """The pretraining rows: μTransfer (the proxy's hyperparameters) and the standard-parametrization baseline."""
        hp = json.loads((self.out / "hparams.json").read_text())
        args = hp["training_args"]
        b = self.preset.baseline
        return {
            "mutransfer": {"mup": hp["mup"], "lr": args["learning_rate"], "betas": (args["adam_beta1"], args["adam_beta2"]),
                           "weight_decay": args["weight_decay"], "clip": args["max_grad_norm"],
                           "initializer_range": hp["model_config"]["initializer_range"], "warmup_frac": 0.1,
                           "final_lr_frac": 0.1, "decay": "cosine"},
            b["name"]: {"mup": None, **{k: v for k, v in b.items() if k != "name"}},
            # SP at full width over a small LR grid, with the μTransfer row's schedule: what tuning the target costs
            **{f"sp_lr{lr:g}": {"mup": None, "lr": lr, "betas": (args["adam_beta1"], args["adam_beta2"]),
                                "weight_decay": 0.0, "clip": args["max_grad_norm"], "initializer_range": 0.02,
                                "warmup_frac": 0.1, "final_lr_frac": 0.1, "decay": "cosine"}
               for lr in self.preset.sp_grid_lrs},
        }

    def pretrain(self) -> dict:
        results = {}
        for name, row in self.rows().items():
            results[name] = self._pretrain_row(name, row)
        return {"eval_loss": {k: v["eval_loss"] for k, v in results.items()}}

    def _pretrain_row(self, name: str, row: dict, callbacks: tuple = ()) -> dict:
        """Pretrain one row to `pretrain_steps` (continuing from its last checkpoint), evaluate and save it."""
        from accelerate import PartialState
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, TrainingArguments
        from transformers.trainer_utils import get_last_checkpoint

        from ..model import MuPModel
        from ..optim import mup_param_groups
        from ..trainer import MuPTrainer
        from .lm import lr_lambda

        folder = self.out / "pretrain" / name
        done = folder / "final_metrics.json"
        if done.exists():
            return json.loads(done.read_text())
        p = self.preset
        processes = PartialState().num_processes
        if p.pretrain_batch % processes:
            raise MuPError(f"the pretraining batch {p.pretrain_batch} does not split over {processes} processes: "
                           "launch a number of processes that divides it.")
        tok, train, val = self.data()
        config = self.target_config(row["initializer_range"])
        torch.manual_seed(0)
        if row["mup"]:
            model = MuPModel.from_config(config, **row["mup"])
            groups = mup_param_groups(model, lr=row["lr"], weight_decay=row["weight_decay"])
        else:
            auto = AutoModelForMaskedLM if p.arch == "bert" else AutoModelForCausalLM
            model = auto.from_config(config)
            groups = [{"params": list(model.parameters()), "lr": row["lr"]}]
        optimizer = torch.optim.AdamW(groups, lr=row["lr"], betas=tuple(row["betas"]),
                                      weight_decay=0.0 if row["mup"] else row["weight_decay"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(p.pretrain_steps, row["warmup_frac"], row["final_lr_frac"], row["decay"]))
        eval_every = max(1, p.pretrain_steps // 10)
        args = TrainingArguments(
            # the preset's batch is the global one: the same tokens per step however many processes share it
            str(folder), max_steps=p.pretrain_steps, per_device_train_batch_size=p.pretrain_batch // processes,
            per_device_eval_batch_size=64, max_grad_norm=row["clip"], logging_steps=max(1, p.pretrain_steps // 50),
            eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
            save_total_limit=1, report_to=[], seed=0, data_seed=0, disable_tqdm=not self.progress,
            use_cpu=self.device == "cpu", train_sampling_strategy="sequential",  # the order is `epochs`'
        )
        order = epochs(self.examples(train, seed=0), p.pretrain_steps * p.pretrain_batch, seed=0)
        trainer = MuPTrainer(model=model, args=args, optimizers=(optimizer, schedule),
                             train_dataset=order, eval_dataset=self.examples(val, seed=1),
                             data_collator=stack, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=get_last_checkpoint(str(folder)) if folder.is_dir() else None)
        if trainer.state.global_step < p.pretrain_steps:  # stopped early (a callback, a signal): not done
            return {"stopped_at": trainer.state.global_step}
        metrics = trainer.evaluate()
        trainer.save_model(str(folder))
        history = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
        result = {"eval_loss": metrics["eval_loss"], "history": history, "row": {k: row[k] for k in row}}
        if self.is_main:
            tok.save_pretrained(str(folder))
            done.write_text(json.dumps(result, indent=2, default=str))
        return result

    def examples(self, blocks: torch.Tensor, seed: int) -> list[dict]:
        """Pretraining examples: a causal LM's blocks as their own labels; a masked LM's masked once, by the 15% /
        80-10-10 rule (`hf_mup.lab.lm.mask_tokens`) from a fixed seed — static masking, as the original BERT: the same
        masks whatever the batch order, so a resumed run sees exactly what an uninterrupted one does."""
        from .lm import mask_tokens

        if self.preset.arch != "bert":
            return [{"input_ids": x, "labels": x} for x in blocks]
        tok = self.data()[0]
        inputs, labels = mask_tokens(blocks, tok.mask_token_id, len(tok), torch.Generator().manual_seed(seed),
                                     tok.all_special_ids)
        return [{"input_ids": x, "labels": y} for x, y in zip(inputs, labels)]

    def task_data(self, task: str) -> tuple[list, list]:
        """(train, test) examples of a fine-tuning task (`tasks.load_task`), cut to the preset's size."""
        from . import tasks

        p = self.preset
        train, test = tasks.load_task(task)
        if p.finetune_examples:
            train, test = train[: p.finetune_examples], test[: max(200, p.finetune_examples // 4)]
        return train, test

    def finetune(self) -> dict:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from ..model import MuPModel
        from . import tasks

        p = self.preset
        log = self.out / "finetune.jsonl"
        done = {json.loads(line)["key"] for line in log.read_text().splitlines()} if log.exists() else set()
        tok = self.data()[0]
        for task in p.tasks:
            train, test = self.task_data(task)
            for row in self.rows():
                folder = self.out / "pretrain" / row
                for lr in p.finetune_lrs:
                    for seed in range(p.finetune_seeds):
                        key = f"{row}/{task}/lr{lr:g}/s{seed}"
                        if key in done:
                            continue
                        config = AutoConfig.from_pretrained(folder, num_labels=1 + max(e[-1] for e in train))
                        torch.manual_seed(seed)
                        with _load_report_off():  # the MLM head unused, a new classifier: expected, every run
                            if getattr(config, "mup", None):
                                model = MuPModel.from_pretrained(folder, model_class="BertForSequenceClassification",
                                                                 config=config)
                            else:
                                model = AutoModelForSequenceClassification.from_pretrained(folder, config=config)
                        r = tasks.finetune(model, tok, train, test, lr=lr, epochs=p.finetune_epochs, seed=seed,
                                           max_length=p.seq_len, batch_size=p.finetune_batch)
                        self._log(f"finetune {key}: " + ("diverged" if r["diverged"] else
                                                         f"accuracy {r['accuracy']:.3f}"))
                        with open(log, "a") as f:
                            f.write(json.dumps({"key": key, "row": row, "task": task, "lr": lr, "seed": seed,
                                                "accuracy": r["accuracy"], "diverged": r["diverged"]}) + "\n")
        return {"runs": len(log.read_text().splitlines()) if log.exists() else 0}

    def report(self) -> dict:
        """table6.json / table6.md (a row per hyperparameter source: pretraining loss, each task's best-LR accuracy,
        mean ± spread over seeds), pretrain_curves.png and cost.json."""
        p = self.preset
        pretrain = {row: json.loads((self.out / "pretrain" / row / "final_metrics.json").read_text())
                    for row in self.rows()}
        runs = [json.loads(line) for line in (self.out / "finetune.jsonl").read_text().splitlines()] \
            if (self.out / "finetune.jsonl").exists() else []
        table = []
        for row, result in pretrain.items():
            entry = {"model": f"{p.arch}-{p.name}", "hyperparameters": row, "pretrain_val_loss": result["eval_loss"]}
            for task in p.tasks:
                by_lr: dict[float, list[float]] = {}
                for r in runs:
                    if r["row"] == row and r["task"] == task and not r["diverged"]:
                        by_lr.setdefault(r["lr"], []).append(r["accuracy"])
                if by_lr:
                    best = max(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
                    accs = by_lr[best]
                    mean = sum(accs) / len(accs)
                    entry[task] = {"accuracy": mean, "spread": (max(accs) - min(accs)) / 2, "lr": best,
                                   "seeds": len(accs)}
            table.append(entry)
        hp = json.loads((self.out / "hparams.json").read_text())
        cost = hp["source"]["tuning_cost"]
        summary = {"preset": p.to_dict(), "rows": table}
        grid = {row: r["eval_loss"] for row, r in pretrain.items() if row.startswith("sp_lr")}
        if grid:  # the regret of μTransfer: its loss minus the best of the full-width SP grid
            best = min(grid, key=grid.get)
            mu, published = pretrain["mutransfer"]["eval_loss"], pretrain[p.baseline["name"]]["eval_loss"]
            summary["regret"] = {"mutransfer_loss": mu, "best_sp_grid_row": best, "best_sp_grid_loss": grid[best],
                                 "regret": mu - grid[best], "published_lr_loss": published,
                                 "beats_published": mu < published}
        (self.out / "table6.json").write_text(json.dumps(summary, indent=2))
        (self.out / "table6.md").write_text(table_markdown(table, p.tasks) + regret_markdown(summary.get("regret")))
        (self.out / "cost.json").write_text(json.dumps(cost, indent=2))
        plot_curves(pretrain, self.out / "pretrain_curves.png")
        return {"rows": table, **({"regret": summary["regret"]} if "regret" in summary else {})}

    # --------------------------------------------------------------------------------------------------- plan

    def plan(self) -> dict:
        """Shapes, parameter counts, tokens, FLOPs and steps per stage, without training."""
        p = self.preset
        proxy_n = param_count(p.arch, p.proxy, p.vocab_size, p.seq_len)
        target_n = param_count(p.arch, p.target, p.vocab_size, p.seq_len)
        search_tokens = p.search_trials * p.search_steps * p.search_batch * p.seq_len
        pre_tokens = self.pretrain_tokens()
        return {
            "preset": p.name, "arch": p.arch, "hardware": p.hardware,
            "proxy": {**asdict(p.proxy), "params": proxy_n},
            "target": {**asdict(p.target), "params": target_n},
            "search": {"trials": p.search_trials, "steps_per_trial": p.search_steps, "tokens": search_tokens,
                       "flops": 6 * proxy_n * search_tokens},
            "pretrain": {"rows": 2 + len(p.sp_grid_lrs), "steps": p.pretrain_steps, "batch": p.pretrain_batch,
                         "tokens": pre_tokens, "flops_per_row": 6 * target_n * pre_tokens},
            "finetune": {"tasks": list(p.tasks), "lrs": list(p.finetune_lrs), "seeds": p.finetune_seeds,
                         "runs": 2 * len(p.tasks) * len(p.finetune_lrs) * p.finetune_seeds},
            "search_fraction_of_pretraining": (6 * proxy_n * search_tokens) / (6 * target_n * pre_tokens),
        }


BERT_SPECIAL_TOKENS = ("[MASK]", "[CLS]", "[SEP]", "[PAD]")


class _load_report_off:
    """transformers' load report (unexpected MLM-head and missing classifier tensors) silenced while a pretrained
    masked LM opens as a classifier: expected for every fine-tuning run, and a table each in the log otherwise."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.level)


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


def table_markdown(table: list[dict], tasks: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(("model", "hyperparameters", "pretraining val loss", *tasks)) + " |",
             "|" + "---|" * (3 + len(tasks))]
    for e in table:
        cells = [f"{100 * e[t]['accuracy']:.1f} ± {100 * e[t]['spread']:.1f}" if t in e else "–" for t in tasks]
        lines.append("| " + " | ".join((e["model"], e["hyperparameters"], f"{e['pretrain_val_loss']:.3f}", *cells))
                     + " |")
    return "\n".join(lines) + "\n"


def regret_markdown(regret: dict | None) -> str:
    if not regret:
        return ""
    return (f"\nRegret of μTransfer: {regret['regret']:+.3f} nats ({regret['mutransfer_loss']:.3f} against the best "
            f"full-width SP grid row {regret['best_sp_grid_row']}, {regret['best_sp_grid_loss']:.3f}); the published-LR "
            f"baseline reaches {regret['published_lr_loss']:.3f}: μTransfer "
            f"{'beats' if regret['beats_published'] else 'does not beat'} it.\n")


def plot_curves(pretrain: dict, path: Path) -> None:
    from ..extras import require

    require("sweep", "matplotlib", what="the pipeline's report (pretrain_curves.png)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, result in pretrain.items():
        train = [(h["step"], h["loss"]) for h in result["history"] if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in result["history"] if "eval_loss" in h]
        line, = ax.plot(*zip(*train), lw=1, alpha=0.6, label=f"{row} (train)")
        if evals:
            ax.plot(*zip(*evals), "o-", color=line.get_color(), label=f"{row} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None, presets: dict, prog: str) -> int:
    """The command line of the recipes: `--preset`, `--output_dir`, `--stages`, `--storage`, `--tasks`, `--dry_run`."""
    import argparse
    import sys
    from dataclasses import replace

    parser = argparse.ArgumentParser(prog=prog, description="μTransfer end to end, in resumable stages")
    parser.add_argument("--preset", default="tiny", help=f"one of {', '.join(presets)}")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    parser.add_argument("--storage", help="Optuna RDB URL shared by search workers (default: sqlite in output_dir)")
    parser.add_argument("--tasks", help="comma-separated fine-tuning tasks (default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry_run", action="store_true", help="print the plan (shapes, parameters, tokens, FLOPs)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.preset not in presets:
            raise MuPError(f"unknown preset {args.preset!r}: use one of {', '.join(presets)}.")
        preset = presets[args.preset]
        if args.tasks:
            preset = replace(preset, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
        pipe = Pipeline(preset, args.output_dir, storage=args.storage, device=args.device,
                        progress=not args.no_progress and quiet_progress_bars())  # bars on a terminal only
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise MuPError(f"unknown stage(s) {unknown}: the stages are {', '.join(STAGES)}.")
        pipe.check_inputs(stages)  # every stage's inputs, before the first starts (a dry run checks them too)
        if args.dry_run:
            print(json.dumps(pipe.plan(), indent=2))
            return 0
        run_stages(pipe, stages)
    except MuPError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_stages(pipe: Pipeline, stages: tuple[str, ...]) -> None:
    """Pretraining on every process (the Trainer shares the work); the other stages on the main process only."""
    pipe.check_inputs(stages)  # all of them before the first starts (run() checks only its own)
    from accelerate import PartialState

    state = PartialState(cpu=pipe.device == "cpu")  # on CPU, processes join over gloo (else each runs alone)
    try:
        if state.is_main_process:
            pipe._check_recipe()  # before any process reads the stamp
        state.wait_for_everyone()
        for stage in STAGES:
            if stage in stages and (stage == "pretrain" or state.is_main_process):
                pipe.run((stage,))
            state.wait_for_everyone()
    finally:
        state.destroy_process_group()  # torn down before exit: no "terminate called" aborts under accelerate


__all__ = ["BERT_PRESETS", "GPT2_PRESETS", "GPT3_SMALL", "MEGATRON_BERT", "Pipeline", "Preset", "Shape", "STAGES",
           "main"]
