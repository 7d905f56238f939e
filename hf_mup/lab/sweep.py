"""Hyperparameter sweeps as Optuna studies: the LR-transfer grid (Figure 1 of Tensor Programs V) and proxy tuning.

Usage:
    spec = make_spec("grid", steps=150, output_mult=8.0, base_width=64)
    study = open_study("lr_transfer", "sqlite:///out/sweep.db", spec)
    run_grid(study, spec, grid_points([64, 128], [-8, -7, -6], ["mup", "sp"], seeds=2))
    report(study, "out")          # results.csv, results.json, lr_transfer.png

A study lives in an RDB storage (SQLite by default, PostgreSQL etc. for many machines). Running trials send a
heartbeat; a trial whose process was killed goes stale and is retried once (`RetryHeartbeatStaleTrialCallback`),
completed points are never rerun, so running the same command again only runs what is missing. The sweep's spec
(model shape, steps, data, μP settings) is stored in the study: reopening it with another spec is an error.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import time
import warnings
import weakref
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..extras import require

require("sweep", "optuna", "sqlalchemy", what="hf_mup.lab.sweep (Optuna studies)")
import optuna  # noqa: E402 (after the check that names the extra)
from optuna.trial import TrialState  # noqa: E402

from ..errors import MuPError  # noqa: E402
from . import data as hf_data  # noqa: E402
from .lm import build_lm, evaluate, lm_config, train_lm  # noqa: E402

ARCHS = ("gpt2", "bert", "llama")  # BERT trains as a masked LM, the others as causal LMs (hf_mup.lab.lm.train_lm)
PARAMETRIZATIONS = ("mup", "sp")
MODES = ("grid", "tune")
# Tensor Programs V's space: LR, init std, embedding / output multipliers, attention temperature (log scales).
TUNE_SPACE = {"initializer_range": (2**-8, 2**-3), "input_mult": (2**-3, 2**5), "output_mult": (2**-3, 2**5),
              "attn_mult": (2**-3, 2**3)}
# Multipliers an architecture ignores, fixed at 1 and left out of its tune space. BERT sums its three embeddings into
# a LayerNorm, which undoes any common factor: input_mult has no effect there (MuPModel warns when it is set).
NO_EFFECT = {"bert": ("input_mult",)}
DIVERGED_VALUE = 1e3  # the objective of a diverged trial (its losses are recorded as +inf)
GRACE = 3  # a trial whose heartbeat is older than GRACE × the heartbeat interval is stale
STATES = ("COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL")
# study -> the RDBStorage that open_study / load_study made for it (optuna has no public study.storage)
_STORAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def grid_points(widths: Sequence[int], log2_lrs: Sequence[float], parametrizations: Sequence[str],
                seeds: int) -> list[dict]:
    """Every (parametrization, width, log2 LR, seed) of the grid, validated.

    Usage: `points = grid_points([64, 128, 256], parse_log2_lrs("-10:-4:1"), ["mup", "sp"], seeds=2)`
    """
    check_widths(widths)
    lrs = sorted({round(x, 6) for x in log2_lrs})
    if not lrs:
        raise MuPError("The log2-LR grid is empty: give e.g. --log2-lrs=-12:-4:1.")
    unknown = set(parametrizations) - set(PARAMETRIZATIONS)
    if unknown or not parametrizations:
        raise MuPError(f"--parametrization: unknown {sorted(unknown)}; use some of {', '.join(PARAMETRIZATIONS)}.")
    if seeds < 1:
        raise MuPError(f"--seeds must be at least 1, got {seeds}.")
    return [{"parametrization": p, "width": w, "log2_lr": x, "seed": s}
            for p in parametrizations for w in widths for x in lrs for s in range(seeds)]


def check_widths(widths: Sequence[int]) -> None:
    if not widths:
        raise MuPError("--widths is empty: give one or more widths in increasing order, e.g. 64,128,256.")
    if list(widths) != sorted(set(widths)) or min(widths) <= 0:
        raise MuPError(f"--widths must be distinct positive widths in increasing order, got {list(widths)}.")


def point_key(p: dict) -> str:
    return f"{p['parametrization']}/w{p['width']}/lr{p['log2_lr']:g}/s{p['seed']}"


def make_spec(mode: str = "grid", arch: str = "gpt2", layers: int = 2, head_dim: int = 16, seq_len: int = 64,
              steps: int = 150, batch_size: int = 16, warmup_frac: float = 0.1, final_lr_frac: float = 0.1,
              clip: float = 1.0, base_width: int = 64, input_mult: float = 1.0, output_mult: float = 1.0,
              attn_mult: float = 1.0, initializer_range: float = 0.02, tokenizer: str = "bpe",
              vocab_size: int = 2048, train_file: str | None = None, val_file: str | None = None,
              dataset: str | None = None, dataset_config: str | None = None, train_chars: int | None = None,
              val_blocks: int = 128, proxy_width: int | None = None,
              log2_lr_range: tuple[float, float] = (-12.0, -4.0), options: dict | None = None) -> dict:
    """The settings a study is tied to (everything but the grid points / trial count), validated.

    Usage: `spec = make_spec("grid", steps=150, base_width=64, output_mult=8.0, tokenizer="bytes")`

    `arch` "bert" is a masked-LM sweep: its vocabulary has a [MASK] token (`mask_id`; bytes: id 256 of 257, BPE: id
    1, after <|endoftext|>, inside `vocab_size`), and `special_ids` are never masking targets; see `masking`.
    `options` (the ablations of `benchmarks/lingle_ablations.py`), each optional: "config" (transformers config
    fields, e.g. {"hidden_act": "relu2", "num_key_value_heads": 1}), "mup" (`MuPConfig` fields), "optimizer"
    ("adamw" or "lion"), "betas", "weight_decay", "weight_decay_mode", "decay" ("cosine" or "linear"), "sp_init"
    ("fixed": SP trials init every weight with std `initializer_range`; "fan_in": with std 1/√width).
    """
    if mode not in MODES:
        raise MuPError(f"--mode {mode!r}: use one of {', '.join(MODES)}.")
    if arch not in ARCHS:
        raise MuPError(f"--arch {arch!r} is not supported by the sweep; use one of {', '.join(ARCHS)} (causal LMs "
                       "GPT-2 and Llama, masked LM BERT).")
    mults = {"input_mult": input_mult, "output_mult": output_mult, "attn_mult": attn_mult}
    ignored = [k for k in NO_EFFECT.get(arch, ()) if mults[k] != 1.0]
    if ignored:
        raise MuPError(f"--{ignored[0].replace('_', '-')} has no effect on {arch} (its embeddings are summed into a "
                       "LayerNorm); leave it at 1.")
    if tokenizer not in ("bpe", "bytes"):
        raise MuPError(f"--tokenizer {tokenizer!r}: use bpe or bytes.")
    if steps < 1 or batch_size < 1 or layers < 1 or seq_len < 2 or val_blocks < 1:
        raise MuPError("--steps, --batch-size, --layers, --val-blocks must be positive and --seq-len at least 2.")
    if base_width <= 0 or base_width % head_dim:
        raise MuPError(f"--base-width {base_width} must be a positive multiple of --head-dim {head_dim}.")
    spec = {"mode": mode, "arch": arch, "layers": layers, "head_dim": head_dim, "seq_len": seq_len, "steps": steps,
            "batch_size": batch_size, "warmup_frac": warmup_frac, "final_lr_frac": final_lr_frac, "clip": clip,
            "base_width": base_width, "input_mult": input_mult, "output_mult": output_mult, "attn_mult": attn_mult,
            "initializer_range": initializer_range, "tokenizer": tokenizer,
            "vocab_size": 256 if tokenizer == "bytes" else vocab_size, "train_file": train_file,
            "val_file": val_file, "dataset": dataset, "dataset_config": dataset_config, "train_chars": train_chars,
            "val_blocks": val_blocks}
    if arch == "bert":  # masked LM: bytes get a 257th id for [MASK]; the BPE holds [MASK] as its special token 1
        on_bytes = tokenizer == "bytes"
        spec.update(vocab_size=spec["vocab_size"] + on_bytes, mask_id=256 if on_bytes else 1,
                    special_ids=[] if on_bytes else [0])
    if options:
        spec["options"] = check_options(options)
    if mode == "tune":
        if proxy_width is None:
            raise MuPError("tune mode tunes at one proxy width: give exactly one width, e.g. --widths 128.")
        spec["proxy_width"] = proxy_width
        spec["space"] = {"log2_lr": list(log2_lr_range),
                         **{k: list(v) for k, v in TUNE_SPACE.items() if k not in NO_EFFECT.get(arch, ())}}
        for k in ("input_mult", "output_mult", "attn_mult", "initializer_range"):
            spec.pop(k)  # tuned (or, in NO_EFFECT, fixed at 1)
    return spec


OPTION_KEYS = ("config", "mup", "optimizer", "betas", "weight_decay", "weight_decay_mode", "decay", "sp_init")


def check_options(options: dict) -> dict:
    """`make_spec`'s `options`, validated (JSON-ready)."""
    from ..config import MuPConfig
    from .lm import DECAYS, OPTIMIZERS

    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise MuPError(f"unknown sweep option(s) {sorted(unknown)}: use {', '.join(OPTION_KEYS)}.")
    bad = set(options.get("mup", {})) - set(MuPConfig.field_names())
    if bad:
        raise MuPError(f"unknown μP setting(s) {sorted(bad)} in options['mup']: use {', '.join(MuPConfig.field_names())}.")
    MuPConfig.from_dict({"base_hidden_size": 1, **options.get("mup", {})})  # values checked now, not at trial 1
    if (options.get("optimizer", "adamw") not in OPTIMIZERS or options.get("decay", "cosine") not in DECAYS
            or options.get("sp_init", "fixed") not in ("fixed", "fan_in")):
        raise MuPError(f"options: optimizer one of {OPTIMIZERS}, decay one of {DECAYS}, sp_init fixed or fan_in.")
    return json.loads(json.dumps(options))


def masking(spec: dict) -> dict:
    """The masked-LM keywords of `hf_mup.lab.lm.train_lm` / `evaluate` for a spec (none for a causal LM)."""
    return {k: spec[k] for k in ("mask_id", "special_ids") if k in spec}


# --------------------------------------------------------------------------------------------------- data


def _text_to_file(dataset: str, config: str | None, column: str, out: Path) -> tuple[Path, Path]:
    """A Hub dataset's train and validation text written to files in `out` (online users)."""
    from datasets import load_dataset

    raw = load_dataset(dataset, config)
    val_split = next((s for s in ("validation", "valid", "test") if s in raw), None)
    if "train" not in raw or val_split is None:
        raise MuPError(f"dataset {dataset!r} needs a train and a validation (or test) split; it has {list(raw)}.")
    paths = []
    for split, name in (("train", "train.txt"), (val_split, "val.txt")):
        path = out / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for text in raw[split][column]:
                f.write(text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _byte_blocks(path: str, block: int, max_chars: int | None, max_blocks: int | None = None) -> torch.Tensor:
    text = "".join(hf_data.read_lines([path], max_chars)).encode("utf-8")
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = len(ids) // block if max_blocks is None else min(len(ids) // block, max_blocks)
    if n == 0:
        raise MuPError(f"{path} has too little text for one block of {block} tokens.")
    return ids[: n * block].view(n, block)


def load_data(spec: dict, out: str | Path = ".", text_column: str = "text", with_tokenizer: bool = False) -> tuple:
    """(train_blocks, val_blocks) for `spec`: local files (default: WikiText-2 valid.txt / test.txt) or a Hub dataset;
    with `with_tokenizer`, also the BPE tokenizer that made them (None for bytes).

    Usage: `train, val = load_data(make_spec(tokenizer="bytes"))`
    """
    if spec["dataset"]:
        train_file, val_file = _text_to_file(spec["dataset"], spec["dataset_config"], text_column, Path(out))
    else:  # None: the WikiText-2 shipped with hf_mup (kept out of the spec, so machines may keep it elsewhere)
        train_file = spec["train_file"] or hf_data.wikitext_dir() / "valid.txt"
        val_file = spec["val_file"] or hf_data.wikitext_dir() / "test.txt"
    for path in (train_file, val_file):
        if not Path(path).is_file():
            raise MuPError(f"data file {path} not found.")
    block, n_val = spec["seq_len"], spec["val_blocks"]
    # Enough text for n_val blocks without tokenizing a whole file; at least 100k characters, because the cap is
    # applied per line and WikiText has paragraphs of thousands (the first n_val blocks are the same either way).
    val_chars = max(n_val * block * 8, 100_000)
    if spec["tokenizer"] == "bytes":
        blocks = (_byte_blocks(train_file, block, spec["train_chars"]), _byte_blocks(val_file, block, val_chars, n_val))
        return (*blocks, None) if with_tokenizer else blocks
    specials = [hf_data.MASK_TOKEN] if "mask_id" in spec else []
    tok = hf_data.train_tokenizer([train_file], vocab_size=spec["vocab_size"], max_chars=spec["train_chars"],
                                  special_tokens=specials)
    if len(tok) != spec["vocab_size"]:
        raise MuPError(f"the BPE trained on {train_file} reached {len(tok)} tokens, not --vocab-size "
                       f"{spec['vocab_size']}: use a smaller --vocab-size or more text.")
    if specials and tok.mask_token_id != spec["mask_id"]:
        raise MuPError(f"the BPE's {hf_data.MASK_TOKEN} has id {tok.mask_token_id}, the spec says {spec['mask_id']}.")
    try:
        blocks = (hf_data.token_blocks([train_file], tok, block, max_chars=spec["train_chars"]),
                  hf_data.token_blocks([val_file], tok, block, max_blocks=n_val, max_chars=val_chars))
    except ValueError as e:
        raise MuPError(str(e)) from None
    return (*blocks, tok) if with_tokenizer else blocks


def fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- study


STORAGE_HELP = ("use sqlite:///PATH/sweep.db, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE for many machines "
                "(pip install 'hf_mup[postgres]')")
# the pip package of each Python DB driver SQLAlchemy may ask for (a module not listed is its own package name)
_DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                    "pymysql": "PyMySQL", "mysql": "mysql-connector-python", "cx_Oracle": "oracledb"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _storage_url(url: str):
    """`url` parsed (a SQLAlchemy `URL`), or a `MuPError` for text that is no database URL or an unknown scheme."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise MuPError(f"--storage {safe_url(url)!r} is not a database URL: {STORAGE_HELP}.") from None
    try:
        u.get_dialect()
    except NoSuchModuleError:
        raise MuPError(f"--storage {safe_url(url)}: unknown database scheme {u.drivername!r}; {STORAGE_HELP}.") from None
    return u


def _storage_engine_kwargs(u) -> dict:
    if u.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}  # seconds a worker waits for another's write lock
    kwargs: dict = {"pool_pre_ping": True}  # a long sweep outlives idle connections that the server or network drops
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("psycopg", "psycopg2") \
            and "connect_timeout" not in u.query:
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    return kwargs


def _storage_error(url: str, u, e: BaseException) -> MuPError | None:
    """The one-line `MuPError` (naming the fix) for `e`, raised while opening the storage at `url`; None: not ours."""
    import sqlalchemy.exc as sa_exc

    safe, backend = safe_url(url), u.get_backend_name()
    if isinstance(e, ImportError):  # optuna re-raises the driver's ImportError as a bare "Failed to import ..."
        missing = e.__cause__ if isinstance(e.__cause__, ImportError) else e
        module = (getattr(missing, "name", None) or "").split(".")[0] or "its driver"
        if backend == "postgresql" and u.drivername in ("postgresql", "postgresql+psycopg"):
            fix = "pip install 'hf_mup[postgres]' (psycopg 3 and SQLAlchemy >= 2.1, which maps postgresql:// to it)"
        else:
            fix = f"pip install {_DRIVER_PACKAGES.get(module, module)}"
            if backend == "postgresql":
                fix += ", or use a plain postgresql:// URL with pip install 'hf_mup[postgres]'"
        return MuPError(f"the storage {safe} needs the Python database driver {module!r}, which is not installed: "
                        f"{fix}.")
    reason = _first_line(getattr(e, "orig", None) or e)
    if u.password:
        reason = reason.replace(str(u.password), "***")
    if isinstance(e, sa_exc.DBAPIError):  # the driver's own error: connection, login, database, permissions
        if backend == "sqlite":
            return MuPError(f"cannot open the SQLite storage {safe}: {reason}. Check that its folder exists and is "
                            "writable.")
        where = f"{u.host or 'localhost'}:{u.port or _DEFAULT_PORTS.get(backend, '?')}" + ("" if u.host else " (socket)")
        low = reason.lower()
        if "authentication" in low or "password" in low or ("role" in low and "does not exist" in low):
            return MuPError(f"the database server {where} refused user {u.username!r} ({reason}): check the user and "
                            f"password in --storage {safe}.")
        if "database" in low and "does not exist" in low:
            return MuPError(f"the database server {where} has no database {u.database!r} ({reason}): create it "
                            f"(e.g. createdb -h {u.host or 'localhost'} -p {u.port or _DEFAULT_PORTS.get(backend, '?')}"
                            f" -U {u.username or 'USER'} {u.database}) or fix --storage {safe}.")
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return MuPError(f"cannot reach the database server {where} for --storage {safe}: {reason}. Start the "
                            "server, or fix the host and port (every worker must reach it).")
        return MuPError(f"the database server {where} refused to set up the study tables for --storage {safe}: "
                        f"{reason}.")
    if isinstance(e, RuntimeError) and "optuna storage upgrade" in str(e):  # a schema from another optuna version
        return MuPError(f"--storage {safe}: {reason} Run: optuna storage upgrade --storage URL.")
    return None


_INIT_LOCK = 0x68665F6D7570  # "hf_mup": the PostgreSQL advisory lock key of `_alone`


def _alone(url: str, u, kwargs: dict, open_storage):
    """`open_storage()` while no other hf_mup worker opens the same PostgreSQL database.

    Workers started together on a fresh database would all create optuna's tables at once, and all but one fail
    (duplicate key value violates unique constraint "pg_type_typname_nsp_index"): a session advisory lock, held on
    a connection of its own, makes them take turns; the server drops it if the worker dies.
    """
    if u.get_backend_name() != "postgresql":
        return open_storage()  # SQLite locks its file; others: optuna as it is
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=kwargs.get("connect_args", {}))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _INIT_LOCK})
            conn.commit()
            try:
                return open_storage()
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _INIT_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def _storage(url: str, heartbeat: int):
    """The `RDBStorage` (heartbeats every `heartbeat` s) at `url`; every way it fails to open is one `MuPError` line."""
    import sqlalchemy.exc as sa_exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise MuPError(f"--heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}.")
    u = _storage_url(url)
    kwargs = _storage_engine_kwargs(u)
    try:
        return _alone(url, u, kwargs, lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=GRACE * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        ))
    except (ImportError, sa_exc.SQLAlchemyError, RuntimeError) as e:
        error = _storage_error(url, u, e)
        if error is None:
            raise
        raise error from None


def default_storage(out: str | Path) -> str:
    path = Path(out).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'sweep.db'}"


def open_study(name: str, storage: str, spec: dict, heartbeat: int = 10, sampler=None):
    """Create the study `name` with `spec`, or reopen it; a study made with another spec is a `MuPError`.

    Usage: `study = open_study("lr_transfer", "sqlite:///out/sweep.db", spec)`
    """
    st = _storage(storage, heartbeat)
    study = optuna.create_study(study_name=name, storage=st, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    _STORAGES[study] = st
    if study.user_attrs.get("spec") is None:
        study.set_user_attr("spec", spec)  # workers creating the study together: one insert wins, the rest compare
    old, new = study.user_attrs["spec"], json.loads(json.dumps(spec))  # as stored: tuples read back as lists
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise MuPError(f"study {name!r} was made with {key}={old.get(key)!r}; you asked {key}={spec.get(key)!r}: "
                           "use another --study name (or the study's own settings).")
    return study


def load_study(name: str, storage: str, heartbeat: int = 10):
    """An existing study, with a clear error listing the studies in `storage` when there is none."""
    st = _storage(storage, heartbeat)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if name not in names:
        raise MuPError(f"no study {name!r} in {safe_url(storage)}; it has {names or 'none'}.")
    study = optuna.load_study(study_name=name, storage=st)
    _STORAGES[study] = st
    return study


def storage_of(study) -> optuna.storages.RDBStorage:
    """The `RDBStorage` (with heartbeats) behind a study that `open_study` or `load_study` returned."""
    try:
        return _STORAGES[study]
    except KeyError:
        raise MuPError("hf_mup sweeps need a study from hf_mup.lab.sweep.open_study or load_study (an RDB storage "
                       "with heartbeats).") from None


def trial_id(study, number: int) -> int:
    """The storage's id of trial `number` of `study` (what `RDBStorage.record_heartbeat` takes)."""
    storage = storage_of(study)
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def safe_url(url: str) -> str:
    """`url` with its password masked (***), for messages; text SQLAlchemy cannot parse is masked all the same."""
    import re

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^/@:]*:)[^@]*@", r"\1***@", url)


# -------------------------------------------------------------------------------------------------- trials


def build(spec: dict, width: int, parametrization: str, hp: dict, seed: int, device: str = "cpu"):
    """(model, optimizer groups) for one trial: SP is the stock model, μP via `MuPModel` with the spec's base width."""
    opts = spec.get("options", {})
    std = width**-0.5 if parametrization == "sp" and opts.get("sp_init") == "fan_in" else hp["initializer_range"]
    config = lm_config(spec["arch"], width, spec["layers"], spec["head_dim"], spec["seq_len"], spec["vocab_size"],
                       initializer_range=std, **opts.get("config", {}))
    mup = {**opts.get("mup", {}), **{k: hp[k] for k in ("input_mult", "output_mult", "attn_mult") if k in hp}}
    return build_lm(config, parametrization, 2.0 ** hp["log2_lr"], spec["base_width"], seed=seed, device=device,
                    optimizer=opts.get("optimizer", "adamw"), weight_decay=opts.get("weight_decay", 0.0),
                    weight_decay_mode=opts.get("weight_decay_mode", "width_independent"),
                    **(mup if parametrization != "sp" else {}))


def run_trial(spec: dict, data: tuple, width: int, parametrization: str, hp: dict, seed: int,
              device: str = "cpu", progress: bool = False, desc: str = "") -> dict:
    """Train one point; returns the user attrs a trial records (losses, diverged, cost, timing)."""
    model, groups = build(spec, width, parametrization, hp, seed, device)
    opts = spec.get("options", {})
    r = train_lm(model, groups, data[0], data[1], spec["steps"], spec["batch_size"], warmup_frac=spec["warmup_frac"],
                 final_lr_frac=spec["final_lr_frac"], clip=spec["clip"], seed=seed, progress=progress, desc=desc,
                 optimizer=opts.get("optimizer", "adamw"), decay=opts.get("decay", "cosine"),
                 weight_decay=opts.get("weight_decay", 0.0), **({"betas": tuple(opts["betas"])} if "betas" in opts else {}),
                 **masking(spec))
    return {"hparams": hp, "train_loss": r["final_train_loss"], "val_loss": r["final_val_loss"],
            "diverged": r["diverged"], "steps_run": r["steps_run"], "n_params": r["n_params"], "tokens": r["tokens"],
            "flops": 6 * r["n_params"] * r["tokens"], "seconds": round(r["seconds"], 3)}


def _record(trial, attrs: dict) -> float:
    for k, v in attrs.items():
        trial.set_user_attr(k, v if not (isinstance(v, float) and math.isinf(v)) else "inf")
    return DIVERGED_VALUE if attrs["diverged"] else attrs["val_loss"]


def grid_hparams(spec: dict, parametrization: str, log2_lr: float) -> dict:
    """What a grid point trains with: its LR, the spec's init and, under μP, the spec's multipliers."""
    hp = {"log2_lr": log2_lr, "initializer_range": spec["initializer_range"]}
    if parametrization == "mup":
        hp.update({k: spec[k] for k in ("input_mult", "output_mult", "attn_mult")})
    return hp


def grid_objective(spec: dict, data: tuple, device: str = "cpu", progress: bool = False):
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
        p = {"parametrization": trial.suggest_categorical("parametrization", PARAMETRIZATIONS),
             "width": trial.suggest_int("width", 1, 1 << 20), "log2_lr": trial.suggest_float("log2_lr", -64, 16),
             "seed": trial.suggest_int("seed", 0, 1 << 30)}
        hp = grid_hparams(spec, p["parametrization"], p["log2_lr"])
        return _record(trial, run_trial(spec, data, p["width"], p["parametrization"], hp, p["seed"], device,
                                        progress, desc=key))

    return objective


def tune_objective(spec: dict, data: tuple, device: str = "cpu", progress: bool = False):
    """The objective of tune mode: samples Tensor Programs V's space (the spec's) and trains the μP proxy."""

    def objective(trial) -> float:
        space = spec["space"]
        hp = {"log2_lr": trial.suggest_float("log2_lr", *space["log2_lr"])}
        for k in (k for k in space if k != "log2_lr"):
            hp[k] = trial.suggest_float(k, *space[k], log=True)
        hp.update({k: 1.0 for k in NO_EFFECT.get(spec["arch"], ())})  # recorded, so transfer copies 1
        return _record(trial, run_trial(spec, data, spec["proxy_width"], "mup", hp, seed=0, device=device,
                                        progress=progress, desc=f"trial {trial.number}"))

    return objective


def _fail_stale(study, adopted: set[int]) -> None:
    """Fail the trials of killed workers (optuna's heartbeat check; the callback queues each one again, once).

    A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial that optuna never sees
    as stale: give every RUNNING trial older than the grace period one heartbeat (once), so that it goes stale
    unless its worker is alive and beating.
    """
    storage = storage_of(study)
    now, grace = datetime.now(), GRACE * storage.get_heartbeat_interval()
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


def run_grid(study, spec: dict, points: list[dict], data: tuple, device: str = "cpu", progress: bool = True,
             after_trial=None) -> None:
    """Run every point of the grid not yet completed in `study` (by any worker); wait for points others hold.

    Usage: `run_grid(study, spec, grid_points(...), load_data(spec))`
    """
    from tqdm.auto import tqdm

    S = TrialState
    keys = {point_key(p): p for p in points}
    objective = grid_objective(spec, data, device, progress)
    bar = tqdm(total=len(keys), desc="grid", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        _fail_stale(study, adopted)  # killed workers' trials: FAIL, and a WAITING retry (once)
        trials = study.get_trials(deepcopy=False)
        held: dict = {}  # point -> its most advanced state, COMPLETE > RUNNING > WAITING
        for state in (S.WAITING, S.RUNNING, S.COMPLETE):
            held.update({t.user_attrs.get("point"): state for t in trials if t.state == state})
        done = sum(held.get(k) == S.COMPLETE for k in keys)
        bar.update(done - bar.n)
        for k, p in keys.items():
            if k not in held:
                study.enqueue_trial(p, user_attrs={"point": k})
                held[k] = S.WAITING
        if any(held[k] == S.WAITING for k in keys):
            study.optimize(objective, n_trials=1)
            if after_trial:
                after_trial(study)
        elif done == len(keys):
            break
        else:  # the rest is running elsewhere (or in a killed process, until its heartbeat goes stale)
            bar.set_postfix_str(f"waiting for {len(keys) - done} point(s) running elsewhere")
            time.sleep(storage_of(study).get_heartbeat_interval())
    bar.close()


def run_tune(study, spec: dict, n_trials: int, data: tuple, device: str = "cpu", progress: bool = True,
             after_trial=None) -> None:
    """Run tune trials until the study has `n_trials` complete ones (counting other workers' and earlier runs')."""
    from tqdm.auto import tqdm

    if n_trials < 1:
        raise MuPError(f"--n-trials must be at least 1, got {n_trials}.")
    S = TrialState
    objective = tune_objective(spec, data, device, progress)
    bar = tqdm(total=n_trials, desc="tune", disable=not progress, dynamic_ncols=True)
    adopted: set[int] = set()
    while True:
        _fail_stale(study, adopted)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done = states.count(S.COMPLETE)
        bar.update(min(done, n_trials) - bar.n)
        if done >= n_trials:
            break
        if done + states.count(S.RUNNING) < n_trials or states.count(S.WAITING):
            study.optimize(objective, n_trials=1)
            if after_trial:
                after_trial(study)
        else:
            time.sleep(storage_of(study).get_heartbeat_interval())
    bar.close()


def make_sampler(name: str, seed: int, n_existing: int):
    seed = seed + n_existing  # a resumed sweep must not replay the first run's random draws
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise MuPError(f"--sampler {name!r}: use tpe or random.")


# ------------------------------------------------------------------------------------------------- timing


def estimate_seconds(spec: dict, points: list[dict], data: tuple, device: str = "cpu", timed_steps: int = 3) -> dict:
    """Seconds per trial for each (parametrization, width), from `timed_steps` timed steps, and the grid's total.

    Usage: `est = estimate_seconds(spec, points, data); est["total_seconds"]`
    """
    per: dict[str, float] = {}
    for p in {(q["parametrization"], q["width"]) for q in points}:
        hp = {"log2_lr": -10.0, "initializer_range": spec.get("initializer_range", 0.02), "input_mult": 1.0,
              "output_mult": 1.0, "attn_mult": 1.0}
        start = time.perf_counter()
        model, groups = build(spec, p[1], p[0], hp, 0, device)
        built = time.perf_counter() - start
        train_lm(model, groups, data[0], None, 1, spec["batch_size"], **masking(spec))  # warm-up
        r = train_lm(model, groups, data[0], None, timed_steps, spec["batch_size"], **masking(spec))
        start = time.perf_counter()
        evaluate(model, data[1], **masking(spec))
        per[f"{p[0]}/w{p[1]}"] = built + r["seconds"] / timed_steps * spec["steps"] + time.perf_counter() - start
    total = sum(per[f"{q['parametrization']}/w{q['width']}"] for q in points)
    return {"seconds_per_trial": {k: round(v, 2) for k, v in sorted(per.items())}, "total_seconds": round(total, 1)}


# ------------------------------------------------------------------------------------------------ results


def trial_rows(study) -> list[dict]:
    """One flat dict per trial (any state): its point or tuned values and what it recorded."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a, hp = t.user_attrs, t.user_attrs.get("hparams", {})
        row = {"number": t.number, "state": t.state.name, "parametrization": t.params.get("parametrization", "mup"),
               "width": t.params.get("width", study.user_attrs["spec"].get("proxy_width")),
               "seed": t.params.get("seed", 0), "log2_lr": t.params.get("log2_lr")}
        row["lr"] = 2.0 ** row["log2_lr"] if row["log2_lr"] is not None else None
        for k in ("initializer_range", "input_mult", "output_mult", "attn_mult"):
            row[k] = hp.get(k)
        for k in ("train_loss", "val_loss"):
            v = a.get(k)
            row[k] = math.inf if v == "inf" else v
        for k in ("diverged", "steps_run", "n_params", "tokens", "flops", "seconds"):
            row[k] = a.get(k)
        row["value"] = t.value
        rows.append(row)
    return rows


def trial_line(study) -> str:
    """One line on the study's latest finished trial, for logs without progress bars.

    Usage: `run_tune(..., progress=False, after_trial=lambda st: print(trial_line(st)))`
    """
    finished = [r for r in trial_rows(study) if r["state"] in ("COMPLETE", "FAIL")]
    if not finished:
        return f"study {study.study_name!r}: no finished trial yet"
    r = max(finished, key=lambda r: r["number"])
    done = sum(x["state"] == "COMPLETE" for x in finished)
    point = f"{r['parametrization']} width {r['width']} seed {r['seed']}, log2 LR {r['log2_lr']:.2f}" \
        if r["log2_lr"] is not None else f"width {r['width']}"
    if r["state"] != "COMPLETE":
        result = "failed"
    elif r["diverged"]:
        result = "diverged"
    else:
        result = f"train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}"
    seconds = f" ({r['seconds']:.0f} s)" if r["seconds"] is not None else ""
    return f"trial {r['number']} ({point}): {result}{seconds}; {done} complete"


def lr_optima(rows: list[dict], metric: str = "train_loss") -> dict:
    """Per parametrization: the seed-mean loss curve of each width, its argmin log2 LR, and the drift across widths."""
    out: dict[str, Any] = {}
    done = [r for r in rows if r["state"] == "COMPLETE"]
    for param in sorted({r["parametrization"] for r in done}):
        curves: dict[int, dict[float, list[float]]] = {}
        seen = set()
        for r in sorted(done, key=lambda r: r["number"]):
            key = (r["width"], r["log2_lr"], r["seed"])
            if r["parametrization"] != param or key in seen:
                continue
            seen.add(key)  # a point run twice (a race between workers) counts once
            curves.setdefault(r["width"], {}).setdefault(r["log2_lr"], []).append(r[metric])
        widths = {}
        for w, curve in sorted(curves.items()):
            mean = {x: sum(v) / len(v) for x, v in sorted(curve.items())}
            finite = {x: m for x, m in mean.items() if math.isfinite(m)}
            best = min(finite, key=finite.get) if finite else None
            widths[w] = {"log2_lr": best, "loss": finite.get(best), "n_seeds": min(map(len, curve.values())),
                         "curve": {f"{x:g}": (m if math.isfinite(m) else None) for x, m in mean.items()}}
        argmins = [v["log2_lr"] for v in widths.values() if v["log2_lr"] is not None]
        out[param] = {"optimum": widths, "drift": max(argmins) - min(argmins) if argmins else None}
    return out


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def report(study, out: str | Path, stem: str = "results", plot_name: str | None = "lr_transfer.png",
           metric: str = "train_loss", extra: dict | None = None) -> dict:
    """Write `<stem>.csv` and `<stem>.json` (every trial) and, for a grid, the Figure-1 plot; returns the JSON dict.

    Usage: `summary = report(study, "out")`
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    spec = study.user_attrs["spec"]
    if rows:
        with open(out / f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    result = {"study": study.study_name, "spec": spec,
              "counts": {s: sum(r["state"] == s for r in rows) for s in STATES},
              "objective": f"validation loss; diverged trials score {DIVERGED_VALUE:g} and record +inf (null)",
              **(extra or {})}
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if spec["mode"] == "grid":
        result["optimum"] = {m: lr_optima(rows, m) for m in ("train_loss", "val_loss")}
        result["drift"] = {m: {p: v["drift"] for p, v in o.items()} for m, o in result["optimum"].items()}
        result["plot_metric"] = metric
        if plot_name and done:
            plot_lr_transfer(result["optimum"][metric], spec, out / plot_name, metric)
    else:
        ok = [r for r in done if not r["diverged"]]
        result["best"] = min(ok, key=lambda r: r["val_loss"]) if ok else None
    timing: dict[str, list[float]] = {}
    for r in done:
        timing.setdefault(f"{r['parametrization']}/w{r['width']}", []).append(r["seconds"])
    result["seconds_per_trial"] = {k: round(sum(v) / len(v), 2) for k, v in sorted(timing.items())}
    result["trials"] = rows
    (out / f"{stem}.json").write_text(json.dumps(_json_safe(result), indent=1, ensure_ascii=False))
    return result


def plot_width_curves(ax, optimum: dict, widths: list, cmap, label: str = "width", star: int = 13) -> None:
    """Loss against log2 LR, one curve per width of `optimum` (`lr_optima`'s), a star at each width's best LR."""
    for w, o in optimum.items():
        color = cmap(0.85 * widths.index(w) / max(1, len(widths) - 1))
        xs = [(float(x), v) for x, v in o["curve"].items() if v is not None]
        if xs:
            ax.plot(*zip(*xs), "o-", ms=3, lw=1.3, color=color, label=f"{label} {w}")
        if o["log2_lr"] is not None:
            ax.plot(o["log2_lr"], o["loss"], "*", ms=star, color=color, markeredgecolor="black")


def plot_lr_transfer(optima: dict, spec: dict, path: Path, metric: str = "train_loss") -> None:
    """Figure 1 of Tensor Programs V: loss against log2 LR, one curve per width, μP and SP side by side."""
    from ..extras import require

    require("sweep", "matplotlib", what="the LR-transfer plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in ("mup", "sp") if p in optima]
    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 4.5), dpi=120, squeeze=False, sharey=True)
    widths = sorted({w for p in params for w in optima[p]["optimum"]})
    cmap = plt.get_cmap("viridis")
    values = [v for p in params for o in optima[p]["optimum"].values() for v in o["curve"].values() if v is not None]
    for ax, param in zip(axes[0], params):
        plot_width_curves(ax, optima[param]["optimum"], widths, cmap)
        name = f"μP (base width {spec['base_width']}, output_mult {spec['output_mult']:g})" if param == "mup" else "SP"
        drift = optima[param]["drift"]
        ax.set_title(f"{name}: optimum drift {drift:g}" if drift is not None else name, fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if values:
        low = min(values)
        axes[0][0].set_ylim(low - 0.05, min(max(values), low + 2.5) + 0.05)
    axes[0][0].set_ylabel(f"{'training' if metric == 'train_loss' else 'validation'} loss (seed mean)")
    text = spec["dataset"] or Path(spec["train_file"] or "WikiText-2").name
    tokens = "bytes" if spec["tokenizer"] == "bytes" else f"BPE {spec['vocab_size']}"
    model = {"gpt2": "GPT-2", "bert": "BERT masked LM", "llama": "Llama"}.get(spec["arch"], spec["arch"])
    fig.suptitle(f"{model}, {spec['layers']} layers, head size {spec['head_dim']}, seq {spec['seq_len']}, {text} as "
                 f"{tokens}, {spec['steps']} AdamW steps, batch {spec['batch_size']}; ★ = best LR per width",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
