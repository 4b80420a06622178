"""The serving side imports and runs with the training extra (torch, onnx) unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Serving packages per docs/contracts.md; those not written yet are skipped by the check below.
SERVING = [
    "stn_serve.runtime",
    "stn_serve.server",
    "stn_serve._proto",
    "stn_serve.client",
    "stn_serve.batch",
    "stn_serve.bench.serve",
    "stn_serve.commands.serve",
]

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, importlib.util, pkgutil, sys

    BLOCKED = {"torch", "torchvision", "onnx", "onnxscript"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the serving side must not import it")

    sys.meta_path.insert(0, Block())
    imported = []
    for package in sys.argv[1:]:
        if importlib.util.find_spec(package) is None:
            continue
        module = importlib.import_module(package)
        imported.append(package)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    from stn_serve.cli import build_parser
    build_parser().parse_args(["serve", "--help"])
""")


def test_serving_modules_import_without_torch_or_onnx():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *SERVING],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--max-batch-size" in result.stdout  # `serve --help` printed and exited 0


def test_the_block_works():
    """The check above would notice a serving module that imports torch."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT.replace("from stn_serve.cli", "import torch\nfrom stn_serve.cli"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr
