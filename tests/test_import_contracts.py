"""The floor between training and serving holds, by import-linter's static contracts in
pyproject.toml (indirect imports included), and the contracts catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "raise SystemExit(lint_imports(config_filename=sys.argv[1], no_cache=True))"
)


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with pyproject.toml's contracts on the `stn_serve` in `package_parent`
    (run from there, so that it is the one imported)."""
    return subprocess.run(
        [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")],
        cwd=package_parent,
        env={"PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_every_import_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        # through another module: commands.train imports models.config
        ("imaging.py", "import stn_serve.commands.train", "serving never reaches"),
        ("batch/journal.py", "import torch", "serving never reaches"),
        ("contract/choices.py", "import numpy", "the contract imports neither"),
        ("client/defaults.py", "import stn_serve.server.options", "a client never loads"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    shutil.copytree(
        ROOT / "stn_serve", tmp_path / "stn_serve", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = tmp_path / "stn_serve" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout
