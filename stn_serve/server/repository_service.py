"""The Open Inference Protocol's model repository extension, model configuration and model
statistics, answered as Triton answers them (so tritonclient's `get_model_repository_index`,
`load_model`, `unload_model`, `get_model_config` and `get_inference_statistics` work unchanged).

`RepositoryService` takes request messages and returns response messages; errors are the
project's (NotFoundError, NotAllowedError, InvalidInputError, ...), which the servicer answers
with their status codes through `stn_serve.contract.status`. It knows nothing of gRPC's context.
"""

from __future__ import annotations

from stn_serve._proto.inference import grpc_service_pb2 as pb
from stn_serve.contract.model_config import config_text
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.runtime.control import ModelControl
from stn_serve.runtime.settings import Batching, ModelSettings, parse_config
from stn_serve.runtime.states import State
from stn_serve.server.inference_service import requested_version
from stn_serve.server.statistics import Duration, InferenceStatistics, VersionCounts

#: The one load parameter stn-serve takes for unload (it has no ensembles, so it changes nothing).
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def statistics_message(name: str, version: int, counts: VersionCounts) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=str(version),
        last_inference=counts.last_inference_ms,
        inference_count=counts.inference_count,
        execution_count=counts.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(counts.success),
            fail=_duration(counts.fail),
            queue=_duration(counts.queue),
            compute_infer=_duration(counts.compute_infer),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(duration))
            for size, duration in sorted(counts.batches.items())
        ],
    )


def effective_config(spec, settings: ModelSettings, batching: Batching):
    """The model configuration a version is served with, as Triton's ModelConfig answer gives
    it: the model's config.pbtxt where it has one, completed from model.json and the server's
    settings (inputs, outputs, batching) where the file leaves something out."""
    config = parse_config(
        config_text(spec, batching.max_batch_size, batching.max_queue_delay_us, batching.instances),
        "the configuration derived from model.json",
    )
    if settings.path is not None:
        given = parse_config(settings.text, settings.path)
        for repeated in ("input", "output", "instance_group"):
            if getattr(given, repeated):
                config.ClearField(repeated)
        config.MergeFrom(given)
        config.max_batch_size = batching.max_batch_size
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    policy = settings.version_policy
    config.ClearField("version_policy")
    if policy.kind == "latest":
        config.version_policy.latest.num_versions = policy.num_versions
    elif policy.kind == "specific":
        config.version_policy.specific.versions.extend(policy.versions)
    else:
        config.version_policy.all.SetInParent()
    return config


class RepositoryService:
    """Answers RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload, ModelConfig and
    ModelStatistics for the repository `control` manages.

    Args:
        control: the server's model control (load and unload need explicit mode).
        statistics: what the batching layer recorded.
        defaults: the server's batching flags, which a model's config.pbtxt may override.
    """

    def __init__(self, control: ModelControl, statistics: InferenceStatistics, defaults: Batching):
        self.control = control
        self.repository = control.repository
        self.statistics = statistics
        self.defaults = defaults

    @staticmethod
    def _check_repository(name: str) -> None:
        if name:
            raise NotFoundError(
                f"unknown repository {name[:128]!r}: this server has one, named '' (leave it empty)"
            )

    def repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        """Every model in the repository with each known version's state; `ready`: only the
        ready ones. A model never loaded is listed by name alone, as Triton lists it."""
        self._check_repository(request.repository_name)
        index = pb.RepositoryIndexResponse.ModelIndex
        response = pb.RepositoryIndexResponse()
        for name in self.repository.model_names():
            states = self.repository.status(name)
            if request.ready:
                states = [s for s in states if s.state is State.READY]
            elif not states:
                response.models.append(index(name=name))
            response.models.extend(
                index(
                    name=name,
                    version=str(s.version) if s.version else "",
                    state=s.state.value,
                    reason=s.reason,
                )
                for s in states
            )
        return response

    def load(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        """Load or reload a model from its folder (explicit mode)."""
        self._check_repository(request.repository_name)
        if request.parameters:
            raise InvalidInputError(
                f"load parameters {sorted(request.parameters)[:8]} are not supported: stn-serve "
                "loads a model from its folder and config.pbtxt as they are"
            )
        self.control.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    def unload(self, request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        """Drain and unload every version of a model (explicit mode)."""
        self._check_repository(request.repository_name)
        unknown = sorted(set(request.parameters) - UNLOAD_PARAMETERS)
        if unknown:
            raise InvalidInputError(
                f"unload parameters {unknown[:8]} are not supported; it takes "
                f"{sorted(UNLOAD_PARAMETERS)}"
            )
        self.control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        model = self.repository.get(request.name, requested_version(request.version))
        settings = self.repository.settings(model.name)
        config = effective_config(model.spec, settings, settings.batching(self.defaults))
        return pb.ModelConfigResponse(config=config)

    def model_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """Totals per ready version: of every model (empty name), of one model, or of one
        version of it."""
        version = requested_version(request.version)
        if request.name:
            model = self.repository.get(request.name, version)  # raises unless it is ready
            versions = {model.name: [version] if version else self.repository.versions(model.name)}
        elif version:
            raise InvalidInputError("a model version needs a model name")
        else:
            versions = {name: self.repository.versions(name) for name in self.repository.names()}
        return pb.ModelStatisticsResponse(
            model_stats=[
                statistics_message(name, v, self.statistics.snapshot(name, v))
                for name, numbers in versions.items()
                for v in numbers
            ]
        )
