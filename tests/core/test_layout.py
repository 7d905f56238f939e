"""The package's two blocks: the core (hf_mup/*.py, hf_mup/architectures/) imports only torch and transformers and
never the lab (hf_mup/lab/); `import hf_mup` loads neither the lab nor Optuna. `python -m hf_mup` (hf_mup/__main__.py)
is the one door from the core's folder into the lab: the command line."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_mup

PACKAGE = Path(hf_mup.__file__).resolve().parent
CORE = sorted(p for p in PACKAGE.rglob("*.py") if "lab" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py")
LAB = sorted((PACKAGE / "lab").glob("*.py"))


def _imports(path: Path) -> set[str]:
    """The modules `path` imports, absolute (relative imports resolved against its package)."""
    package = ".".join(("hf_mup", *path.relative_to(PACKAGE).parent.parts))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def test_the_core_never_imports_the_lab():
    assert len(CORE) > 10 and len(LAB) > 10
    offenders = {p.name: sorted(m for m in _imports(p) if m.startswith("hf_mup.lab")) for p in CORE}
    assert not {k: v for k, v in offenders.items() if v}
    third_party = {m.split(".")[0] for p in CORE for m in _imports(p)} - {"hf_mup", "__future__"}
    assert not {"optuna", "sqlalchemy", "matplotlib", "datasets", "tqdm"} & third_party


@pytest.mark.slow
def test_import_hf_mup_loads_neither_the_lab_nor_optuna():
    code = ("import sys, hf_mup; print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('optuna', "
            "'sqlalchemy', 'matplotlib'))}), [m for m in sys.modules if m.startswith('hf_mup.lab')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] []"


def test_lab_modules_stay_short():
    """No lab module over ~450 lines: a module that grows past it holds two concerns."""
    lengths = {p.name: len(p.read_text().splitlines()) for p in LAB}
    assert max(lengths.values()) <= 460, lengths
