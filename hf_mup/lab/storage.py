"""Where sweeps live: Optuna studies on an RDB storage (SQLite for one machine, PostgreSQL for many), with
heartbeats, and every way opening one fails as one `MuPError` line that names the fix.

Usage:
    study = open_study("lr_transfer", "sqlite:///out/sweep.db", spec)     # created, or reopened with the same spec
    study = load_study("lr_transfer", "postgresql://user:pw@host:5432/sweeps")
"""
from __future__ import annotations

import json
import warnings
import weakref
from pathlib import Path
from typing import Any

from ..errors import MuPError
from ..extras import require
from .configs import first_line

require("sweep", "optuna", "sqlalchemy", what="hf_mup.lab.storage (Optuna studies)")
import optuna  # noqa: E402 (after the check that names the extra)

GRACE = 3  # a trial whose heartbeat is older than GRACE × the heartbeat interval is stale
# study -> the RDBStorage that open_study / load_study made for it (optuna has no public study.storage)
_STORAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


STORAGE_HELP = ("use sqlite:///PATH/sweep.db, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE for many machines "
                "(pip install 'hf_mup[postgres]')")
# the pip package of each Python DB driver SQLAlchemy may ask for (a module not listed is its own package name)
_DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                    "pymysql": "PyMySQL", "mysql": "mysql-connector-python", "cx_Oracle": "oracledb"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


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
    reason = first_line(getattr(e, "orig", None) or e)
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


def open_study(name: str, storage: str, spec: dict[str, Any], heartbeat: int = 10, sampler=None):
    """Create the study `name` tied to `spec` (JSON data: a sweep's `SweepSpec.to_dict()`), or reopen it; a study
    made with another spec is a `MuPError` naming the first difference.

    Usage: `study = open_study("lr_transfer", "sqlite:///out/sweep.db", spec)`
    """
    st = _storage(storage, heartbeat)
    study = optuna.create_study(study_name=name, storage=st, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    _STORAGES[study] = st
    if study.user_attrs.get("spec") is None:
        study.set_user_attr("spec", spec)  # workers creating the study together: one insert wins, the rest compare
    if "recipe" in spec:  # a Recipe spec (every hf_mup sweep) never reopens a study of the old layout
        _check_layout(study, storage)
    old, new = _leaves(study.user_attrs["spec"]), _leaves(json.loads(json.dumps(spec)))  # as stored: lists
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise MuPError(f"study {name!r} was made with {key}={old.get(key)!r}; you asked {key}={new.get(key)!r}: "
                           "use another --study name (or the study's own settings).")
    return study


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"recipe.lr": ..., "data.tokenizer": ...}: a spec's settings by dotted name, to name the one that differs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_study(name: str, storage: str, heartbeat: int = 10):
    """An existing study, with a clear error listing the studies in `storage` when there is none."""
    st = _storage(storage, heartbeat)
    names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if name not in names:
        raise MuPError(f"no study {name!r} in {safe_url(storage)}; it has {names or 'none'}.")
    study = optuna.load_study(study_name=name, storage=st)
    _check_layout(study, storage)
    _STORAGES[study] = st
    return study


def _check_layout(study, storage: str) -> None:
    """Refuse a study whose stored spec predates the `Recipe` (a flat dict of settings)."""
    if "recipe" not in study.user_attrs.get("spec", {}):
        raise MuPError(f"study {study.study_name!r} in {safe_url(storage)} was made by an older hf_mup (its settings "
                       "are not a Recipe): run the sweep again into another --study name or storage file.")


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
