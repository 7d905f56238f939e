"""PostgreSQL storage: one clear error line for every way a storage fails to open (no server needed), and
many workers on one search for real: a throwaway PostgreSQL cluster that the tests start and remove themselves, two
`hf-mup sweep` workers on one study, one SIGKILLed mid-trial, a worker run again, each grid point COMPLETE once.

The server binaries come from Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin; .ci/run installs it);
without them, or without psycopg (pip install 'hf_mup[postgres]'), the server tests skip and say why.
"""
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port
from optuna.trial import TrialState

from hf_mup import MuPError
from hf_mup.lab import cli
from hf_mup.lab import sweep as sw
from hf_mup.lab.results import report
from hf_mup.lab.storage import load_study, safe_url

TINY = ["--widths", "32,64", "--base-width", "32", "--steps", "4", "--batch-size", "8", "--seq-len", "32",
        "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--seeds", "1", "--threads", "1",
        "--parametrization", "mup", "--log2-lrs=-8", "--no-progress"]


# --------------------------------------------------------------------------------------- errors, no server


@pytest.mark.parametrize("url, expected", [
    ("postgresql://nobody:s3cret@127.0.0.1:1/x",
     ["cannot reach the database server 127.0.0.1:1", "postgresql://nobody:***@127.0.0.1:1/x", "Connection refused"]),
    ("postgresql://u:pw@/x?host=/nonexistent-socket-dir", ["cannot reach the database server", "u:***@"]),
    ("foo://bar", ["unknown database scheme 'foo'", "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
                   "pip install 'hf_mup[postgres]'"]),
    ("not a url", ["is not a database URL", "sqlite:///PATH/sweep.db"]),
    ("postgresql://u:s3cret@h:port/x", ["is not a database URL", "u:***@h:port"]),
    ("postgresql+nosuchdriver://u@h/x", ["unknown database scheme 'postgresql+nosuchdriver'"]),
    ("sqlite:////nonexistent-dir/sub/sweep.db", ["cannot open the SQLite storage", "folder exists"]),
])
def test_storage_failures_are_one_clear_line(url, expected):
    with pytest.raises(MuPError) as e:
        sw.open_study("s", url, {"mode": "grid"})
    message = str(e.value)
    assert "\n" not in message and "s3cret" not in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("url, fix", [
    ("postgresql://u:s3cret@127.0.0.1:1/x", "pip install 'hf_mup[postgres]'"),
    ("postgresql+psycopg://u@127.0.0.1:1/x", "pip install 'hf_mup[postgres]'"),
    ("postgresql+psycopg2://u@127.0.0.1:1/x", "pip install psycopg2-binary, or use a plain postgresql:// URL"),
    ("mysql+pymysql://u:s3cret@127.0.0.1:1/x", "pip install PyMySQL"),
])
def test_missing_driver_names_the_install(url, fix, monkeypatch):
    for module in ("psycopg", "psycopg2", "pymysql"):  # as if not installed: `import psycopg` raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MuPError) as e:
        load_study("s", url)
    assert "Python database driver" in str(e.value) and fix in str(e.value) and "s3cret" not in str(e.value)


def test_heartbeat_must_be_positive():
    with pytest.raises(MuPError, match="--heartbeat must be a whole number of seconds >= 1"):
        sw.open_study("s", "sqlite://", {"mode": "grid"}, heartbeat=0)


def test_safe_url_masks_passwords_even_when_unparsable():
    assert safe_url("postgresql://u:s3cret@h:5432/x") == "postgresql://u:***@h:5432/x"
    assert safe_url("postgresql://u:s3cret@h:port/x") == "postgresql://u:***@h:port/x"
    assert safe_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_cli_unreachable_server_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["sweep", *TINY, "--out", str(tmp_path), "--storage", "postgresql://nobody:s3cret@127.0.0.1:1/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hf-mup: error: cannot reach the database server 127.0.0.1:1") and err.count("\n") == 1
    assert "postgresql://nobody:***@127.0.0.1:1/x" in err and "s3cret" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- a throwaway PostgreSQL server


def _server_bindir() -> Path | None:
    """The newest Debian PostgreSQL server (`apt-get install postgresql`), else an initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(v) if v.isdigit() else 0 for v in Path(p).parent.parent.name.split(".")])
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Cluster:
    """A PostgreSQL cluster in a temporary folder, on a free loopback port, run as `nobody` when we are root
    (initdb refuses root). Password login over TCP (scram-sha-256), so wrong passwords are refused for real."""

    def __init__(self, bindir: Path):
        self.bindir, self.password = bindir, secrets.token_hex(8)
        self.root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="hf_mup_pg_", dir="/tmp" if self.root else None))
        self.data, self.log = self.base / "data", self.base / "server.log"
        self.as_user: dict = {}
        if self.root:  # the folder is the server's; / and /tmp let any user through
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
            self.as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.port = None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.base, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "LC_ALL": "C"}, **self.as_user)

    def start(self) -> str | None:
        """Start the server; None, or why it could not start."""
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.root:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        r = self._run("initdb", "-D", str(self.data), "-U", "mup", f"--pwfile={pwfile}", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        if r.returncode:
            return f"initdb failed: {(r.stderr or r.stdout).strip()[-500:]}"
        for _ in range(5):  # a port found free can be taken before the server binds it: then try another
            self.port = free_port()
            opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
            r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start",
                          timeout=90)
            if r.returncode == 0:
                return None
            log = self.log.read_text() if self.log.exists() else ""
            if "could not bind" not in log and "already in use" not in log:
                return f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-300:]} {log.strip()[-500:]}"
        return f"no free port after 5 tries: {log.strip()[-300:]}"

    def url(self, password: str | None = None, database: str = "postgres") -> str:
        return f"postgresql://mup:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            r = self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            if r.returncode and (self.data / "postmaster.pid").exists():  # our own server: end it by its pid
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg (PostgreSQL driver) not installed: pip install 'hf_mup[postgres]'")
    bindir = _server_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb): apt-get install postgresql (.ci/run does)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and no user 'nobody' to run PostgreSQL's initdb as (it refuses root)")
    c = Cluster(bindir)
    try:
        why = c.start()
        if why:
            pytest.skip(f"could not start a PostgreSQL server from {bindir}: {why}")
        yield c
    finally:
        c.stop()


def _new_database(cluster: Cluster, name: str) -> str:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url(database=name)


@pytest.mark.server
def test_wrong_password_and_missing_database_are_clear_errors(cluster):
    with pytest.raises(MuPError) as e:
        sw.open_study("s", cluster.url(password="wrong-pw"), {"mode": "grid"})
    assert f"the database server 127.0.0.1:{cluster.port} refused user 'mup'" in str(e.value)
    assert "password authentication failed" in str(e.value) and "wrong-pw" not in str(e.value)
    assert f"postgresql://mup:***@127.0.0.1:{cluster.port}/postgres" in str(e.value)
    with pytest.raises(MuPError, match="has no database 'nowhere'.*createdb"):
        sw.open_study("s", cluster.url(database="nowhere"), {"mode": "grid"})


def _trial_states(conn, study: str) -> dict[int, str]:
    """{trial number: state} of `study`, read straight from optuna's tables ({} before a worker made them)."""
    import psycopg

    try:
        rows = conn.execute("SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                            "WHERE s.study_name = %s", (study,)).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {n: str(s).rsplit(".", 1)[-1] for n, s in rows}


def _stopped(proc: subprocess.Popen) -> bool:
    """Whether `proc` is stopped (SIGSTOP has taken effect), or gone."""
    try:
        return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "TtZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait(condition, timeout: float, what: str, logs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + "".join(
                f"\n--- {p}:\n{p.read_text()[-2000:]}" for p in logs if p.exists()))
        time.sleep(0.02)


def _freeze(*ps: subprocess.Popen) -> None:
    for p in ps:
        p.send_signal(signal.SIGSTOP)
    _wait(lambda: all(_stopped(p) for p in ps), 30, "SIGSTOP to take effect")


def _thaw(*ps: subprocess.Popen) -> None:
    for p in ps:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)


def _finish(procs: dict[str, subprocess.Popen], logs: dict[str, Path], names: tuple[str, ...]) -> None:
    """Wait for the workers `names` to end, each with exit status 0 (else fail with its log's tail)."""
    for name in names:
        try:
            procs[name].wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {name} did not finish:\n{logs[name].read_text()[-3000:]}")
        assert procs[name].returncode == 0, f"worker {name}:\n{logs[name].read_text()[-3000:]}"


def _kill_all(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def _kill_mid_trial(a: subprocess.Popen, b: subprocess.Popen, running, killed: list[int]) -> bool:
    """Kill worker `a` while it and `b` each run a trial; `running()`: the RUNNING trials' numbers. Both are frozen
    while the states are read, so the states cannot move: two RUNNING trials, two workers, one of them is A's.
    `killed` gets those two numbers. False (nothing done) until two trials run."""
    if len(running()) < 2:
        return False
    _freeze(a, b)
    try:
        now = running()
        if len(now) == 2:
            a.kill()
            a.wait()
            killed.extend(now)
    finally:
        _thaw(a, b)
    return bool(killed)


def _connected(conn) -> set[str]:
    """The workers (by application_name, PGAPPNAME) with a connection to the server now."""
    return {n for (n,) in conn.execute("SELECT application_name FROM pg_stat_activity "
                                       "WHERE application_name LIKE 'hf_mup_worker_%'").fetchall()}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.server
def test_two_workers_one_killed_mid_trial_every_point_completes_once(cluster, tmp_path):
    """Workers A and B on one study; when both are mid-trial, A is SIGKILLed; C runs the same command again.

    Everything waits on conditions (bounded), never on a guessed delay: the first worker to connect is held
    (SIGSTOP, before it takes a trial) until the other connects, so that both run trials together; then A and B
    are frozen while the trial states are read, and A is killed only when two trials are RUNNING, one of them A's.
    """
    import psycopg

    url, study = _new_database(cluster, "two_workers"), "grid"
    lrs = [-9.0, -8.0, -7.0]
    args = ["sweep", "--mode", "grid", "--widths", "32,64", "--base-width", "32", "--steps", "20", "--batch-size", "8",
            "--seq-len", "32", "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--seeds", "1",
            "--threads", "1", "--parametrization", "mup", "--log2-lrs=-9:-7:1", "--heartbeat", "1", "--no-progress",
            "--storage", url, "--study", study]
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def worker(name: str) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "w") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "hf_mup", *args, "--out", str(tmp_path / name)], stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", "PGAPPNAME": f"hf_mup_worker_{name}"})
        return procs[name]

    def alive(*names: str) -> bool:
        for n in names:
            if procs[n].poll() is not None:
                pytest.fail(f"worker {n} ended (exit {procs[n].returncode}) too early:\n"
                            + "".join(f"--- {k}:\n{f.read_text()[-2000:]}\n" for k, f in logs.items()))
        return True

    def running(conn) -> list[int]:
        return [n for n, s in _trial_states(conn, study).items() if s == "RUNNING"]

    try:
        a, b = worker("a"), worker("b")
        killed: list[int] = []
        with psycopg.connect(url, autocommit=True) as conn:
            _wait(lambda: alive("a", "b") and _connected(conn), 240, "a worker to connect", logs.values())
            first = _connected(conn)
            if len(first) == 1:  # hold the first one (unless it already took a trial) until the other connects
                ahead, behind = (a, "b") if first == {"hf_mup_worker_a"} else (b, "a")
                _freeze(ahead)
                try:
                    if not running(conn):
                        _wait(lambda: alive(behind) and f"hf_mup_worker_{behind}" in _connected(conn), 240,
                              f"worker {behind} to connect", logs.values())
                finally:
                    _thaw(ahead)

            _wait(lambda: alive("a", "b") and _kill_mid_trial(a, b, lambda: running(conn), killed), 240,
                  "both workers mid-trial", logs.values())
        worker("c")  # a worker run again, beside B
        _finish(procs, logs, ("b", "c"))
    finally:
        _kill_all(procs)

    trials = load_study(study, url).get_trials(deepcopy=False)
    points = {sw.point_key(p) for p in sw.grid_points([32, 64], lrs, ["mup"], seeds=1)}
    complete = [t.user_attrs.get("point") for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(points)  # every point COMPLETE exactly once: none missing, no duplicates
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number in killed  # A's trial, failed once its heartbeat went stale
    other = next(n for n in killed if n != failed[0].number)
    assert trials[other].state == TrialState.COMPLETE  # B's trial, frozen beside it, finished
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].user_attrs.get("point") == failed[0].user_attrs.get("point")
    assert retries[0].state == TrialState.COMPLETE or retries[0].user_attrs.get("duplicate_of") is not None
    assert all(t.state == TrialState.PRUNED for t in trials
               if t.state != TrialState.COMPLETE and t.number != failed[0].number)
    result = report(load_study(study, url), tmp_path / "report", plot_name=None)
    assert result["counts"]["COMPLETE"] == len(points) and result["counts"]["FAIL"] == 1


def _two_workers_one_killed(url: str, study: str, args: list[str], tmp_path: Path, what: str) -> tuple:
    """Workers A and B run `hf-mup` with `args` on one study; A is SIGKILLed once both are mid-trial, C runs the same
    command again, and B and C finish. Nothing is left running or waiting, A's trial failed and was retried once:
    returns the study's trials, A's failed trial and its retry."""
    import psycopg

    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def worker(name: str, seed: int) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "w") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "hf_mup", *args, "--seed", str(seed), "--out", str(tmp_path / name)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return procs[name]

    def running(conn) -> list[int]:
        return [n for n, st in _trial_states(conn, study).items() if st == "RUNNING"]

    killed: list[int] = []
    try:
        a, b = worker("a", 0), worker("b", 100)
        with psycopg.connect(url, autocommit=True) as conn:
            def alive() -> bool:
                for n in ("a", "b"):
                    if procs[n].poll() is not None:
                        pytest.fail(f"worker {n} ended too early:\n{logs[n].read_text()[-2000:]}")
                return True

            _wait(lambda: alive() and _kill_mid_trial(a, b, lambda: running(conn), killed), 240, what, logs.values())
        worker("c", 200)
        _finish(procs, logs, ("b", "c"))
    finally:
        _kill_all(procs)
    trials = load_study(study, url).get_trials(deepcopy=False)
    assert not {TrialState.RUNNING, TrialState.WAITING} & {t.state for t in trials}
    [failed] = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number in killed
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]  # retried once
    return trials, failed, retry


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.server
def test_two_workers_on_a_pruned_search_lose_and_repeat_no_trial(cluster, tmp_path):
    """Two workers run one pruned tune study (successive halving on the validation loss every 2 steps); when both
    are mid-trial, A is SIGKILLed and C runs the same command again. Every trial ends COMPLETE or PRUNED with its cost
    recorded, except A's, which fails once its heartbeat goes stale and is retried once, with the values it had drawn."""

    url, study = _new_database(cluster, "pruned"), "tune"
    args = ["sweep", "--mode", "tune", "--widths", "32", "--base-width", "32", "--steps", "16", "--batch-size", "8",
            "--seq-len", "32", "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--threads", "1",
            "--log2-lrs=-14:-2:1", "--n-trials", "8", "--sampler", "random", "--pruner", "asha", "--min-steps", "2",
            "--eval-every", "2", "--heartbeat", "1", "--no-progress", "--storage", url, "--study", study]
    trials, failed, retry = _two_workers_one_killed(url, study, args, tmp_path, "both workers mid-trial")
    states = [t.state for t in trials]
    assert all(retry.params[k] == v for k, v in failed.params.items())  # the values A had drawn (the rest afresh)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 8 and {TrialState.COMPLETE, TrialState.PRUNED} <= set(states)
    for t in finished:  # nothing lost: each one's cost and steps recorded, a pruned one stopped early
        assert t.user_attrs["flops"] > 0 and (t.user_attrs["steps_run"] < 16) == (t.state == TrialState.PRUNED)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.server
def test_two_workers_on_successive_halving_lose_and_repeat_no_leg(cluster, tmp_path):
    """Two workers share one study under synchronous successive halving (8 trials to step 2, the best 3 on to step 6,
    the best to 18) and one checkpoint folder; A is SIGKILLed mid-leg and C runs the same command again. Each rung
    is decided once, on every leg below it: its legs go on from the best of the rung below, each once, and the study
    costs exactly the planned steps (a first leg one worker starts beyond the rung's 8 stops unsampled)."""

    from hf_mup.lab.halving import planned_steps
    from hf_mup.lab.search import ran

    url, study = _new_database(cluster, "halving"), "tune"
    args = ["sweep", "--mode", "tune", "--widths", "32", "--base-width", "32", "--steps", "18", "--batch-size", "8",
            "--seq-len", "32", "--tokenizer", "bytes", "--train-chars", "20000", "--val-blocks", "4", "--threads", "1",
            "--log2-lrs=-14:-4:1", "--n-trials", "8", "--pruner", "sha", "--min-steps", "2", "--heartbeat", "1",
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress", "--storage", url, "--study", study]
    trials, _, retry = _two_workers_one_killed(url, study, args, tmp_path, "both workers mid-leg")
    assert retry.state.is_finished()
    legs = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and ran(t)]
    by_rung = {k: [t for t in legs if t.user_attrs["rung"] == k] for k in range(3)}
    assert [len(v) for v in by_rung.values()] == [8, 3, 1]
    for k in (1, 2):  # each from the best of the rung below, each once
        best = sorted(by_rung[k - 1], key=lambda t: (t.value, t.number))[:len(by_rung[k])]
        assert sorted(t.user_attrs["resumes"] for t in by_rung[k]) == sorted(t.number for t in best)
    assert sum(t.user_attrs["steps_run"] for t in legs) == planned_steps(8, 18, 2)
    assert all("flops" not in t.user_attrs for t in trials if not ran(t))  # a duplicate or surplus leg ran nothing
    assert by_rung[2][0].state == TrialState.COMPLETE and list((tmp_path / "ck").iterdir()) == []
