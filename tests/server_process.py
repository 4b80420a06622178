"""`stn-serve serve` as a process of its own, for tests of what only a process shows: signals,
exit codes, several processes on one port, peak memory.

The command line runs with torch unimportable, as in a serving container, on 127.0.0.1 port 0.
Its JSON log lines are collected as they come (a thread reads stderr), so a test waits for a
record instead of sleeping; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

WAIT_S = 120
# Runs the CLI with torch unimportable, as in a serving container.
NO_TORCH_CLI = (
    "import sys; sys.modules['torch'] = None; from stn_serve.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


class ServerProcess:
    """`stn-serve serve --host 127.0.0.1 --port 0 *args`; its log records in `records`.
    `host=None` leaves --host out (the server's default)."""

    def __init__(self, *args: str, host: str | None = "127.0.0.1"):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                NO_TORCH_CLI,
                "serve",
                *(["--host", host] if host else []),
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.records: list[dict] = []
        self.text: list[str] = []  # every line of stderr, log record or not
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.text.append(line)
            if line.startswith("{"):
                record = json.loads(line)
                self.records.append(record)
                self._lines.put(record)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for(self, message: str, count: int = 1, timeout: float = WAIT_S) -> list[dict]:
        """The first `count` records with `message` (waiting for them as they are logged)."""
        deadline = time.monotonic() + timeout
        while len(found := [r for r in self.records if r["message"] == message]) < count:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or self._lines.get(timeout=remaining) is None:
                    break
            except queue.Empty:
                break
        found = [r for r in self.records if r["message"] == message]
        if len(found) < count:
            raise AssertionError(
                f"the server logged {len(found)} of {count} {message!r} records "
                f"(exit code {self.process.poll()}): {''.join(self.text)[-3000:]}"
            )
        return found[:count]

    def serving(self) -> dict:
        """The "serving" record (its port, metrics_port, pid or pids)."""
        return self.wait_for("serving")[0]

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_S) -> int:
        return self.process.wait(timeout)

    def peak_memory_mb(self, pid: int | None = None) -> float:
        """The process's peak resident memory (VmHWM) in MiB."""
        with open(f"/proc/{pid or self.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(WAIT_S)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
