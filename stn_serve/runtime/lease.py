"""Holding a model version while a request uses it, so that unloading it waits for the request.

A request takes a `Lease` (`ModelRepository.acquire`) before it decodes and queues, and releases
it once answered; unloading a version (`LoadedModel.retire`) stops new leases at once and then
waits for the open ones to close before the session is freed. Nothing here knows gRPC: a server
holds a lease per request, a batch job per run.
"""

from __future__ import annotations

import threading

from stn_serve.runtime.model import OnnxModel


class LoadedModel:
    """A loaded `OnnxModel` and the number of leases open on it."""

    def __init__(self, model: OnnxModel):
        self.model = model
        self._leases = 0
        self._retired = False
        self._changed = threading.Condition()

    @property
    def leases(self) -> int:
        with self._changed:
            return self._leases

    @property
    def retired(self) -> bool:
        """Whether `retire` has begun: no lease is given any more."""
        with self._changed:
            return self._retired

    def lease(self) -> Lease | None:
        """A new lease, or None once the model is being retired (the caller picks another
        version or refuses the request; see `ModelRepository.acquire`)."""
        with self._changed:
            if self._retired:
                return None
            self._leases += 1
        return Lease(self)

    def _release(self) -> None:
        with self._changed:
            self._leases -= 1
            self._changed.notify_all()

    def retire(self, timeout: float | None) -> bool:
        """Refuse new leases, wait up to `timeout` seconds (None: no limit) for the open ones to
        close, then unload the model. Returns whether every lease closed in time."""
        with self._changed:
            self._retired = True
            drained = self._changed.wait_for(lambda: self._leases == 0, timeout)
        self.model.unload()
        return drained


class Lease:
    """One holder of a model version: `model` stays loaded until `release()` (or the end of a
    `with` block, which yields the model)."""

    def __init__(self, loaded: LoadedModel):
        self.model = loaded.model
        self._loaded = loaded
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Close the lease; later calls do nothing."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._loaded._release()

    def __enter__(self) -> OnnxModel:
        return self.model

    def __exit__(self, *exc_info) -> None:
        self.release()
