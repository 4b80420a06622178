"""Busy processes beside a benchmark, so that it measures what a loaded machine gives (training
beside DataLoader workers, a shared host): one process spinning on each other core."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator


def other_cores() -> int:
    """The cores this process may run on, less one (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


# Spins while the benchmark (its parent, whose pid it is given) lives: a benchmark killed outright
# leaves no spinner behind, even one that had not started yet.
SPIN = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    pass\n"


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """Run `count` Python processes that spin until the block ends (then they are killed)."""
    command = [sys.executable, "-c", SPIN, str(os.getpid())]
    spinners = [subprocess.Popen(command) for _ in range(count)]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
