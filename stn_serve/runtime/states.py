"""What a repository knows of its models and versions: each version's state (as Triton's
repository index spells it), the loaded session, and what failed; changed only under the
repository's lock (`stn_serve.runtime.repository`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from stn_serve.runtime.lease import LoadedModel
from stn_serve.runtime.settings import ModelSettings


class State(str, enum.Enum):
    """A version's state, spelled as Triton's repository index spells it."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class VersionStatus:
    """One version's state as callers see it; `reason` says why it is UNAVAILABLE."""

    name: str
    version: int
    state: State
    reason: str = ""


class VersionRecord:
    """What the repository knows of one version folder; changed under the repository's lock."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.state = State.LOADING
        self.reason = ""
        self.loaded: LoadedModel | None = None
        self.signature: tuple | None = None  # of the files and settings `loaded` came from

    def answers(self) -> bool:
        return self.state is State.READY and self.loaded is not None and not self.loaded.retired


class ModelRecord:
    """What the repository knows of one model: its settings, versions and failures."""

    def __init__(self):
        self.settings = ModelSettings()
        self.settings_usable = False  # a config.pbtxt that failed first time leaves none usable
        self.config_error = ""  # why the current config.pbtxt was refused
        self.config_signature: object = ()  # () = never read
        self.versions: dict[int, VersionRecord] = {}
        self.failed: dict[int, tuple] = {}  # version -> (files, batching) signature that failed
        self.skipped: set[Path] = set()  # folders already reported as left out

    def ready(self) -> dict[int, VersionRecord]:
        """The versions that answer: READY, with a session that still takes leases."""
        return {v: r for v, r in self.versions.items() if r.answers()}

    def served(self) -> tuple[frozenset[LoadedModel], ModelSettings]:
        """What the server's view of this model depends on: the sessions that answer and the
        settings (a listener hears of a change to either)."""
        return frozenset(r.loaded for r in self.ready().values()), self.settings
