"""A model's serving settings from its `config.pbtxt`, Triton's model configuration.

`read_settings(model_dir)` parses the file with protobuf's text format against Triton's
`ModelConfig` message (generated from protos/inference/model_config.proto, so tritonclient is not
needed) and returns a `ModelSettings`, which callers use without protobuf. What stn-serve follows:
`max_batch_size`, `dynamic_batching.max_queue_delay_microseconds`, the `instance_group` counts and
`version_policy`; each overrides the server's flag for this model when the file sets it (a value
of 0, which proto3 cannot tell from an absent one, leaves the flag in force). Any other
field the file sets is named in `ModelSettings.ignored` and logged once, when the file is read.
A model folder without the file gets `ModelSettings()`: the flags, and every version served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import text_format

from stn_serve._proto.inference import model_config_pb2
from stn_serve.contract import CONFIG_FILE, INPUT_NAME, MODEL_FILE, OUTPUT_NAMES, ModelSpec
from stn_serve.contract.model_config import DATA_TYPE, PLATFORM
from stn_serve.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Triton's version policies: every version, the newest N, or the ones listed.
VERSION_POLICIES = ("all", "latest", "specific")
#: The backend name Triton also accepts in place of `platform`.
BACKEND = "onnxruntime"
#: A config.pbtxt is a few hundred bytes; a file far larger is not one.
MAX_CONFIG_BYTES = 1 << 20

# Fields stn-serve follows or checks, as dotted paths; a path ending a branch covers what is below.
_FOLLOWED = frozenset(
    {
        "name",
        "platform",
        "backend",
        "default_model_filename",
        "max_batch_size",
        "input.name",
        "input.data_type",
        "input.dims",
        "output.name",
        "output.data_type",
        "output.dims",
        "dynamic_batching.max_queue_delay_microseconds",
        "instance_group.name",
        "instance_group.count",
        "instance_group.kind",
        "version_policy",
    }
)
_BRANCHES = frozenset(path.rsplit(".", 1)[0] for path in _FOLLOWED if "." in path)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: `all`, the newest `num_versions` (`latest`), or
    the `versions` listed (`specific`)."""

    kind: str = "all"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in VERSION_POLICIES:
            raise InvalidInputError(
                f"version policy must be one of {list(VERSION_POLICIES)}, got {self.kind!r}"
            )
        if self.kind == "latest" and self.num_versions < 1:
            raise InvalidInputError(
                f"version_policy latest needs num_versions >= 1, got {self.num_versions}"
            )
        if self.kind == "specific" and (not self.versions or min(self.versions) < 1):
            raise InvalidInputError(
                f"version_policy specific needs positive versions, got {list(self.versions)}"
            )

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions of `available` this policy serves, ascending."""
        versions = sorted(set(available))
        if self.kind == "latest":
            return versions[-self.num_versions :]
        if self.kind == "specific":
            return [v for v in versions if v in self.versions]
        return versions

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return "all"


@dataclass(frozen=True)
class Batching:
    """How one model's requests are batched and run: most images merged into one run, how long
    the first request of a batch waits for others, and runs of one version at once."""

    max_batch_size: int
    max_queue_delay_us: int
    instances: int


@dataclass(frozen=True)
class ModelSettings:
    """A model's settings as its config.pbtxt gives them; None = the file does not set it.

    declared: the dims (without the batch dimension) of each input and output the file lists.
    path: the config.pbtxt read (None: the model has none). text: its contents.
    ignored: fields the file sets that stn-serve does not follow (logged when read).
    """

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    instances: int | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    declared: dict[str, tuple[int, ...]] = field(default_factory=dict)
    path: Path | None = None
    text: str = ""
    ignored: tuple[str, ...] = ()

    @property
    def batching_key(self) -> tuple:
        """The fields a loaded version is warmed up and batched by; a change to any of them
        reloads the model's versions (as Triton reloads a model whose configuration changed)."""
        return self.max_batch_size, self.max_queue_delay_us, self.instances

    def batching(self, defaults: Batching) -> Batching:
        """`defaults` (the server's flags) with what this file sets in their place."""
        given = {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "instances": self.instances,
        }
        return replace(defaults, **{k: v for k, v in given.items() if v is not None})

    def disagreements(self, spec: ModelSpec) -> list[str]:
        """Where the file's inputs and outputs contradict a version's model.json (which is what
        stn-serve serves by; Triton would refuse such a version)."""
        expected = {INPUT_NAME: spec.input_shape, **spec.output_shapes}
        return [
            f"{name!r} has dims {list(dims)}, model.json {list(expected[name])}"
            for name, dims in self.declared.items()
            if dims != tuple(expected[name])
        ]


def parse_config(text: str, path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt's text -> Triton's `ModelConfig` message (InvalidInputError naming `path`)."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise InvalidInputError(f"{path}: not a Triton model configuration: {error}") from None


def set_fields(message, prefix: str = "") -> list[str]:
    """Dotted paths of the fields set in `message` that stn-serve does not follow, each once."""
    found: list[str] = []
    for descriptor, value in message.ListFields():
        path = prefix + descriptor.name
        if path in _FOLLOWED:
            continue
        if path in _BRANCHES:
            children = value if descriptor.is_repeated else [value]
            for child in children:
                found += [p for p in set_fields(child, path + ".") if p not in found]
        else:
            found.append(path)
    return found


def read_settings(model_dir: Path) -> ModelSettings:
    """The settings in `<model_dir>/config.pbtxt`, or `ModelSettings()` when there is none.

    Raises:
        InvalidInputError: the file cannot be read or parsed, names another model, another
            platform, or sets a value stn-serve cannot follow (the message names which).
    """
    path = Path(model_dir) / CONFIG_FILE
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return ModelSettings()
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidInputError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config.pbtxt")
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: not UTF-8 text: {error}") from None
    config = parse_config(text, path)
    _check(config, path)
    settings = ModelSettings(
        # 0 (or absent) leaves it to the server, as Triton's auto-complete fills it in.
        max_batch_size=config.max_batch_size or None,
        # 0 is also what an empty `dynamic_batching { }` reads as: the server's flag.
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds or None,
        instances=sum(max(group.count, 1) for group in config.instance_group) or None,
        version_policy=_version_policy(config, path),
        declared={t.name: tuple(t.dims) for t in [*config.input, *config.output]},
        path=path,
        text=text,
        ignored=tuple(set_fields(config) + _unfollowed_values(config)),
    )
    if settings.ignored:
        log.warning(
            "model configuration fields not followed",
            extra={"path": str(path), "fields": list(settings.ignored)},
        )
    return settings


def _check(config: model_config_pb2.ModelConfig, path: Path) -> None:
    """Refuse a file that describes another model or values stn-serve cannot serve."""
    if config.name and config.name != path.parent.name:
        raise InvalidInputError(
            f"{path}: name is {config.name!r} but the model folder is {path.parent.name!r}"
        )
    if config.platform not in ("", PLATFORM) or config.backend not in ("", BACKEND):
        raise InvalidInputError(
            f"{path}: platform {config.platform!r} backend {config.backend!r}; stn-serve serves "
            f'ONNX models: platform "{PLATFORM}" (or backend "{BACKEND}")'
        )
    for tensor in [*config.input, *config.output]:
        if tensor.data_type not in (0, model_config_pb2.DataType.Value(DATA_TYPE)):
            raise InvalidInputError(
                f"{path}: {tensor.name!r} must have data_type {DATA_TYPE} (float32)"
            )
    names = [tensor.name for tensor in [*config.input, *config.output]]
    unknown = [name for name in names if name not in (INPUT_NAME, *OUTPUT_NAMES)]
    if unknown:
        raise InvalidInputError(
            f"{path}: unknown tensors {unknown}; models take {INPUT_NAME!r} and return "
            f"{list(OUTPUT_NAMES)}"
        )
    if config.max_batch_size < 0:
        raise InvalidInputError(
            f"{path}: max_batch_size must be >= 0 (0: the server's), got {config.max_batch_size}"
        )


def _version_policy(config: model_config_pb2.ModelConfig, path: Path) -> VersionPolicy:
    kind = config.version_policy.WhichOneof("policy_choice") or "latest"
    try:
        if kind == "latest":
            # Triton's default when the file sets no policy: the newest version only.
            latest = config.version_policy.latest
            return VersionPolicy("latest", num_versions=latest.num_versions or 1)
        if kind == "specific":
            versions = tuple(config.version_policy.specific.versions)
            return VersionPolicy("specific", versions=versions)
        return VersionPolicy("all")
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None


def _unfollowed_values(config: model_config_pb2.ModelConfig) -> list[str]:
    """Followed fields whose value stn-serve does not honour as Triton would."""
    found = []
    kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group}
    if kinds - {"KIND_AUTO"}:
        found.append(f"instance_group.kind {sorted(kinds)} (the device comes from --device)")
    if config.default_model_filename not in ("", MODEL_FILE):
        found.append(
            f"default_model_filename {config.default_model_filename!r} (reads {MODEL_FILE})"
        )
    return found
