"""A live model repository: `<root>/<name>/<version>/model.onnx` + `model.json`, and each
model's `config.pbtxt` (Triton's model configuration, `stn_serve.runtime.settings`).

Each version has a state: LOADING, READY, UNLOADING or UNAVAILABLE (with the reason). Only READY
versions answer. `load()` loads what every model's version policy selects; `rescan()` brings the
served versions in line with the folders as they are now; `load_model(name)` and
`unload_model(name)` do so for one model (Triton's explicit model control). In each:
- a new or changed version is loaded and warmed up before it answers, while the one it replaces
  keeps answering;
- a version that fails to load never replaces one that serves: the policy picks among the
  versions that loaded (a broken newest version leaves the one before it serving);
- a version that goes away is drained (requests holding a lease on it finish, up to
  `drain_timeout_s`) and then unloaded; it answers no new request from the moment it starts
  draining;
- a change to the batching settings in config.pbtxt (max_batch_size, queue delay, instance
  counts) reloads the model's versions the same way, so each is warmed up and batched as the
  file now says;
- any error while loading or warming one version (ONNX Runtime, MemoryError, a bad model.json or
  folder name) is logged with the path and reason and leaves that version out; the rest is served.
A version that failed is tried again when its files or the model's batching settings change.
Listeners (`add_listener`) hear of every change to what answers: when a version stops answering
(before it drains), when one starts, and when a drained one has been unloaded.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from stn_serve.contract import CONFIG_FILE, check_name
from stn_serve.errors import (
    DeviceUnavailableError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    StnServeError,
)
from stn_serve.runtime.folders import (
    config_signature,
    model_folders,
    version_folders,
    version_signature,
)
from stn_serve.runtime.lease import Lease, LoadedModel
from stn_serve.runtime.model import OnnxModel
from stn_serve.runtime.options import RuntimeOptions
from stn_serve.runtime.settings import ModelSettings, read_settings
from stn_serve.runtime.states import ModelRecord, State, VersionRecord, VersionStatus

log = logging.getLogger(__name__)

#: How long unloading a version waits for the requests holding it, in seconds.
DRAIN_TIMEOUT_S = 30.0
# Client-supplied names are cut to this many characters in error messages.
_SHOWN = 128


class ModelRepository:
    """The models under `root` and the state of each version; see the module's docstring.

    Every public method is safe to call from any thread. Requests take `acquire(name, version)`,
    which holds the version until the lease is released; `get` picks a ready version without
    holding it. `failures` maps each version folder (or config.pbtxt) that currently fails to
    the reason. A device that cannot be used (`--device cuda` without CUDA) fails `load()`.
    """

    def __init__(
        self,
        root: Path,
        options: RuntimeOptions | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ):
        self.root = Path(root)
        self.options = options or RuntimeOptions()
        self.drain_timeout_s = drain_timeout_s
        self.failures: dict[Path, str] = {}
        self._models: dict[str, ModelRecord] = {}
        self._skipped: set[Path] = set()
        self._lock = threading.Lock()  # guards the state above; held briefly
        self._changes = threading.Lock()  # one load, rescan or unload at a time
        self._listeners: list[Callable[[str], None]] = []
        self._device_error: DeviceUnavailableError | None = None

    # Changing what is served -------------------------------------------------------------------

    def load(self) -> ModelRepository:
        """Load every model's versions (those its version policy selects)."""
        with self._changes:
            for name in self._folders():
                self._sync(name)
        if self._device_error is not None:
            raise self._device_error
        return self

    def rescan(self) -> None:
        """Load what appeared or changed, drain and unload what went away."""
        with self._changes:
            if not self.root.is_dir():
                log.error("model repository is gone; serving on", extra={"path": str(self.root)})
                return
            on_disk = self._folders()
            for name in on_disk:
                self._sync(name)
            for name in set(self._models) - set(on_disk):
                self._unload(name, reason="removed from the repository")

    def load_model(self, name: str) -> None:
        """Load (or reload) model `name` from its folder, as Triton's explicit load does: new or
        changed versions load before they replace the ones serving, which keep serving if they
        fail. Raises NotFoundError without the folder, InvalidInputError (with the reasons) when
        no version is ready afterwards."""
        check_name(name)
        if not (self.root / name).is_dir():
            raise NotFoundError(f"no model {name!r} in the repository")
        with self._changes:
            self._sync(name)
        if not self.versions(name):
            reasons = [
                f"version {s.version}: {s.reason}" if s.version else s.reason
                for s in self.status(name)
                if s.reason
            ]
            raise InvalidInputError(
                f"model {name!r}: no version loaded ({'; '.join(reasons) or 'no version folder'})"
            )

    def unload_model(self, name: str) -> None:
        """Drain and unload every version of `name`."""
        with self._lock:
            known = name in self._models
        if not known:
            raise NotFoundError(f"no model {name[:_SHOWN]!r} has been loaded")
        with self._changes:
            self._unload(name, reason="unloaded")

    def unload(self) -> None:
        """Unload everything at once (shutting down: the server drained its requests already)."""
        with self._changes:
            for name in list(self._models):
                self._unload(name, reason="unloaded", drain_timeout_s=0)

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(model name)` after a change to which versions of it answer (a
        version that starts draining no longer does), to their sessions, or to the model's
        settings, and once more when a drained version has been unloaded (from the thread that
        made the change)."""
        self._listeners.append(listener)

    # Serving ------------------------------------------------------------------------------------

    def acquire(self, name: str, version: int = 0) -> Lease:
        """A lease on the ready version (0 = the newest ready) of `name` ("" = the only model).

        Unloading waits for it: release it when the request is answered (`with` does).
        Raises NotFoundError (no such model or version) or NotReadyError (it is loading or
        being unloaded). A version that begins to retire while it is picked is passed over:
        version 0 goes to the newest that still answers.
        """
        with self._lock:
            while True:
                lease = self._pick(name, version).loaded.lease()
                if lease is not None:
                    return lease
                # Retired in between: `ready()` leaves it out from now on, so the next pick
                # finds another version or raises.

    def get(self, name: str, version: int = 0) -> OnnxModel:
        """The ready model `name` at `version`, like `acquire` but without holding it."""
        with self._lock:
            return self._pick(name, version).loaded.model

    def names(self) -> list[str]:
        """Models with a version ready."""
        with self._lock:
            return self._ready_names()

    def _ready_names(self) -> list[str]:
        """Models with a version ready, sorted; call with the lock held."""
        return sorted(name for name, model in self._models.items() if model.ready())

    def versions(self, name: str) -> list[int]:
        """Ready versions of `name`, ascending."""
        with self._lock:
            model = self._models.get(name)
            return sorted(model.ready()) if model else []

    def models(self) -> list[OnnxModel]:
        """Every ready model version, by name and version."""
        with self._lock:
            return [
                model.ready()[v].loaded.model
                for _, model in sorted(self._models.items())
                for v in sorted(model.ready())
            ]

    @property
    def ready(self) -> bool:
        """Whether any model has a version ready."""
        return bool(self.names())

    def status(self, name: str | None = None) -> list[VersionStatus]:
        """The state of every version the repository knows (of `name` only, if given). A model
        whose config.pbtxt is refused has an entry of version 0, UNAVAILABLE, with the reason."""
        found = []
        with self._lock:
            for model_name, model in sorted(self._models.items()):
                if name is not None and model_name != name:
                    continue
                if model.config_error:
                    found.append(
                        VersionStatus(model_name, 0, State.UNAVAILABLE, model.config_error)
                    )
                found += [
                    VersionStatus(model_name, v, record.state, record.reason)
                    for v, record in sorted(model.versions.items())
                ]
        return found

    def model_names(self) -> list[str]:
        """Every model in the repository folder or loaded from it, ready or not."""
        on_disk = model_folders(self.root)[0] if self.root.is_dir() else {}
        with self._lock:
            return sorted(set(on_disk) | set(self._models))

    def settings(self, name: str) -> ModelSettings:
        """The settings of `name` from its config.pbtxt (defaults where it has none)."""
        with self._lock:
            model = self._models.get(name)
            return model.settings if model else ModelSettings()

    # Internals ----------------------------------------------------------------------------------

    def _pick(self, name: str, version: int) -> VersionRecord:
        """The ready record for (name, version); call with the lock held. (Runs for every
        request: the list of ready models is made only where it is needed.)"""
        if not name:
            ready_names = self._ready_names()
            if len(ready_names) != 1:
                raise NotFoundError(f"name a model: the server holds {ready_names}")
            name = ready_names[0]
        model = self._models.get(name)
        if model is None or not model.versions:
            raise NotFoundError(
                f"unknown model {name[:_SHOWN]!r}; loaded models: {self._ready_names()}"
            )
        ready = model.ready()
        if version in ready or (version == 0 and ready):
            return ready[version or max(ready)]
        record = model.versions.get(version) if version else None
        busy = [r for r in ([record] if version else model.versions.values()) if r]
        if any(r.state is not State.UNAVAILABLE for r in busy):  # loading or retiring
            what = f"version {version} is" if version else "its versions are"
            raise NotReadyError(f"model {name!r}: {what} loading or unloading; try again")
        if version == 0:
            raise NotFoundError(f"model {name!r} has no version loaded")
        raise NotFoundError(
            f"model {name!r} has no version {version}; loaded versions: {sorted(ready)}"
        )

    def _folders(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise NotFoundError(f"model repository {self.root} is not a folder")
        folders, skipped = model_folders(self.root)
        self._report_skipped(skipped, self._skipped)
        return folders

    @staticmethod
    def _report_skipped(skipped, already: set[Path]) -> None:
        for path, reason in skipped:
            if path not in already:
                already.add(path)
                log.warning("folder left out", extra={"path": str(path), "reason": reason})

    def _sync(self, name: str) -> None:
        """Bring model `name`'s loaded versions in line with its folder; `_changes` held."""
        model_dir = self.root / name
        with self._lock:
            model = self._models.setdefault(name, ModelRecord())
            before = model.served()
        if self._refresh_settings(model, model_dir):
            try:
                on_disk, skipped = version_folders(model_dir)
            except OSError as error:
                log.error(
                    "model folder unreadable", extra={"path": str(model_dir), "reason": str(error)}
                )
                on_disk, skipped = {}, []
            self._report_skipped(skipped, model.skipped)
            batching = model.settings.batching_key
            key = {v: (version_signature(d), batching) for v, d in on_disk.items()}
            while True:
                # A version is a candidate unless it failed with these very files and serves
                # nothing (one whose reload failed keeps serving what it loaded before).
                failed = {v for v in on_disk if model.failed.get(v) == key[v]}
                candidates = [v for v in on_disk if v not in failed or self._serving(model, v)]
                wanted = model.settings.version_policy.select(candidates)
                stale = [
                    v for v in wanted if v not in failed and not self._current(model, v, key[v])
                ]
                if not stale:
                    break
                for v in reversed(stale):
                    self._load_version(model, v, on_disk[v], key[v])
            self._retire(name, model, [v for v in model.versions if v not in wanted], set(on_disk))
        with self._lock:
            after = model.served()
        self._notify(name, before != after)

    def _refresh_settings(self, model: ModelRecord, model_dir: Path) -> bool:
        """Re-read config.pbtxt if it changed; whether the model has usable settings. A file
        that fails keeps the settings read before (and is reported once per change)."""
        signature = config_signature(model_dir)
        if signature == model.config_signature:
            return model.settings_usable
        model.config_signature = signature
        path = model_dir / CONFIG_FILE
        try:
            settings = read_settings(model_dir)
        except StnServeError as error:
            log.error(
                "model configuration refused", extra={"path": str(path), "reason": str(error)}
            )
            with self._lock:
                self.failures[path] = model.config_error = str(error)
            return model.settings_usable
        with self._lock:
            model.settings, model.settings_usable, model.config_error = settings, True, ""
            self.failures.pop(path, None)
        return True

    @staticmethod
    def _serving(model: ModelRecord, version: int) -> bool:
        record = model.versions.get(version)
        return record is not None and record.loaded is not None

    def _current(self, model: ModelRecord, version: int, key: tuple) -> bool:
        """Whether `version` serves a session loaded from these files with these settings."""
        return self._serving(model, version) and model.versions[version].signature == key

    def _options_for(self, settings: ModelSettings) -> RuntimeOptions:
        """The runtime options, warming up at the model's own max_batch_size where it sets one."""
        if settings.max_batch_size is None:
            return self.options
        sizes = tuple(sorted({1, settings.max_batch_size}))
        return dataclasses.replace(self.options, warmup_batch_sizes=sizes)

    def _load_version(self, model: ModelRecord, version: int, directory: Path, key: tuple) -> None:
        with self._lock:
            record = model.versions.setdefault(version, VersionRecord(directory))
            if record.loaded is None:
                record.state, record.reason = State.LOADING, ""
        try:
            loaded = OnnxModel(directory, self._options_for(model.settings)).load()
        except Exception as error:  # one version's failure never stops the rest
            reason = str(error) if isinstance(error, StnServeError) else repr(error)
            log.error(
                "model left out",
                extra={"path": str(directory), "reason": reason},
                exc_info=not isinstance(error, StnServeError),
            )
            if isinstance(error, DeviceUnavailableError):
                self._device_error = error
            with self._lock:
                model.failed[version] = key
                self.failures[directory] = reason
                if record.loaded is None:
                    record.state, record.reason = State.UNAVAILABLE, reason
            return
        disagreements = model.settings.disagreements(loaded.spec)
        if disagreements:
            log.warning(
                "config.pbtxt disagrees with model.json; serving by model.json",
                extra={"path": str(directory), "reason": "; ".join(disagreements)},
            )
        with self._lock:
            replaced = record.loaded
            record.loaded, record.signature = LoadedModel(loaded), key
            record.state, record.reason = State.READY, ""
            model.failed.pop(version, None)
            self.failures.pop(directory, None)
        if replaced is not None:
            self._drain(replaced, directory)

    def _retire(
        self, name: str, model: ModelRecord, versions: list[int], on_disk: set[int]
    ) -> None:
        """Drain and unload `versions` of model `name`; forget those whose folder is gone."""
        draining = []
        with self._lock:
            for v in versions:
                record = model.versions[v]
                if record.loaded is not None:
                    record.state = State.UNLOADING
                    draining.append((v, record, record.loaded))
                    record.loaded = None
                elif v not in on_disk:
                    del model.versions[v]
                    model.failed.pop(v, None)
                    self.failures.pop(record.directory, None)
        self._notify(name, bool(draining))  # they answer no more: health before the drain
        for v, record, loaded in draining:
            self._drain(loaded, record.directory)
            with self._lock:
                if v in on_disk:
                    record.state, record.reason = State.UNAVAILABLE, "unloaded"
                else:
                    model.versions.pop(v, None)

    def _drain(self, loaded: LoadedModel, directory: Path, timeout: float | None = None) -> None:
        timeout = self.drain_timeout_s if timeout is None else timeout
        in_flight = loaded.leases
        if loaded.retire(timeout):
            log.info("model unloaded", extra={"path": str(directory), "drained": in_flight})
        else:
            log.warning(
                "model unloaded with requests still holding it",
                extra={"path": str(directory), "drain_timeout_s": timeout},
            )

    def _unload(self, name: str, reason: str, drain_timeout_s: float | None = None) -> None:
        with self._lock:
            model = self._models.get(name)
            draining = [
                (record, record.loaded) for record in model.versions.values() if record.loaded
            ]
            for record, _ in draining:
                record.state, record.loaded = State.UNLOADING, None
            before = bool(model.ready()) or bool(draining)
        self._notify(name, bool(draining))  # they answer no more: health before the drain
        for record, loaded in draining:
            self._drain(loaded, record.directory, drain_timeout_s)
            with self._lock:
                record.state, record.reason = State.UNAVAILABLE, reason
        if reason != "unloaded":
            with self._lock:
                del self._models[name]
                for path in [p for p in self.failures if p.is_relative_to(self.root / name)]:
                    del self.failures[path]
        self._notify(name, before)

    def _notify(self, name: str, changed: bool) -> None:
        if not changed:
            return
        for listener in self._listeners:
            try:
                listener(name)
            except Exception:  # a listener's bug must not stop a rescan
                log.exception("repository listener failed", extra={"model": name})
