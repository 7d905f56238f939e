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
from pathlib import Path
from typing import Any

import torch

from ..errors import MuPError
from ..logs import quiet_progress_bars
from .data import epochs, stack
from .presets import BERT_PRESETS, BERT_SPECIAL_TOKENS, GPT2_PRESETS, GPT3_SMALL, MEGATRON_BERT, Preset, Shape
from .recipe import Recipe
from .results import plot_curves, regret_markdown, table_markdown
from .tasks import load_report_off

STAGES = ("search", "transfer", "pretrain", "finetune", "report")


class Pipeline:
    """The staged μTransfer run of one preset in one output folder. See the module docstring."""

    def __init__(self, preset: Preset, out: str | os.PathLike, storage: str | None = None, device: str = "cpu",
                 progress: bool = True, pruner: str = "none", confirm_top: int = 0, brackets: int = 1):
        if preset.proxy.width > preset.target.width:
            raise MuPError(f"the proxy (width {preset.proxy.width}) is wider than the target "
                           f"({preset.target.width}): the proxy is the small model. Fix the preset.")
        if preset.arch not in ("bert", "gpt2"):
            raise MuPError(f"preset arch {preset.arch!r}: use bert or gpt2.")
        self.preset, self.out, self.device, self.progress, self.storage = preset, Path(out), device, progress, storage
        self.pruner, self.confirm_top, self.brackets = pruner, confirm_top, brackets  # the search's; not stamped
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
        (with the `pip install 'hf_mup[...]'` line), the WikiText-2 text, every fine-tuning task's data and a
        pretraining batch that does not split over the launched processes. Stages finished in an earlier run are not
        checked again."""
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
        if "search" in todo and (self.pruner != "none" or self.brackets != 1):
            from .search import MIN_FRACTION, check_search

            p = self.preset
            check_search(self.pruner, p.search_trials, p.search_steps, max(1, p.search_steps // MIN_FRACTION),
                         self.brackets, where=f"--pruner {self.pruner} on the search of preset {p.name!r}")
        if "finetune" in todo:
            for task in self.preset.tasks:
                tasks.check_task(task)
        if "pretrain" in todo:  # WORLD_SIZE: set by every launcher, readable before any process group exists
            self._check_batch_splits(int(os.environ.get("WORLD_SIZE", "1")))

    def _check_batch_splits(self, processes: int) -> None:
        if self.preset.pretrain_batch % processes:
            raise MuPError(f"the pretraining batch {self.preset.pretrain_batch} does not split over {processes} "
                           "processes: launch a number of processes that divides it.")

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

    def corpus(self):
        """The pretraining text: WikiText-2 shipped with hf_mup, a BPE trained locally (BERT's with the special
        tokens fine-tuning needs)."""
        from .data import Corpus

        p = self.preset
        bert = p.arch == "bert"
        return Corpus(vocab_size=p.vocab_size, special_tokens=BERT_SPECIAL_TOKENS if bert else (), masked=bert,
                      train_chars=p.train_chars, val_blocks=p.eval_blocks)

    def data(self):
        """(tokenizer, train blocks, validation blocks), from `hf_mup.lab.data.load_corpus`."""
        if self._data is None:
            from . import tasks
            from .data import load_corpus

            train, val, tok = load_corpus(self.corpus(), self.preset.seq_len, self.out)
            if self.preset.arch == "bert":
                tasks.add_pair_template(tok)
            self._data = (tok, train, val)
        return self._data

    def target_config(self):
        """The target's transformers config (its shape; what transfer reads)."""
        p = self.preset
        return Recipe(**p.shape(p.target, len(self.data()[0])), base_width=None, parametrization="sp").model_config()

    # ----------------------------------------------------------------------------------------------- stages

    def search(self) -> dict:
        from . import sweep as sw
        from .results import report, trial_line
        from .search import MIN_FRACTION, confirm_top, run_search
        from .storage import default_storage

        p = self.preset
        tok, train, val = self.data()
        spec = sw.SweepSpec("tune", p.proxy_recipe(len(tok)), self.corpus(), p.log2_lr_range, name=p.name)
        study = sw.open_study("proxy", self.storage or default_storage(self.out), spec.stamp((train, val)))
        study.sampler = sw.make_sampler("tpe", 0, len(study.trials))  # seeded: a rerun proposes the same trials
        every = max(1, p.search_steps // MIN_FRACTION)  # the minimum resource and the report interval
        log = None if self.progress else lambda st: self._log(f"search: {trial_line(st)}")
        run_search(study, spec, p.search_trials, (train, val), self.pruner, every, self.out / "search_checkpoints",
                   self.device, self.progress, log, brackets=self.brackets)
        if self.confirm_top:  # the top trials rerun with 3 seeds: transfer takes the best seed-mean
            confirm_top(study, spec, (train, val), self.confirm_top, 3, self.device, self.progress)
        report(study, self.out, plot_name=None)
        return {"trials": p.search_trials, "best_val_loss": study.best_value}

    def transfer(self) -> dict:
        from .storage import default_storage, load_study
        from .transfer import transfer

        study = load_study("proxy", self.storage or default_storage(self.out))
        # allow_depth_change: the BERT presets shrink the proxy in depth too, without depth scaling, as Tensor
        # Programs V did (the comparison reproduces theirs); transfer notes it in hparams.json. rule "copy": Tensor
        # Programs V copied the proxy's settings to the longer run too (the committed results were made so);
        # benchmarks/horizon_transfer.py measures the rules that move them.
        result = transfer(study, self.target_config(), target_tokens=self.pretrain_tokens(),
                          batch_size=self.preset.pretrain_batch, allow_depth_change=True, rule="copy")
        result.save(self.out / "hparams.json")
        return {"learning_rate": result.recipe.lr, "mup": dict(result.recipe.mup), "fraction": result.cost["fraction"]}

    def pretrain_tokens(self) -> float:
        return float(self.preset.pretrain_steps * self.preset.pretrain_batch * self.preset.seq_len)

    def rows(self) -> dict[str, Recipe]:
        """The pretraining rows: μTransfer (the proxy's recipe at the target's shape), the standard-parametrization
        baseline with its published settings, and SP at full width over a small LR grid with the μTransfer row's
        settings otherwise (what tuning the target costs)."""
        from .transfer import Transferred

        mutransfer = Transferred.load(self.out / "hparams.json").recipe
        p = self.preset
        return {
            "mutransfer": mutransfer,
            p.baseline["name"]: p.baseline_recipe(len(self.data()[0])),
            **{f"sp_lr{lr:g}": mutransfer.replace(parametrization="sp", lr=lr, initializer_range=0.02, weight_decay=0.0)
               for lr in p.sp_grid_lrs},
        }

    def pretrain(self) -> dict:
        results = {}
        for name, row in self.rows().items():
            results[name] = self.pretrain_row(name, row)
        return {"eval_loss": {k: v["eval_loss"] for k, v in results.items()}}

    def pretrain_row(self, name: str, row: Recipe, callbacks: tuple = ()) -> dict:
        """Pretrain one row to `pretrain_steps` (continuing from its last checkpoint), evaluate and save it."""
        from accelerate import PartialState
        from transformers import TrainingArguments
        from transformers.trainer_utils import get_last_checkpoint

        from ..trainer import MuPTrainer

        folder = self.out / "pretrain" / name
        done = folder / "final_metrics.json"
        if done.exists():
            return json.loads(done.read_text())
        p = self.preset
        if (row.steps, row.batch_size) != (p.pretrain_steps, p.pretrain_batch):
            raise MuPError(f"row {name!r} trains {row.steps} steps of {row.batch_size}, the preset "
                           f"{p.pretrain_steps} of {p.pretrain_batch}: hparams.json was made for another preset.")
        processes = PartialState().num_processes
        self._check_batch_splits(processes)
        tok, train, val = self.data()
        model = row.build_model()
        optimizer = row.build_optimizer(model)
        schedule = row.build_scheduler(optimizer)
        eval_every = max(1, row.steps // 10)
        args = TrainingArguments(
            # the recipe's batch is the global one: the same tokens per step however many processes share it
            str(folder), max_steps=row.steps, per_device_train_batch_size=row.batch_size // processes,
            per_device_eval_batch_size=64, max_grad_norm=row.clip, logging_steps=max(1, row.steps // 50),
            eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
            save_total_limit=1, report_to=[], seed=0, data_seed=0, disable_tqdm=not self.progress,
            use_cpu=self.device == "cpu", train_sampling_strategy="sequential",  # the order is `epochs`'
        )
        order = epochs(self.examples(train, seed=0), row.steps * row.batch_size, seed=0)
        trainer = MuPTrainer(model=model, args=args, optimizers=(optimizer, schedule),
                             train_dataset=order, eval_dataset=self.examples(val, seed=1),
                             data_collator=stack, callbacks=list(callbacks))
        if not self.progress:  # the Trainer prints every log dict when its bar is off: the pipeline logs its own lines
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.train(resume_from_checkpoint=get_last_checkpoint(str(folder)) if folder.is_dir() else None)
        if trainer.state.global_step < row.steps:  # stopped early (a callback, a signal): not done
            return {"stopped_at": trainer.state.global_step}
        metrics = trainer.evaluate()
        trainer.save_model(str(folder))
        history = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
        result = {"eval_loss": metrics["eval_loss"], "history": history, "row": row.to_dict()}
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
                        with load_report_off():  # the MLM head unused, a new classifier: expected, every run
                            if getattr(config, "mup", None):
                                model = MuPModel.from_pretrained(folder, model_class="BertForSequenceClassification",
                                                                 config=config)
                            else:
                                model = AutoModelForSequenceClassification.from_pretrained(folder, config=config)
                        recipe = tasks.finetune_recipe(model, len(train), lr=lr, epochs=p.finetune_epochs,
                                                       batch_size=p.finetune_batch, seed=seed)
                        r = tasks.finetune(model, tok, train, test, recipe, max_length=p.seq_len)
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
                    best_lr = max(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
                    accs = by_lr[best_lr]
                    mean = sum(accs) / len(accs)
                    entry[task] = {"accuracy": mean, "spread": (max(accs) - min(accs)) / 2, "lr": best_lr,
                                   "seeds": len(accs)}
            table.append(entry)
        cost = json.loads((self.out / "hparams.json").read_text())["cost"]
        summary: dict[str, Any] = {"preset": p.to_dict(), "rows": table}
        grid = {row: r["eval_loss"] for row, r in pretrain.items() if row.startswith("sp_lr")}
        if grid:  # the regret of μTransfer: its loss minus the best of the full-width SP grid
            best = min(grid, key=lambda row: grid[row])
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
        """Shapes, parameter counts, tokens, FLOPs and steps per stage, without training (`Preset.plan`)."""
        return self.preset.plan()


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
    parser.add_argument("--pruner", default="none", choices=["none", "asha", "sha", "hyperband", "median"],
                        help="stop hopeless search trials early (hf_mup.lab.search, hf_mup.lab.halving)")
    parser.add_argument("--brackets", type=int, default=1, help="--pruner sha: this many halvings, one by one")
    parser.add_argument("--confirm_top", type=int, default=0, help="rerun this many best search trials with 3 seeds")
    args = parser.parse_args(argv)
    try:
        if args.preset not in presets:
            raise MuPError(f"unknown preset {args.preset!r}: use one of {', '.join(presets)}.")
        preset = presets[args.preset]
        if args.tasks:
            preset = replace(preset, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
        pipe = Pipeline(preset, args.output_dir, storage=args.storage, device=args.device,
                        progress=quiet_progress_bars() and not args.no_progress,  # bars on a terminal only
                        pruner=args.pruner, confirm_top=args.confirm_top, brackets=args.brackets)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
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
