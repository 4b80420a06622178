"""Every model in a model repository: `<root>/<name>/<version>/model.onnx` + `model.json`."""

from __future__ import annotations

import logging
from pathlib import Path

from stn_serve.contract import version_directories
from stn_serve.errors import DeviceUnavailableError, NotFoundError, StnServeError
from stn_serve.runtime.model import OnnxModel
from stn_serve.runtime.options import RuntimeOptions

log = logging.getLogger(__name__)


class ModelRepository:
    """Loads every model version under `root`; `get(name, version)` picks one.

    A version that fails to load (unreadable or corrupt model.onnx, inputs or outputs that break
    the contract, bad model.json) is logged with its path and reason, recorded in `failures`, and
    left out; the others are served. A device that cannot be used (`--device cuda` without CUDA)
    is not a per-model failure: it raises `DeviceUnavailableError`.
    """

    def __init__(self, root: Path, options: RuntimeOptions | None = None):
        self.root = Path(root)
        self.options = options or RuntimeOptions()
        self.failures: dict[Path, str] = {}
        self._models: dict[str, dict[int, OnnxModel]] = {}

    def load(self) -> ModelRepository:
        if not self.root.is_dir():
            raise NotFoundError(f"model repository {self.root} is not a folder")
        for directory in version_directories(self.root):
            try:
                model = OnnxModel(directory, self.options).load()
            except DeviceUnavailableError:
                raise
            except StnServeError as error:
                self.failures[directory] = str(error)
                log.error("model left out", extra={"path": str(directory), "reason": str(error)})
                continue
            self._models.setdefault(model.name, {})[model.version] = model
        return self

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def models(self) -> list[OnnxModel]:
        return [self._models[name][v] for name in self.names() for v in self.versions(name)]

    def get(self, name: str, version: int = 0) -> OnnxModel:
        """The model `name` at `version` (0 = the newest loaded). An empty name picks the only model."""
        if not name:
            if len(self._models) != 1:
                raise NotFoundError(f"name a model: the server holds {self.names()}")
            name = self.names()[0]
        versions = self._models.get(name)
        if not versions:
            raise NotFoundError(f"unknown model {name!r}; loaded models: {self.names()}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise NotFoundError(
                f"model {name!r} has no version {version}; loaded versions: {sorted(versions)}"
            )
        return versions[version]

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(m.ready for m in self.models())

    def unload(self) -> None:
        for model in self.models():
            model.unload()
