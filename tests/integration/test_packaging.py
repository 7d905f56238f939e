"""A built (not editable) install works: sdist -> wheel -> `pip install --target`, then run from outside the repo.

The wheel must carry the WikiText-2 files (and their CC BY-SA attribution) that the demo and `hf-mup sweep`'s
defaults read, and nothing from tests/. About 25 s on 2 idle CPU cores (2 subprocesses that import torch).
"""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = "hf_mup/_data/wikitext-2"
SHIPPED = ("valid.txt", "test.txt", "ATTRIBUTION.md")
# What the build reads: the root files (setup.cfg, pyproject.toml, README.md, ...) and these folders; tests/ is
# copied too, so that "no tests in the wheel" is checked against a tree that has them.
FOLDERS = ("hf_mup", "tests", "recipes")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "*.db")
TIMEOUT = 300


def _run(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, site): built from a copy of the working tree, the wheel installed into `site` alone."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for p in REPO.iterdir():
        if p.is_file():
            shutil.copy2(p, src / p.name)
    for name in FOLDERS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=JUNK)
    # sdist, then the wheel from the sdist, as `python -m build` does (no build isolation: no network needed).
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp / 'sdist')!r})"],
         cwd=src)
    (sdist,) = (tmp / "sdist").glob("hf_mup-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(sdist)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("hf_mup-*.whl")
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
          str(wheel)], cwd=tmp)
    return sdist, wheel, site


@pytest.fixture
def env(built):
    """Environment of a subprocess that sees the installed wheel first, not the editable checkout."""
    e = {k: v for k, v in os.environ.items() if k not in ("HF_MUP_DATA", "PYTHONPATH")}
    e.update(PYTHONPATH=str(built[2]), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             TRANSFORMERS_NO_ADVISORY_WARNINGS="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return e


@pytest.mark.slow
def test_wheel_contents(built):
    sdist, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        attribution = z.read(f"{DATA}/ATTRIBUTION.md").decode()
    for name in SHIPPED:
        assert f"{DATA}/{name}" in names, name
    assert "CC BY-SA" in attribution and "Merity" in attribution
    assert {n.split("/")[0] for n in names} == {"hf_mup", dist_info}, "only the package and its dist-info"
    assert not [n for n in names if "tests/" in n or Path(n).name.startswith(("test_", "conftest"))]
    assert "CC-BY-SA-3.0" in meta["License"]
    assert any(f.endswith("ATTRIBUTION.md") for f in meta.get_all("License-File"))
    assert "hf-mup = hf_mup.lab.cli:main" in entry_points
    # Core μP needs only torch and transformers; the rest are extras.
    core = sorted(r.split(">")[0].split("=")[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r)
    assert core == ["torch", "transformers"]
    assert {"train", "sweep", "postgres", "test", "all"} <= set(meta.get_all("Provides-Extra"))
    with tarfile.open(sdist) as t:
        assert any(n.endswith(f"{DATA}/ATTRIBUTION.md") for n in t.getnames())


@pytest.mark.slow
def test_installed_data_and_demo(built, env, tmp_path):
    """From the wheel: `data.wikitext_dir()` is the shipped copy, its error names HF_MUP_DATA, and
    `python -m hf_mup.lab.demo` (tiny, about 7 s) trains on it. One subprocess: importing hf_mup takes seconds."""
    site, out = built[2], tmp_path / "demo"
    argv = ["hf_mup.lab.demo", "--out", str(out), "--steps", "2", "--eval-every", "2", "--eval-blocks", "2",
            "--base-width", "32", "--wide-width", "64", "--batch-size", "2", "--seq-len", "16", "--vocab-size", "300",
            "--train-chars", "20000", "--threads", "1", "--no-progress"]
    code = (
        "import json, os, runpy, sys, hf_mup\n"
        "from hf_mup.lab import data\n"
        "folder = data.wikitext_dir()\n"
        "os.environ[data.DATA_ENV] = os.path.join(os.getcwd(), 'missing')\n"
        "try:\n"
        "    data.wikitext_dir(); err = None\n"
        "except FileNotFoundError as e:\n"
        "    err = str(e)\n"
        "del os.environ[data.DATA_ENV]\n"
        "print(json.dumps({'package': hf_mup.__file__, 'folder': str(folder), 'error': err}), flush=True)\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('hf_mup.lab.demo', run_name='__main__', alter_sys=True)  # = python -m hf_mup.lab.demo\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    failure = f"({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.startswith("{"), failure
    info = json.loads(r.stdout.splitlines()[0])
    assert Path(info["package"]).resolve().is_relative_to(site.resolve()), info
    folder = Path(info["folder"])
    assert folder.resolve() == (site / DATA).resolve(), info
    for name in SHIPPED:
        assert (folder / name).is_file(), name
    assert "HF_MUP_DATA" in info["error"]
    assert r.returncode == 0, failure
    results = json.loads((out / "results.json").read_text())
    assert Path(results["data"]["train"]).resolve() == (site / DATA / "valid.txt").resolve()
    assert all(math.isfinite(m["final_val_loss"]) for m in results["models"].values())


@pytest.mark.slow
def test_installed_cli_sweep_default_data(built, env, tmp_path):
    """`hf-mup sweep` (the installed console script) on its default data: one 2-step trial, about 10 s."""
    script = built[2] / "bin" / "hf-mup"
    assert script.is_file()
    out = tmp_path / "sw"
    _run([sys.executable, str(script), "sweep", "--widths", "32", "--log2-lrs=-8", "--steps", "2", "--seeds", "1",
          "--parametrization", "mup", "--head-dim", "16", "--base-width", "32", "--val-blocks", "2",
          "--threads", "1", "--no-progress", "--out", str(out)], cwd=tmp_path, env=env)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["state"], r["width"]) for r in rows] == [("COMPLETE", "32")]
    assert math.isfinite(float(rows[0]["val_loss"]))
