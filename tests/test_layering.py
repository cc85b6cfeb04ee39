"""The import-linter contracts in pyproject.toml hold, and they fail when a forbidden import appears."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs lint-imports on the package tree in argv[1]. An editable install's import hook
# would outrank that folder on sys.path, so it is taken out first.
LINT = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
sys.path.insert(0, sys.argv[1])
import satlab
assert satlab.__file__.startswith(sys.argv[1]), satlab.__file__
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True, no_logo=True))
"""


def lint(tmp_path: Path, edit: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """Lay out the package as installed (satlab/, with drivers/ and simulators/ inside), then lint."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "satlab", tree / "satlab")
    for sub in ("drivers", "simulators"):
        shutil.copytree(ROOT / sub, tree / "satlab" / sub)
    if edit is not None:
        module, line = edit
        path = tree / "satlab" / module
        path.write_text(path.read_text() + f"\n{line}\n")
    return subprocess.run([sys.executable, "-c", LINT, str(tree), str(ROOT / "pyproject.toml")],
                          capture_output=True, text=True, timeout=300)


def test_contracts_hold(tmp_path):
    result = lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("estimators.py", "import satlab.simulators.mrr.bank", "never imports a driver or simulator"),
    ("rig.py", "from satlab.drivers import __name__ as _d", "never imports a driver or simulator"),
    ("training.py", "from satlab.systems.mrr import MrrLayerBackend", "Nothing outside a system"),
    ("physical_layer.py", "import satlab.systems.mrr", "Nothing outside a system"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    result = lint(tmp_path, (module, line))
    assert result.returncode == 1
    assert "1 broken" in result.stdout and contract in result.stdout
