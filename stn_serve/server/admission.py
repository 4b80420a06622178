"""Admission control: a bound on the requests in the server, overall and per model.

A request is counted from the moment it is admitted (before its images are decoded) until it is
answered, so the bound covers every stage: decoding, waiting in the batch queue and running. One
request over the bound is refused with RESOURCE_EXHAUSTED at once: a burst is shed in
microseconds instead of waiting without bound. Runs on the server's event loop only, so it
needs no lock.
"""

from __future__ import annotations

from stn_serve.errors import ResourceExhaustedError


class Admission:
    def __init__(self, metrics, max_in_flight: int, max_in_flight_per_model: int):
        self.max_in_flight = max_in_flight
        self.max_per_model = max_in_flight_per_model
        self.in_flight = 0
        self._per_model: dict[str, int] = {}
        self._metrics = metrics

    def admit(self, model: str) -> None:
        """Take one of the server's and one of `model`'s places; `release(model)` gives them
        back."""
        held = self._per_model.get(model, 0)
        if self.in_flight >= self.max_in_flight:
            raise ResourceExhaustedError(
                f"the server holds {self.in_flight} requests, its limit (--max-in-flight); "
                "retry later or on another replica"
            )
        if held >= self.max_per_model:
            raise ResourceExhaustedError(
                f"the server holds {held} requests for model {model}, its limit per model "
                "(--max-in-flight-per-model); retry later or on another replica"
            )
        self.in_flight += 1
        self._per_model[model] = held + 1
        self._metrics.in_flight_of(model).inc()

    def release(self, model: str) -> None:
        self.in_flight -= 1
        self._per_model[model] -= 1
        self._metrics.in_flight_of(model).dec()
