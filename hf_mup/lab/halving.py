"""Synchronous successive halving (Jamieson & Talwalkar 2016; one bracket of Li et al.'s Hyperband) over a tune
study: every configuration trains to the first rung, the best 1/`reduction` of them go on from their checkpoints to
the next, and so on to the trial's full length. A rung is decided only when every configuration has reached it, so
the cost is fixed in advance (`planned_steps`); Optuna's asynchronous rule (`--pruner asha`) lets the first trials
at each rung through unchallenged, so its cost varies from search to search (docs/results/search.md). With
`brackets`, the trials are split into successive halvings run one after the other, so that TPE samples the later
ones knowing full-length trials (within one bracket it sees only first-rung losses).

Usage:
    study.sampler = make_sampler("tpe", seed=0, n_existing=len(study.trials))   # hf_mup.lab.search
    run_halving(study, spec, n_trials=24, data=data, checkpoints="out/checkpoints/tune", min_steps=spec.recipe.steps // 9)

Each leg of a configuration, from one rung to the next, is a trial of the study, so the study's storage keeps the
search's state and many workers can share it (`hf-mup sweep --mode tune --pruner sha`, the pipeline's search):
- the first leg is sampled (TPE learns from every finished leg), records its `bracket`, trains to the first rung, saves
  its state (`hf_mup.lab.train.train`: model, optimizer, schedule, RNG) under `checkpoints`, and ends PRUNED;
- a promoted configuration's next leg is enqueued with its values and the user attrs `rung` and `resumes` (the leg
  it goes on from); it loads that leg's checkpoint, trains to the next rung, and the last leg ends COMPLETE with
  the trial's validation loss at full length. A leg records only the steps it ran, so the study's FLOPs sum is the
  search's cost; transfer picks the best COMPLETE leg (the full recipe), as for any tune study.
- a killed worker's leg goes stale and is run again from the same checkpoint (`hf_mup.lab.storage`); a leg two
  workers enqueued at once runs once (the other ends PRUNED with `duplicate_of`). Checkpoints are written whole
  (a temporary file, renamed) and deleted once no leg can need them. Workers on several machines need `checkpoints`
  on a filesystem they share.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ..extras import require

require("sweep", "optuna", what="hf_mup.lab.halving (successive halving over an Optuna study)")
import optuna  # noqa: E402 (after the check that names the extra)
import torch  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ..errors import MuPError  # noqa: E402
from .search import DIVERGED_REPORT  # noqa: E402
from .storage import storage_of  # noqa: E402
from .sweep import SweepSpec, check_n_trials, fail_stale, record, run_trial, sample_hparams  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)


def rungs(steps: int, min_steps: int, reduction: int = 3) -> list[int]:
    """The steps at which configurations are compared: `min_steps`·`reduction`^k while a rung is at most
    1/`reduction` of the trial, then `steps` (150 steps from 16: 16, 48, 150; no rung just short of the end)."""
    if not 1 <= min_steps <= steps:
        raise MuPError(f"--min-steps {min_steps}: between 1 and the trial's {steps} steps (the first rung).")
    if reduction < 2:
        raise MuPError(f"reduction factor {reduction}: at least 2 (3 keeps a third of the trials at each rung).")
    out, r = [], min_steps
    while r * reduction <= steps:
        out.append(r)
        r *= reduction
    return out + [steps]


def split(n_trials: int, brackets: int) -> list[int]:
    """The configurations of each bracket: `n_trials` shared as evenly as can be, the first brackets larger."""
    if not 1 <= brackets <= n_trials:
        raise MuPError(f"--brackets {brackets}: between 1 and --n-trials ({n_trials}), each bracket a search of its "
                       "own that the next one's sampler learns from.")
    return [n_trials // brackets + (b < n_trials % brackets) for b in range(brackets)]


def sizes(n_trials: int, n_rungs: int, reduction: int = 3) -> list[int]:
    """How many configurations of a bracket reach each rung: all, then the best ⌈n/reduction⌉ of each rung."""
    out = [n_trials]
    while len(out) < n_rungs:
        out.append(math.ceil(out[-1] / reduction))
    return out


def planned_steps(n_trials: int, steps: int, min_steps: int, reduction: int = 3, brackets: int = 1) -> int:
    """The training steps the search runs in all (every leg that no divergence cut short), before it starts."""
    ladder = rungs(steps, min_steps, reduction)
    return sum(n * (r - prev) for b in split(n_trials, brackets)
               for n, r, prev in zip(sizes(b, len(ladder), reduction), ladder, [0, *ladder]))


def _rung(t: optuna.trial.FrozenTrial) -> int:
    return int(t.user_attrs.get("rung", 0))  # a first leg sets it when it starts; a promoted one is enqueued with it


def _legs(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if "confirm_of" not in t.user_attrs and "duplicate_of" not in t.user_attrs]


def _by_bracket(legs: list[optuna.trial.FrozenTrial],
                n_brackets: int) -> tuple[list[list[optuna.trial.FrozenTrial]], list[optuna.trial.FrozenTrial]]:
    """The legs of each bracket, and the loose ones: a first leg records its bracket when it starts, so one running
    without it (for a moment) or waiting without it (the retry of one killed at once) belongs to the first bracket
    not decided, the one it will join."""
    out: list[list[optuna.trial.FrozenTrial]] = [[] for _ in range(n_brackets)]
    loose: list[optuna.trial.FrozenTrial] = []
    for t in legs:
        (out[int(t.user_attrs["bracket"])] if "bracket" in t.user_attrs else loose).append(t)
    return out, loose


def next_step(trials: list[optuna.trial.FrozenTrial], n_trials: int, n_rungs: int, reduction: int,
              brackets: int = 1) -> tuple[str, list[optuna.trial.FrozenTrial], int]:
    """What the search needs next, from its legs (`trials`: the study's, any state), and in which bracket:
    ("run", [], b) a leg (sampled or waiting), ("promote", legs, b) to enqueue the next leg of each, ("wait", [], b)
    for legs running elsewhere, or ("done", [], last). Brackets run one after the other. Deterministic: every worker
    decides the same promotions."""
    tagged, loose = _by_bracket([t for t in _legs(trials) if t.state != TrialState.FAIL], brackets)
    for b, (here, size) in enumerate(zip(tagged, split(n_trials, brackets))):
        action, promote = _bracket_step(here, size, n_rungs, reduction)
        if action != "done":
            return (*_bracket_step(here + loose, size, n_rungs, reduction), b) if loose else (action, promote, b)
    return "done", [], brackets - 1


def _bracket_step(legs: list[optuna.trial.FrozenTrial], size: int, n_rungs: int,
                  reduction: int) -> tuple[str, list[optuna.trial.FrozenTrial]]:
    for k in range(n_rungs):
        here = [t for t in legs if _rung(t) == k]
        finished: dict[int, optuna.trial.FrozenTrial] = {}  # a leg per configuration: the first to finish
        for t in sorted((t for t in here if t.state in FINISHED), key=lambda t: t.number):
            finished.setdefault(t.user_attrs.get("resumes", t.number), t)
        if any(t.state == TrialState.WAITING for t in here) or (k == 0 and len(finished) + sum(
                t.state == TrialState.RUNNING for t in here) < size):
            return "run", []
        if any(t.state in ACTIVE for t in here) or len(finished) < size:
            return "wait", []
        if k == n_rungs - 1:
            return "done", []
        ranked = sorted((t for t in finished.values() if not t.user_attrs.get("diverged")),
                        key=lambda t: (t.value, t.number))
        promoted = ranked[:math.ceil(size / reduction)]
        if not promoted:
            return "done", []  # every configuration diverged
        have = {t.user_attrs.get("resumes") for t in legs if _rung(t) == k + 1}
        missing = [t for t in promoted if t.number not in have]
        if missing:
            return "promote", missing
        size = len(promoted)
    return "done", []


def obsolete_checkpoints(trials: list[optuna.trial.FrozenTrial], brackets: int = 1) -> set[int]:
    """The finished (or failed) legs whose checkpoints no leg can need any more: not promoted from a decided rung of
    their bracket, or gone on from by a finished leg. A running leg's checkpoint (being written) is never among them."""
    out = set()
    for legs in _by_bracket(_legs(trials), brackets)[0]:
        top = max((_rung(t) for t in legs), default=0)
        referenced = {t.user_attrs["resumes"] for t in legs if "resumes" in t.user_attrs}
        gone_on = {t.user_attrs["resumes"] for t in legs if t.state in FINISHED and "resumes" in t.user_attrs}
        out |= {t.number for t in legs if t.state in (*FINISHED, TrialState.FAIL)
                and (t.number in gone_on or (t.number not in referenced and _rung(t) < top))}
    return out


class Checkpoints:
    """A search's paused legs, one file per leg (`<number>.pt`) under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, number: int) -> Path:
        return self.root / f"{number}.pt"

    def save(self, number: int, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{number}.pt.{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.path(number))  # whole or absent: a worker killed mid-write leaves no half file

    def load(self, number: int) -> dict[str, Any]:
        path = self.path(number)
        if not path.exists():
            raise MuPError(f"successive halving: the checkpoint of trial {number} ({path}) is missing, so the "
                           "configuration cannot go on. Run every worker with the same --out (or checkpoint folder "
                           "on a shared filesystem), or start the search again under a new --study.")
        return torch.load(path, weights_only=True)

    def remove(self, numbers: set[int]) -> None:
        for n in numbers:
            self.path(n).unlink(missing_ok=True)


def leg_objective(spec: SweepSpec, data: tuple, ladder: list[int], checkpoints: Checkpoints, device: str = "cpu",
                  progress: bool = False):
    """The objective of a leg: trains the configuration from its previous rung (its checkpoint) to the next. A first
    leg joins the bracket `objective.bracket` (run_halving sets it)."""

    def objective(trial: optuna.Trial) -> float:
        prev = trial.user_attrs.get("resumes")
        if prev is not None:
            for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
                if t.number != trial.number and t.user_attrs.get("resumes") == prev and "duplicate_of" not in \
                        t.user_attrs and (t.state in FINISHED or t.number < trial.number):
                    trial.set_user_attr("duplicate_of", t.number)
                    raise optuna.TrialPruned(f"trial {t.number} goes on from trial {prev}")
        rung = _rung(trial)  # type: ignore[arg-type]
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("bracket", trial.user_attrs.get("bracket", objective.bracket))  # type: ignore[attr-defined]
        hp = sample_hparams(trial, spec)
        resume = checkpoints.load(prev) if prev is not None else None
        attrs = run_trial(spec, spec.tune_recipe(hp), data, device, progress, f"trial {trial.number} rung {rung}",
                          resume=resume, until=ladder[rung])
        state = attrs.pop("state", None)
        if state is not None:
            checkpoints.save(trial.number, state)
        value = record(trial, attrs)
        trial.set_user_attr("start_step", ladder[rung - 1] if rung else 0)
        trial.report(value if math.isfinite(value) and not attrs["diverged"] else DIVERGED_REPORT, ladder[rung])
        if rung < len(ladder) - 1:
            raise optuna.TrialPruned(f"paused at step {ladder[rung]} (rung {rung})")
        return value

    objective.bracket = 0  # type: ignore[attr-defined]
    return objective


def run_halving(study: optuna.Study, spec: SweepSpec, n_trials: int, data: tuple, checkpoints: str | Path,
                min_steps: int, reduction: int = 3, device: str = "cpu", progress: bool = True,
                after_trial=None, brackets: int = 1) -> None:
    """Successive halving over `n_trials` configurations of the tune `spec`, from `min_steps` to the recipe's
    steps; resumes a search that was stopped, and shares the work with other workers on the same study.

    `brackets`: the configurations split into that many successive halvings, run one after the other, so that the
    sampler (TPE) of a later bracket learns from the full-length trials of the earlier ones; with one bracket it has
    only the first rung's losses to go on, and chases what trains fastest early."""
    from tqdm.auto import tqdm

    check_n_trials(n_trials)
    split(n_trials, brackets)
    ladder = rungs(spec.recipe.steps, min_steps, reduction)
    store = Checkpoints(checkpoints)
    objective = leg_objective(spec, data, ladder, store, device, progress)
    legs_planned = sum(sum(sizes(n, len(ladder), reduction)) for n in split(n_trials, brackets))
    bar = tqdm(total=legs_planned, desc="halving", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        fail_stale(study, adopted)
        trials = study.get_trials(deepcopy=False)
        store.remove(obsolete_checkpoints(trials, brackets))
        finished = sum(t.state in FINISHED and "confirm_of" not in t.user_attrs
                       and "duplicate_of" not in t.user_attrs for t in trials)
        bar.update(finished - bar.n)
        action, legs, objective.bracket = next_step(trials, n_trials, len(ladder), reduction, brackets)
        if action == "done":
            break
        if action == "promote":
            for t in legs:
                study.enqueue_trial(t.params, user_attrs={"rung": _rung(t) + 1, "resumes": t.number,
                                                          "bracket": t.user_attrs["bracket"]})
        elif action == "run":
            study.optimize(objective, n_trials=1)
            if after_trial:
                after_trial(study)
        else:  # legs running elsewhere (or in a killed process, until its heartbeat goes stale)
            time.sleep(storage_of(study).get_heartbeat_interval() or 1)
    bar.close()
