"""How a tune study searches: its sampler (TPE or random) and its pruner. With a pruner the search is multi-fidelity:
trials report their validation loss as they train, and the pruner stops the hopeless ones early (successive halving,
Hyperband, or the median rule), so a search costs a fraction of running every trial to the end. A pruned trial keeps
what it cost (`steps_run`, `flops`) and its last loss; transfer counts it in the cost and never picks it.

Usage:
    study.sampler = make_sampler("tpe", seed=0, n_existing=len(study.trials))
    run_search(study, spec, n_trials=32, data=data, pruner="asha", min_steps=recipe.steps // 3, checkpoints=None)

Pruning on an early loss favours high learning rates (they lead early and may finish worse). Two guards: no trial is
stopped before `min_steps` (the minimum resource), and trials are only ever compared at equal steps, hence equal
tokens (every pruner here compares intermediate values reported at the same step).
"""
from __future__ import annotations

import math
import warnings

from ..extras import require

require("sweep", "optuna", what="hf_mup.lab.search (Optuna samplers and pruners)")
import optuna  # noqa: E402 (after the check that names the extra)

from ..errors import MuPError  # noqa: E402

PRUNERS = ("none", "asha", "sha", "hyperband", "median")
# The default minimum resource, steps // MIN_FRACTION, also the default report interval: measured on the BERT tiny
# preset (benchmarks/search_cost.py), the best third of the trials at steps/9 had LRs 1.3 log2 above the final best
# third's, at steps/3 0.85, and pruning from steps/3 kept the full search's winner in 2 seeds of 3 at 59% of its cost.
MIN_FRACTION = 3
DIVERGED_REPORT = 1e9  # what a non-finite intermediate loss is reported as (Optuna's pruners need a number)
# successive halving's legs that ran nothing (hf_mup.lab.halving): another worker's copy, or one too many
SKIPPED_LEG = ("duplicate_of", "surplus")


def ran(t: optuna.trial.FrozenTrial) -> bool:
    """False for a leg of successive halving that stopped before training (`SKIPPED_LEG`)."""
    return not any(k in t.user_attrs for k in SKIPPED_LEG)


def make_sampler(name: str, seed: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """TPE or random, seeded; `n_existing` (the study's trials) offsets the seed so that a resumed sweep does not
    replay the first run's random draws."""
    seed = seed + n_existing
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise MuPError(f"--sampler {name!r}: use tpe or random.")


def make_pruner(name: str, steps: int, min_steps: int, reduction: int = 3) -> optuna.pruners.BasePruner:
    """The pruner `name` over a trial of `steps` steps that prunes nothing before `min_steps`.

    - "asha": successive halving (asynchronous, as in Li et al. 2020's ASHA): at steps min_steps·reduction^k a
      trial continues only if it is in the best 1/reduction of the trials that reached that rung.
    - "sha": synchronous successive halving, which pauses and resumes trials: `hf_mup.lab.halving.run_halving` runs
      it (in place of `run_tune`), and no Optuna pruner is needed (this returns the one that prunes nothing).
    - "hyperband": Hyperband's brackets of successive halving between `min_steps` and `steps`.
    - "median": stop a trial whose loss is worse than the median of the others' at the same step (after 4 trials).
    - "none": never.
    """
    if name not in PRUNERS:
        raise MuPError(f"--pruner {name!r}: use one of {', '.join(PRUNERS)}.")
    if not 1 <= min_steps <= steps:
        raise MuPError(f"--min-steps {min_steps}: between 1 and the trial's {steps} steps (the least any trial "
                       "trains before it can be pruned).")
    if reduction < 2:
        raise MuPError(f"reduction factor {reduction}: at least 2 (3 keeps a third of the trials at each rung).")
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor=reduction)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_steps, max_resource=steps, reduction_factor=reduction)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=min_steps - 1)
    return optuna.pruners.NopPruner()


def check_search(pruner: str, n_trials: int, steps: int, min_steps: int, brackets: int = 1, where: str = "") -> None:
    """Refuse a search that cannot run, before any work: the pruner, its minimum resource, and for "sha" the rungs
    and the brackets (`brackets` is only for "sha"). `where` starts the message (a pipeline's preset)."""
    try:
        make_pruner(pruner, steps, min_steps)
        if brackets != 1 and pruner != "sha":
            raise MuPError(f"--brackets {brackets} splits --pruner sha's trials: use it with --pruner sha.")
        if pruner == "sha":
            from .halving import rungs, split

            split(n_trials, brackets)
            if len(rungs(steps, min_steps)) < 2:
                raise MuPError(f"--min-steps {min_steps} leaves successive halving no rung before the end of the "
                               f"trial's {steps} steps: use at most a third of them" + (f" ({steps // 3})" if steps
                               >= 3 else "") + " (each rung trains 3x as long as the one before).")
    except MuPError as e:
        raise MuPError(f"{where} ({n_trials} trials of {steps} steps): {e}" if where else str(e)) from None


def run_search(study: optuna.Study, spec, n_trials: int, data: tuple, pruner: str, min_steps: int, checkpoints,
               device: str = "cpu", progress: bool = True, after_trial=None, eval_every: int | None = None,
               brackets: int = 1) -> None:
    """Run a tune search with `pruner` (`study.sampler` is set): "sha" pauses its trials in `checkpoints`
    (`hf_mup.lab.halving.run_halving`); the others run whole trials that report their loss every `eval_every` steps
    to the pruner (`hf_mup.lab.sweep.run_tune`; default: every `min_steps`, or never without a pruner).

    Usage: `run_search(study, spec, 32, data, "asha", min_steps=recipe.steps // 3, checkpoints=None)`
    """
    steps = spec.recipe.steps
    check_search(pruner, n_trials, steps, min_steps, brackets)
    study.pruner = make_pruner(pruner, steps, min_steps)
    if pruner == "sha":
        from .halving import run_halving

        run_halving(study, spec, n_trials, data, checkpoints, min_steps, device=device, progress=progress,
                    after_trial=after_trial, brackets=brackets)
    else:
        from .sweep import run_tune

        if eval_every is None:
            eval_every = 0 if pruner == "none" else min_steps
        run_tune(study, spec, n_trials, data, device, progress, after_trial, eval_every)


class Reporter:
    """`on_eval` for `hf_mup.lab.train.train`: reports each validation loss to the trial at its step and stops
    training (returns True) when the study's pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, step: int, loss: float) -> bool:
        self.trial.report(loss if math.isfinite(loss) else DIVERGED_REPORT, step)
        return bool(self.trial.should_prune())


def confirm_top(study, spec, data: tuple, k: int = 3, seeds: int = 3, device: str = "cpu",
                progress: bool = False) -> list[int]:
    """Re-run the `k` best complete trials of a tune study with seeds 1 … `seeds`-1 (the search ran seed 0), so
    that `transfer` picks the best seed-mean instead of one lucky run; returns the confirmed trials' numbers.

    Usage: `confirm_top(study, spec, data, k=3, seeds=3)` after `run_tune`.

    Each rerun is a trial of the study, enqueued with the original's values and the user attrs `confirm_of` and
    `seed`; run_tune does not count them, and a rerun of this (after a kill) only runs what is missing. Run it in one
    worker: two would each run the missing seeds.
    """
    from optuna.trial import TrialState

    from .sweep import tune_objective

    if k < 1 or seeds < 2:
        raise MuPError(f"--confirm-top {k} --confirm-seeds {seeds}: at least 1 trial and 2 seeds (the search's own "
                       "run is seed 0).")
    trials = study.get_trials(deepcopy=False)
    searched = [t for t in trials if t.state == TrialState.COMPLETE and "confirm_of" not in t.user_attrs
                and not t.user_attrs.get("diverged")]
    top = sorted(searched, key=lambda t: t.value)[:k]
    have = {(t.user_attrs["confirm_of"], t.user_attrs.get("seed")) for t in trials
            if "confirm_of" in t.user_attrs and t.state == TrialState.COMPLETE}
    objective = tune_objective(spec, data, device, progress)
    for t in top:
        for seed in range(1, seeds):
            if (t.number, seed) not in have:
                study.enqueue_trial(t.params, user_attrs={"confirm_of": t.number, "seed": seed})
                study.optimize(objective, n_trials=1)
    return [t.number for t in top]



def searched(study) -> list:
    """The search's own finished trials (complete or pruned), one per configuration: without the reruns
    `confirm_top` added, and of successive halving's legs (`hf_mup.lab.halving`) only each configuration's last."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
              and "confirm_of" not in t.user_attrs and ran(t)]
    gone_on = {t.user_attrs["resumes"] for t in trials if "resumes" in t.user_attrs}
    return [t for t in trials if t.number not in gone_on]


def param_importance(study) -> dict[str, float] | None:
    """How much of the search's validation loss each hyperparameter explains (PED-ANOVA, Watanabe et al. 2023:
    Optuna's evaluator that needs no scikit-learn), over its complete trials, or with successive halving over every
    configuration at the first rung (equal tokens); None with fewer than 4."""
    from optuna.trial import TrialState

    first_rung = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("rung") == 0
                  and t.state == TrialState.PRUNED and ran(t)]
    pool = first_rung or [t for t in searched(study) if t.state == TrialState.COMPLETE]
    done = [t for t in pool if not t.user_attrs.get("diverged") and math.isfinite(t.user_attrs.get("val_loss") or math.nan)]
    if len(done) < 4:
        return None
    copy = optuna.create_study(direction="minimize")  # the search's trials alone (no reruns, no diverged ones)
    copy.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                               value=t.user_attrs["val_loss"]) for t in done])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
        found = optuna.importance.get_param_importances(copy, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    return {k: float(v) for k, v in found.items()}


def plot_slices(study, path, importance: dict[str, float] | None = None) -> None:
    """The loss landscape around the winner, one panel per hyperparameter: every complete trial's validation loss
    against its value (pruned trials at their last loss, hollow), the best trial starred; titles give the importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = [t for t in searched(study) if math.isfinite(t.user_attrs.get("val_loss") or math.nan)]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return
    best = min(done, key=lambda t: t.user_attrs["val_loss"])
    names = list(best.params)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for group, style in ((done, {"color": "C0"}), ([t for t in trials if t.state == TrialState.PRUNED],
                                                       {"facecolors": "none", "edgecolors": "0.6"})):
            ax.scatter([t.params[name] for t in group], [t.user_attrs["val_loss"] for t in group], s=14, **style)
        ax.plot(best.params[name], best.user_attrs["val_loss"], "*", ms=13, color="C3", markeredgecolor="black")
        if name != "log2_lr":
            ax.set_xscale("log")
        share = f", importance {importance[name]:.2f}" if importance and name in importance else ""
        ax.set_title(f"{name}{share}", fontsize=8)
    axes[0][0].set_ylabel("validation loss (pruned: last, hollow)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
