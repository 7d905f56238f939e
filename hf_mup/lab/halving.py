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
  workers enqueued at once runs once (the other ends PRUNED with `duplicate_of`), and a first leg beyond its
  bracket's configurations stops unsampled (`surplus`). The study records the rungs, `n_trials` and `brackets`
  (user attr "halving") and refuses a rerun with others. Checkpoints are written whole
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
from .search import DIVERGED_REPORT, ran  # noqa: E402
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
    return [t for t in trials if "confirm_of" not in t.user_attrs and ran(t)]


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


def _finished(legs: list[optuna.trial.FrozenTrial], k: int) -> dict[int, optuna.trial.FrozenTrial]:
    """The finished legs at rung `k`, one per configuration (the first to finish), by the configuration's first leg."""
    out: dict[int, optuna.trial.FrozenTrial] = {}
    for t in sorted((t for t in legs if _rung(t) == k and t.state in FINISHED), key=lambda t: t.number):
        out.setdefault(t.user_attrs.get("resumes", t.number), t)
    return out


def _decided(legs: list[optuna.trial.FrozenTrial], size: int, n_rungs: int,
             reduction: int) -> list[tuple[list[optuna.trial.FrozenTrial], list[optuna.trial.FrozenTrial]]]:
    """(finished legs, promoted legs) of each decided rung below the last, from the first: a rung is decided when
    each of its configurations has finished there and no leg of it runs or waits; the best 1/`reduction` that did not
    diverge go on (ties by trial number). Every worker computes the same promotions."""
    out = []
    for k in range(n_rungs - 1):
        finished = _finished(legs, k)
        if len(finished) < size or any(_rung(t) == k and t.state in ACTIVE for t in legs):
            break
        ranked = sorted((t for t in finished.values() if not t.user_attrs.get("diverged")),
                        key=lambda t: (t.value, t.number))
        out.append((list(finished.values()), ranked[:math.ceil(size / reduction)]))
        size = len(out[-1][1])
        if not size:
            break  # every configuration diverged
    return out


def _bracket_step(legs: list[optuna.trial.FrozenTrial], size: int, n_rungs: int,
                  reduction: int) -> tuple[str, list[optuna.trial.FrozenTrial]]:
    decided = _decided(legs, size, n_rungs, reduction)
    k = len(decided)  # the first rung not decided
    if decided and not decided[-1][1]:
        return "done", []  # every configuration diverged
    if decided:
        promoted = decided[-1][1]
        have = {t.user_attrs.get("resumes") for t in legs if _rung(t) == k}
        if missing := [t for t in promoted if t.number not in have]:
            return "promote", missing
        size = len(promoted)
    here = [t for t in legs if _rung(t) == k]
    if any(t.state == TrialState.WAITING for t in here) or (k == 0 and len(_finished(legs, 0)) + sum(
            t.state == TrialState.RUNNING for t in here) < size):
        return "run", []
    if k == n_rungs - 1 and len(_finished(legs, k)) >= size and not any(t.state in ACTIVE for t in here):
        return "done", []
    return "wait", []


def obsolete_checkpoints(trials: list[optuna.trial.FrozenTrial], n_trials: int, n_rungs: int, reduction: int = 3,
                         brackets: int = 1) -> set[int]:
    """The legs whose checkpoints no leg can need any more: failed ones (a retry saves its own), those not promoted
    from a decided rung, and those a finished leg went on from. A running leg's checkpoint is never among them."""
    legs = _legs(trials)
    out = {t.number for t in legs if t.state == TrialState.FAIL}
    for here, size in zip(_by_bracket([t for t in legs if t.state != TrialState.FAIL], brackets)[0],
                          split(n_trials, brackets)):
        for finished, promoted in _decided(here, size, n_rungs, reduction):
            out |= {t.number for t in finished} - {t.number for t in promoted}
        out |= {t.user_attrs["resumes"] for t in here if t.state in FINISHED and "resumes" in t.user_attrs}
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
                           "configuration cannot go on. Give every worker the same checkpoint folder (hf-mup sweep: "
                           "--checkpoint-dir or --out; a pipeline: --output_dir), on a filesystem they share.")
        return torch.load(path, map_location="cpu", weights_only=True)  # any worker's device: train() moves it

    def remove(self, numbers: set[int]) -> None:
        for n in numbers:
            self.path(n).unlink(missing_ok=True)


def leg_objective(spec: SweepSpec, data: tuple, ladder: list[int], checkpoints: Checkpoints, device: str = "cpu",
                  progress: bool = False, bracket_sizes: list[int] | None = None):
    """The objective of a leg: trains the configuration from its previous rung (its checkpoint) to the next. A first
    leg joins the bracket `objective.bracket` (run_halving sets it) unless that bracket already has its
    `bracket_sizes[b]` configurations (then it stops before sampling, marked `surplus`: another worker took the leg
    this one was meant to run)."""

    def objective(trial: optuna.Trial) -> float:
        prev = trial.user_attrs.get("resumes")
        bracket = int(trial.user_attrs.get("bracket", objective.bracket))  # type: ignore[attr-defined, arg-type]
        if prev is not None:
            for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
                if t.number != trial.number and t.user_attrs.get("resumes") == prev and "duplicate_of" not in \
                        t.user_attrs and (t.state in FINISHED or t.number < trial.number):
                    trial.set_user_attr("duplicate_of", t.number)
                    raise optuna.TrialPruned(f"trial {t.number} goes on from trial {prev}")
        elif bracket_sizes is not None:  # first legs are numbered in the order they start: the later ones are extra
            before = [t for t in _legs(trial.study.get_trials(deepcopy=False)) if t.number < trial.number
                      and t.state != TrialState.FAIL and "resumes" not in t.user_attrs
                      and int(t.user_attrs.get("bracket", bracket)) == bracket]
            if len(before) >= bracket_sizes[bracket]:
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"bracket {bracket} has its {bracket_sizes[bracket]} configurations")
        rung = _rung(trial)  # type: ignore[arg-type]
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("bracket", bracket)
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


def _claim(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Record the search's settings in the study, or refuse a run whose settings differ from those it was started
    with (its rungs and promotions would no longer match the legs and checkpoints already there)."""
    have = study.user_attrs.get("halving")
    if have is None:
        if any(t.state != TrialState.FAIL for t in _legs(study.get_trials(deepcopy=False))):
            raise MuPError(f"study {study.study_name!r} already holds trials of a search without successive halving; "
                           "successive halving needs a study of its own: give a new --study name (or another output "
                           "folder).")
        study.set_user_attr("halving", settings)
    elif have != settings:
        changed = ", ".join(f"{k} {have.get(k)} (now {settings[k]})" for k in settings if have.get(k) != settings[k])
        raise MuPError(f"study {study.study_name!r} runs successive halving with {changed}: rerun with the study's "
                       "settings (--n-trials, --steps and --min-steps, --brackets), or give a new --study name.")


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
    ladder, bracket_sizes = rungs(spec.recipe.steps, min_steps, reduction), split(n_trials, brackets)
    _claim(study, {"n_trials": n_trials, "rungs": ladder, "reduction": reduction, "brackets": brackets})  # once valid
    store = Checkpoints(checkpoints)
    objective = leg_objective(spec, data, ladder, store, device, progress, bracket_sizes)
    legs_planned = sum(sum(sizes(n, len(ladder), reduction)) for n in bracket_sizes)
    bar = tqdm(total=legs_planned, desc="halving", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        fail_stale(study, adopted)
        trials = study.get_trials(deepcopy=False)
        store.remove(obsolete_checkpoints(trials, n_trials, len(ladder), reduction, brackets))
        finished = sum(t.state in FINISHED for t in _legs(trials))
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
