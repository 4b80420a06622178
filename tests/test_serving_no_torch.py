"""The serving side imports and runs with the training extra (torch, onnx) unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Serving modules per docs/contracts.md (packages are walked).
SERVING = [
    "stn_serve.contract",
    "stn_serve.errors",
    "stn_serve.logs",
    "stn_serve.imaging",
    "stn_serve.runtime",
    "stn_serve.server",
    "stn_serve._proto",
    "stn_serve.client",
    "stn_serve.batch",
    "stn_serve.bench.serve",
    "stn_serve.bench.serve_load",
    "stn_serve.bench.serve_report",
    "stn_serve.commands.serve",
    "stn_serve.commands.predict",
    "stn_serve.commands.batch",
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
    repository, packages = sys.argv[1], sys.argv[2:]
    for package in packages:
        module = importlib.import_module(package)
        imported.append(package)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    import numpy as np
    from stn_serve.client import Client
    from stn_serve.server import create_server

    server, port = create_server(repository, "127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", model="digits") as client:
            (prediction,) = client.predict(np.full((1, 28, 28), 0.5, np.float32))
        print("served", prediction.label, prediction.crop.shape)
    finally:
        server.stop(grace=1.0)
    from stn_serve.cli import build_parser
    build_parser().parse_args(["serve", "--help"])
""")


def test_serving_modules_import_and_serve_without_torch_or_onnx(model_repository):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_repository), *SERVING],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "served " in result.stdout and "(1, 28, 28)" in result.stdout
    assert "--max-batch-size" in result.stdout  # `serve --help` printed and exited 0


def test_the_block_works(tmp_path):
    """The check above would notice a serving module that imports torch."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT.replace("import numpy as np", "import torch\nimport numpy as np"),
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr
