"""Loading just one model version of a repository, for a job that runs one model in process
(`stn-serve batch --repository`) and has no use for the others."""

from __future__ import annotations

from pathlib import Path

from stn_serve.contract import check_name
from stn_serve.errors import NotFoundError
from stn_serve.runtime.folders import model_folders, version_folders
from stn_serve.runtime.model import OnnxModel
from stn_serve.runtime.options import RuntimeOptions
from stn_serve.runtime.settings import read_settings


def open_version(
    root: Path, name: str = "", version: int = 0, options: RuntimeOptions | None = None
) -> OnnxModel:
    """Load and warm up `<root>/<name>/<version>/` alone.

    Args:
        name: the model; "" picks the repository's only model.
        version: 0 picks the newest version the model's config.pbtxt version policy serves (the
            one a server answers with by default).

    Raises:
        NotFoundError: no such repository, model or version; InvalidInputError: the version or
            the model's config.pbtxt cannot be loaded (the message names the file and why).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"model repository {root} is not a folder")
    models = model_folders(root)[0]
    if not name:
        if len(models) != 1:
            raise NotFoundError(f"name a model: {root} holds {sorted(models)}")
        name = next(iter(models))
    if check_name(name) not in models:
        raise NotFoundError(f"unknown model {name!r} in {root}; it holds {sorted(models)}")
    versions = version_folders(models[name])[0]
    if version == 0:
        served = read_settings(models[name]).version_policy.select(versions)
        if not served:
            raise NotFoundError(f"model {name!r} in {root} has no version to serve")
        version = served[-1]
    if version not in versions:
        raise NotFoundError(
            f"model {name!r} has no version {version}; versions: {sorted(versions)}"
        )
    return OnnxModel(versions[version], options).load()
