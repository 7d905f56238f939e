"""Hyperparameter sweeps as Optuna studies: the LR-transfer grid (Figure 1 of Tensor Programs V) and proxy tuning.

Usage:
    recipe = Recipe(arch="gpt2", width=64, base_width=64, mup={"output_mult": 8.0}, steps=150)
    spec = SweepSpec("grid", recipe, Corpus(tokenizer="bytes"))
    data = spec.load_data()
    study = open_study("lr_transfer", "sqlite:///out/sweep.db", spec.stamp(data))
    run_grid(study, spec, grid_points([64, 128], [-8, -7, -6], ["mup", "sp"], seeds=2), data)
    report(study, "out")          # results.csv, results.json, lr_transfer.png (hf_mup.lab.results)

Every trial trains `spec.recipe` with what the trial varies (grid: parametrization, width, LR, seed; tune: LR, init
and multipliers, Tensor Programs V's space) and records that recipe, so `transfer` copies everything the proxy
trained with. A study lives in an RDB storage (`hf_mup.lab.storage`): running trials send a heartbeat; a trial whose
process was killed goes stale and is retried once, completed points are never rerun, so running the same command
again only runs what is missing. The spec is stored in the study: reopening it with another spec is an error.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..extras import require

require("sweep", "optuna", "sqlalchemy", what="hf_mup.lab.sweep (Optuna studies)")
import optuna  # noqa: E402 (after the check that names the extra)
from optuna.trial import TrialState  # noqa: E402

from ..errors import MuPError  # noqa: E402
from .data import Corpus, fingerprint, load_corpus  # noqa: E402
from .lm import evaluate, train_lm  # noqa: E402
from .recipe import ARCHS, Recipe  # noqa: E402
from .results import DIVERGED_VALUE, trial_rows  # noqa: E402
from .search import Reporter, make_sampler  # noqa: E402, F401 (sw.make_sampler: the CLI's, pipelines')
from .storage import GRACE, open_study, storage_of, trial_id  # noqa: E402

GRID_PARAMETRIZATIONS = ("mup", "sp")  # what a grid compares
MODES = ("grid", "tune")
# Tensor Programs V's space: LR, init std, embedding / output multipliers, attention temperature (log scales).
TUNE_SPACE = {"initializer_range": (2**-8, 2**-3), "input_mult": (2**-3, 2**5), "output_mult": (2**-3, 2**5),
              "attn_mult": (2**-3, 2**3)}
MULTIPLIERS = ("input_mult", "output_mult", "attn_mult")
CELL_KEYS = {"batch_size": "b", "tokens": "d", "timescale": "tau"}  # a grid's optional axes (grid_points), key tags
# Multipliers an architecture ignores, fixed at 1 and left out of its tune space. BERT sums its three embeddings into
# a LayerNorm, which undoes any common factor: input_mult has no effect there (MuPModel warns when it is set).
NO_EFFECT = {"bert": ("input_mult",)}

__all__ = ["MODES", "SweepSpec", "grid_points", "open_study", "parse_log2_lrs", "run_grid", "run_tune", "trial_rows"]


# ------------------------------------------------------------------------------------------------- inputs

def parse_log2_lrs(text: str) -> list[float]:
    """"-12:-4:1" (start:stop:step, inclusive) or "-9,-8.5,-8" into a list of log2 learning rates."""
    text = text.strip()
    if not text:
        return []
    try:
        values = ([float(v) for v in text.split(":")] if ":" in text
                  else [float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        raise MuPError(f"expected a log2-LR range like -12:-4:1 or a list like -8,-7.5,-7; got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise MuPError(f"log2 LRs must be finite numbers, got {text!r}.")
    if ":" not in text:
        return values
    if len(values) not in (2, 3):
        raise MuPError(f"log2-LR range {text!r}: expected start:stop or start:stop:step.")
    start, stop, step = (values + [1.0])[:3]
    if step <= 0:
        raise MuPError(f"log2-LR range {text!r}: the step must be positive.")
    return [start + i * step for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]


def parse_counts(text: str, what: str = "--tokens") -> list[float]:
    """"40k,80k,1.5M" (suffixes k, M, G; or plain numbers) into positive numbers, increasing."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            values.append(float(item[:-1]) * scale[item[-1].lower()] if item[-1].lower() in scale else float(item))
        except ValueError:
            raise MuPError(f"{what}: expected numbers like 40k,80k,1.5M; got {item!r}.") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values) or values != sorted(set(values)):
        raise MuPError(f"{what}: distinct positive numbers in increasing order, got {text!r}.")
    return values


def parse_axes(mode: str, batch_sizes: str | None, tokens: str | None,
               timescales: str | None) -> tuple[list[int], list[float], list[float]]:
    """`hf-mup sweep`'s --batch-sizes, --tokens and --timescales: grid axes only."""
    if mode != "grid" and (batch_sizes or tokens or timescales):
        raise MuPError("--batch-sizes, --tokens and --timescales are grid axes: use --mode grid (at one width: the "
                       "horizon grid hf-mup transfer --rule fitted reads).")
    return ([int(b) for b in parse_counts(batch_sizes, "--batch-sizes")] if batch_sizes else [],
            parse_counts(tokens, "--tokens") if tokens else [],
            parse_counts(timescales, "--timescales") if timescales else [])


def grid_points(widths: Sequence[int], log2_lrs: Sequence[float], parametrizations: Sequence[str],
                seeds: int, batch_sizes: Sequence[int] = (), tokens: Sequence[float] = (),
                timescales: Sequence[float] = ()) -> list[dict]:
    """Every (parametrization, width, log2 LR, seed) of the grid, validated; with `batch_sizes`, `tokens` (the
    horizon: steps = tokens / (batch · sequence length)) or `timescales` (AdamW's decay as a fraction of training),
    every point also at each of those: the grid `hf_mup.lab.scaling.fit_horizon` fits.

    Usage: `points = grid_points([64, 128, 256], parse_log2_lrs("-10:-4:1"), ["mup", "sp"], seeds=2)`
    """
    check_widths(widths)
    axes: dict[str, list[float]] = {"batch_size": [int(b) for b in batch_sizes],
                                    "tokens": [int(round(d)) for d in tokens], "timescale": [float(t) for t in timescales]}
    for name, values in axes.items():
        if values and (min(values) <= 0 or values != sorted(set(values))):
            raise MuPError(f"--{name.replace('_', '-')}s: distinct positive values in increasing order, got {values}.")
    cells: list[dict[str, float]] = [{}]
    for name, values in axes.items():
        cells = [{**c, name: v} for c in cells for v in values] if values else cells
    return [{**p, **c} for p in _grid_points(widths, log2_lrs, parametrizations, seeds) for c in cells]


def _grid_points(widths: Sequence[int], log2_lrs: Sequence[float], parametrizations: Sequence[str],
                 seeds: int) -> list[dict]:
    lrs = sorted({round(x, 6) for x in log2_lrs})
    if not lrs:
        raise MuPError("The log2-LR grid is empty: give e.g. --log2-lrs=-12:-4:1.")
    unknown = set(parametrizations) - set(GRID_PARAMETRIZATIONS)
    if unknown or not parametrizations:
        raise MuPError(f"--parametrization: unknown {sorted(unknown)}; use some of {', '.join(GRID_PARAMETRIZATIONS)}.")
    if seeds < 1:
        raise MuPError(f"--seeds must be at least 1, got {seeds}.")
    return [{"parametrization": p, "width": w, "log2_lr": x, "seed": s}
            for p in parametrizations for w in widths for x in lrs for s in range(seeds)]


def check_widths(widths: Sequence[int]) -> None:
    if not widths:
        raise MuPError("--widths is empty: give one or more widths in increasing order, e.g. 64,128,256.")
    if list(widths) != sorted(set(widths)) or min(widths) <= 0:
        raise MuPError(f"--widths must be distinct positive widths in increasing order, got {list(widths)}.")


def _axes(p: dict) -> dict:
    axes = [k for k in CELL_KEYS if k in p]
    return {"axes": axes} if axes else {}


def point_key(p: dict) -> str:
    cell = "".join(f"/{tag}{p[k]:g}" for k, tag in CELL_KEYS.items() if k in p)
    return f"{p['parametrization']}/w{p['width']}/lr{p['log2_lr']:g}/s{p['seed']}{cell}"



@dataclass(frozen=True)
class SweepSpec:
    """What a study is tied to: its mode, the recipe every trial starts from, the data, and (tune) the LR range.

    Usage: `SweepSpec("tune", Recipe(width=128, base_width=64), Corpus(), log2_lr_range=(-12, -4))`

    Grid: `recipe.width` is the smallest width of the grid; each point sets parametrization, width, LR and seed.
    Tune: `recipe.width` is the proxy's width; trials sample the LR in `log2_lr_range` and `TUNE_SPACE` (less the
    multipliers `NO_EFFECT` fixes at 1). `name`: the preset a pipeline made it for.
    """

    mode: str = "grid"
    recipe: Recipe = field(default_factory=Recipe)
    data: Corpus = field(default_factory=Corpus)
    log2_lr_range: tuple[float, float] = (-12.0, -4.0)
    name: str | None = None

    def __post_init__(self) -> None:
        r, d = self.recipe, self.data
        if self.mode not in MODES:
            raise MuPError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}.")
        ignored = [k for k in NO_EFFECT.get(r.arch, ()) if r.mup.get(k, 1.0) != 1.0]
        if ignored:
            raise MuPError(f"--{ignored[0].replace('_', '-')} has no effect on {r.arch} (its embeddings are summed into "
                           "a LayerNorm); leave it at 1.")
        if d.masked != (r.task == "masked_lm"):
            raise MuPError(f"a {r.arch} recipe trains a {r.task.replace('_', ' ')}: its Corpus needs masked="
                           f"{r.task == 'masked_lm'}.")
        if d.vocab_size != r.vocab_size:
            raise MuPError(f"the recipe's vocab_size {r.vocab_size} is not the corpus's {d.vocab_size} "
                           f"({d.tokenizer}): give both the same.")
        if r.base_width is None:
            raise MuPError("a sweep's recipe needs base_width (μP's base width; its SP trials ignore it).")
        if len(self.log2_lr_range) != 2:
            raise MuPError(f"log2_lr_range {self.log2_lr_range}: two numbers, low and high.")
        lo, hi = self.log2_lr_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise MuPError(f"log2_lr_range {self.log2_lr_range}: two finite numbers, low to high.")
        object.__setattr__(self, "log2_lr_range", (float(lo), float(hi)))

    @property
    def space(self) -> dict[str, tuple[float, float]]:
        """Tune mode's log-uniform ranges: log2 LR, init std and the multipliers the architecture uses."""
        return {"log2_lr": self.log2_lr_range,
                **{k: v for k, v in TUNE_SPACE.items() if k not in NO_EFFECT.get(self.recipe.arch, ())}}

    def to_dict(self) -> dict[str, Any]:
        out = {"mode": self.mode, "recipe": self.recipe.to_dict(), "data": self.data.to_dict(), "name": self.name}
        if self.mode == "tune":
            out["space"] = {k: list(v) for k, v in self.space.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepSpec:
        lr_range = d.get("space", {}).get("log2_lr", (-12.0, -4.0))
        return cls(d["mode"], Recipe.from_dict(d["recipe"]), Corpus.from_dict(d["data"]), tuple(lr_range), d.get("name"))

    def load_data(self, out: str | Path = ".") -> tuple[Any, Any]:
        """(train blocks, validation blocks) of the spec's corpus, in blocks of the recipe's sequence length."""
        train, val, _ = load_corpus(self.data, self.recipe.seq_len, out)
        return train, val

    def stamp(self, data: tuple[Any, ...]) -> dict[str, Any]:
        """What a study stores: the spec and a fingerprint of its data (other data is refused on reopening)."""
        return {**self.to_dict(), "data_hash": fingerprint(*data[:2])}

    def masking(self) -> dict[str, Any]:
        return self.data.masking()

    def grid_recipe(self, point: Mapping[str, Any]) -> Recipe:
        """What a grid point trains: the spec's recipe at the point's parametrization, width, LR and seed."""
        r = self.recipe.replace(parametrization=point["parametrization"], width=point["width"],
                                lr=2.0 ** point["log2_lr"], seed=point["seed"])
        if "batch_size" in point or "tokens" in point:
            batch = int(point.get("batch_size", r.batch_size))
            steps = max(1, round(point.get("tokens", r.tokens) / (batch * r.seq_len)))
            r = r.replace(batch_size=batch, steps=steps)
        if "timescale" in point:
            r = r.replace(weight_decay=0.0, weight_decay_timescale=float(point["timescale"]))
        return r

    def tune_recipe(self, hp: Mapping[str, float], seed: int = 0) -> Recipe:
        """What a tune trial trains: the spec's μP recipe with the sampled LR, init and multipliers (seed 0; a
        confirmation's other seeds, `hf_mup.lab.search.confirm_top`)."""
        mults = {k: hp[k] for k in MULTIPLIERS if k in hp}
        return self.recipe.replace(parametrization="mup", lr=2.0 ** hp["log2_lr"],
                                   initializer_range=hp["initializer_range"], mup=mults, seed=seed)


def check_grid(widths: Sequence[int], head_dim: int, base_width: int | None) -> None:
    """Refuse widths a sweep cannot train: each a multiple of the head size, none below the base width."""
    check_widths(widths)
    if (base_width or widths[0]) > widths[0] or any(w % head_dim for w in widths):
        raise MuPError(f"every width must be a multiple of --head-dim {head_dim}, and --base-width <= {widths[0]}.")


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise MuPError(f"--arch {arch!r} is not supported by the sweep; use one of {', '.join(ARCHS)} (causal LMs "
                       "GPT-2, Llama and Mixtral (MoE), masked LM BERT).")


def check_n_trials(n_trials: int) -> None:
    if n_trials < 1:
        raise MuPError(f"--n-trials must be at least 1, got {n_trials}.")


# -------------------------------------------------------------------------------------------------- trials

def _hparams(recipe: Recipe, log2_lr: float) -> dict[str, Any]:
    """The values a trial varies, as results list them: LR, init and (μP) the multipliers."""
    hp: dict[str, Any] = {"log2_lr": log2_lr, "initializer_range": recipe.initializer_range}
    if recipe.parametrization == "mup":
        hp.update({k: recipe.mup.get(k, 1.0) for k in MULTIPLIERS})
    return hp


def run_trial(spec: SweepSpec, recipe: Recipe, data: tuple, device: str = "cpu", progress: bool = False,
              desc: str = "", reporter: Reporter | None = None, eval_every: int = 0, resume: dict | None = None,
              until: int | None = None) -> dict[str, Any]:
    """Train one recipe; returns the user attrs a trial records (the recipe, losses, diverged, cost, timing). With a
    `reporter` (a pruned search) the validation loss goes to it every `eval_every` steps; a trial it stops returns
    what it ran: `pruned` (the step), its cost, its last loss. `until` / `resume`: a rung of successive halving
    (`hf_mup.lab.halving`): its cost is the steps it ran, and a paused one returns its `state` too."""
    model = recipe.build_model(device)
    r = train_lm(model, recipe, data[0], data[1], progress=progress, desc=desc, eval_every=eval_every,
                 on_eval=reporter, resume=resume, until=until, **spec.masking())
    return {"recipe": recipe.to_dict(), "hparams": _hparams(recipe, math.log2(recipe.lr)),
            "train_loss": r["final_train_loss"], "val_loss": r["final_val_loss"], "diverged": r["diverged"],
            "steps_run": r["steps_run"], "n_params": r["n_params"], "tokens": r["tokens"],
            "flops": 6 * r["n_params"] * r["tokens"], "seconds": round(r["seconds"], 3),
            **({"pruned": r["steps_run"]} if r["stopped"] else {}), **({"state": r["state"]} if "state" in r else {})}


def record(trial, attrs: dict) -> float:
    """Store `attrs` (run_trial's) as the trial's user attrs; returns its objective value."""
    for k, v in attrs.items():
        trial.set_user_attr(k, v if not (isinstance(v, float) and math.isinf(v)) else "inf")
    return DIVERGED_VALUE if attrs["diverged"] else attrs["val_loss"]


def grid_objective(spec: SweepSpec, data: tuple, device: str = "cpu", progress: bool = False):
    """The objective of grid mode: trains the point that was enqueued with the trial."""
    def objective(trial) -> float:
        key = trial.user_attrs.get("point")
        if key is None:  # a trial the sampler made when another worker took the last queued point
            raise optuna.TrialPruned("no grid point")
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number != trial.number and t.user_attrs.get("point") == key and (
                    t.state == TrialState.COMPLETE or t.number < trial.number):
                trial.set_user_attr("duplicate_of", t.number)
                raise optuna.TrialPruned(f"{key} is done by trial {t.number}")
        p = {"parametrization": trial.suggest_categorical("parametrization", GRID_PARAMETRIZATIONS),
             "width": trial.suggest_int("width", 1, 1 << 20), "log2_lr": trial.suggest_float("log2_lr", -64, 16),
             "seed": trial.suggest_int("seed", 0, 1 << 30)}
        axes = trial.user_attrs.get("axes", ())  # the enqueued point's optional axes (CELL_KEYS)
        if "batch_size" in axes:
            p["batch_size"] = trial.suggest_int("batch_size", 1, 1 << 30)
        if "tokens" in axes:
            p["tokens"] = trial.suggest_int("tokens", 1, 1 << 60)
        if "timescale" in axes:
            p["timescale"] = trial.suggest_float("timescale", 1e-9, 1e9, log=True)
        return record(trial, run_trial(spec, spec.grid_recipe(p), data, device, progress, desc=key))

    return objective


def sample_hparams(trial, spec: SweepSpec) -> dict[str, float]:
    """A tune trial's values from the spec's space (an enqueued trial's own values)."""
    hp = {k: trial.suggest_float(k, *v, log=k != "log2_lr") for k, v in spec.space.items()}
    hp.update({k: 1.0 for k in NO_EFFECT.get(spec.recipe.arch, ())})  # recorded, so transfer copies 1
    return hp


def tune_objective(spec: SweepSpec, data: tuple, device: str = "cpu", progress: bool = False, eval_every: int = 0):
    """The objective of tune mode: samples Tensor Programs V's space (the spec's) and trains the μP proxy; with
    `eval_every`, reports its validation loss to the study's pruner (`hf_mup.lab.search`), which may stop it."""

    def objective(trial) -> float:
        hp = sample_hparams(trial, spec)
        every = 0 if "confirm_of" in trial.user_attrs else eval_every  # a top trial's rerun (a seed): not pruned
        attrs = run_trial(spec, spec.tune_recipe(hp, trial.user_attrs.get("seed", 0)), data, device, progress,
                          f"trial {trial.number}", Reporter(trial) if every else None, every)
        value = record(trial, attrs)
        if "pruned" in attrs:  # its cost and last loss are recorded; Optuna marks it PRUNED
            raise optuna.TrialPruned(f"pruned at step {attrs['pruned']}")
        return value

    return objective


def fail_stale(study, adopted: set[int]) -> None:
    """Fail the trials of killed workers (optuna's heartbeat check; the callback queues each one again, once).

    A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial that optuna never sees
    as stale: give every RUNNING trial older than the grace period one heartbeat (once), so that it goes stale
    unless its worker is alive and beating.
    """
    storage = storage_of(study)
    now, grace = datetime.now(), GRACE * (storage.get_heartbeat_interval() or 1)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in adopted and (now - t.datetime_start).total_seconds() > grace:
            storage.record_heartbeat(trial_id(study, t.number))
            adopted.add(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def missing_points(study, points: list[dict]) -> list[dict]:
    """The points with no complete trial in `study` yet."""
    done = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return [p for p in points if point_key(p) not in done]


def run_grid(study, spec: SweepSpec, points: list[dict], data: tuple, device: str = "cpu", progress: bool = True,
             after_trial=None) -> None:
    """Run every point of the grid not yet completed in `study` (by any worker); wait for points others hold.

    Usage: `run_grid(study, spec, grid_points(...), spec.load_data())`
    """
    from tqdm.auto import tqdm

    S = TrialState
    keys = {point_key(p): p for p in points}
    objective = grid_objective(spec, data, device, progress)
    bar = tqdm(total=len(keys), desc="grid", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        fail_stale(study, adopted)  # killed workers' trials: FAIL, and a WAITING retry (once)
        trials = study.get_trials(deepcopy=False)
        held: dict = {}  # point -> its most advanced state, COMPLETE > RUNNING > WAITING
        for state in (S.WAITING, S.RUNNING, S.COMPLETE):
            held.update({t.user_attrs.get("point"): state for t in trials if t.state == state})
        done = sum(held.get(k) == S.COMPLETE for k in keys)
        bar.update(done - bar.n)
        for k, p in keys.items():
            if k not in held:
                study.enqueue_trial(p, user_attrs={"point": k, **_axes(p)})
                held[k] = S.WAITING
        if any(held[k] == S.WAITING for k in keys):
            study.optimize(objective, n_trials=1)
            if after_trial:
                after_trial(study)
        elif done == len(keys):
            break
        else:  # the rest is running elsewhere (or in a killed process, until its heartbeat goes stale)
            bar.set_postfix_str(f"waiting for {len(keys) - done} point(s) running elsewhere")
            time.sleep(storage_of(study).get_heartbeat_interval() or 1)
    bar.close()


def run_tune(study, spec: SweepSpec, n_trials: int, data: tuple, device: str = "cpu", progress: bool = True,
             after_trial=None, eval_every: int = 0) -> None:
    """Run tune trials until the study has `n_trials` finished ones, complete or pruned (counting other workers' and
    earlier runs'). `eval_every`: report the validation loss every that many steps to `study.pruner`
    (`hf_mup.lab.search.make_pruner`; 0: no intermediate reports, no pruning)."""
    from tqdm.auto import tqdm

    check_n_trials(n_trials)
    S = TrialState
    objective = tune_objective(spec, data, device, progress, eval_every)
    bar = tqdm(total=n_trials, desc="tune", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        fail_stale(study, adopted)
        states = [t.state for t in study.get_trials(deepcopy=False) if "confirm_of" not in t.user_attrs]
        done = states.count(S.COMPLETE) + states.count(S.PRUNED)
        bar.update(min(done, n_trials) - bar.n)
        if done >= n_trials:
            break
        if done + states.count(S.RUNNING) < n_trials or states.count(S.WAITING):
            study.optimize(objective, n_trials=1)
            if after_trial:
                after_trial(study)
        else:
            time.sleep(storage_of(study).get_heartbeat_interval() or 1)
    bar.close()


# ------------------------------------------------------------------------------------------------- timing

def estimate_seconds(spec: SweepSpec, points: list[dict], data: tuple, device: str = "cpu",
                     timed_steps: int = 3) -> dict:
    """Seconds per trial for each (parametrization, width), from `timed_steps` timed steps, and the grid's total.

    Usage: `est = estimate_seconds(spec, points, data); est["total_seconds"]`
    """
    per: dict[str, float] = {}
    for p in {(q["parametrization"], q["width"]) for q in points}:
        recipe = spec.grid_recipe({"parametrization": p[0], "width": p[1], "log2_lr": -10.0, "seed": 0})
        start = time.perf_counter()
        model = recipe.build_model(device)
        built = time.perf_counter() - start
        train_lm(model, recipe.replace(steps=1), data[0], None, **spec.masking())  # warm-up
        r = train_lm(model, recipe.replace(steps=timed_steps), data[0], None, **spec.masking())
        start = time.perf_counter()
        evaluate(model, data[1], **spec.masking())
        per[f"{p[0]}/w{p[1]}"] = built + r["seconds"] / timed_steps * recipe.steps + time.perf_counter() - start
    total = sum(per[f"{q['parametrization']}/w{q['width']}"] for q in points)
    return {"seconds_per_trial": {k: round(v, 2) for k, v in sorted(per.items())}, "total_seconds": round(total, 1)}
