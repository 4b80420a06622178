"""Model control, as Triton's `--model-control-mode none|poll|explicit`: what loads at start and
what may change the served models afterwards.

`ModelControl.start()` does the first load (and refuses to start when models were wanted and
none loads); in poll mode a thread rescans the repository every `poll_s` seconds and whenever
`request_rescan()` is called (a server calls it on SIGHUP: it only sets an event, so it is safe in
a signal handler). `load(name)` / `unload(name)` serve the repository extension's load and
unload requests, which only explicit mode allows.
"""

from __future__ import annotations

import logging
import threading

from stn_serve.errors import NotAllowedError, NotFoundError, StnServeError
from stn_serve.runtime.options import ALL_MODELS, ModelControlOptions
from stn_serve.runtime.repository import ModelRepository

log = logging.getLogger(__name__)


class ModelControl:
    """Loads `repository` as `options.mode` says and keeps it in step with the folder."""

    def __init__(self, repository: ModelRepository, options: ModelControlOptions | None = None):
        self.repository = repository
        self.options = options or ModelControlOptions()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self.options.mode

    def start(self) -> None:
        """Load what the mode loads at start, then (poll mode) start polling.

        Raises:
            NotFoundError: models were to be loaded and none could be (the reasons are in the
                message and the log). Explicit mode with no `load_models` starts empty.
        """
        if self.mode == "explicit":
            self._load_at_start()
        else:
            self.repository.load()
        wanted = self.mode != "explicit" or self.options.load_models
        if wanted and not self.repository.names():
            failures = {str(path): reason for path, reason in self.repository.failures.items()}
            raise NotFoundError(
                f"no model in {self.repository.root} could be loaded: {failures or 'it is empty'}"
            )
        if self.mode == "poll":
            self._thread = threading.Thread(target=self._poll, name="repository-poll", daemon=True)
            self._thread.start()
        log.info(
            "models loaded",
            extra={"mode": self.mode, "models": [repr(m) for m in self.repository.models()]},
        )

    def _load_at_start(self) -> None:
        names = self.options.load_models
        if ALL_MODELS in names:
            names = self.repository.model_names()
        for name in names:
            try:
                self.repository.load_model(name)
            except StnServeError as error:
                log.error("model not loaded", extra={"model": name, "reason": str(error)})

    def request_rescan(self) -> bool:
        """Ask the poll thread to rescan now; False (nothing done) unless in poll mode."""
        if self.mode != "poll":
            return False
        self._wake.set()
        return True

    def load(self, name: str) -> None:
        """Load or reload model `name` (explicit mode only)."""
        self._check_explicit("load")
        self.repository.load_model(name)

    def unload(self, name: str) -> None:
        """Drain and unload model `name` (explicit mode only)."""
        self._check_explicit("unload")
        self.repository.unload_model(name)

    def _check_explicit(self, what: str) -> None:
        if self.mode != "explicit":
            raise NotAllowedError(
                f"cannot {what} models: model control mode is {self.mode!r}; only 'explicit' "
                "takes load and unload requests"
            )

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.options.poll_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.repository.rescan()
            except Exception:  # the poll thread outlives any one bad rescan
                log.exception("repository rescan failed", extra={"path": str(self.repository.root)})

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; waits up to `timeout` seconds for a rescan under way to finish."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
