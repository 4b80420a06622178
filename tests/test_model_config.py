"""Triton's model configuration: the config.pbtxt export writes (checked with Triton's own
message class and against the ONNX graph) and the settings the runtime reads from it."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

from stn_serve.contract import CONFIG_FILE, ModelSpec
from stn_serve.contract.model_config import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    config_text,
)
from stn_serve.errors import InvalidInputError
from stn_serve.export.model_config import write_model_config
from stn_serve.runtime.settings import Batching, ModelSettings, VersionPolicy, read_settings

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32"}


def triton_config(path: Path):
    """config.pbtxt parsed with tritonclient's ModelConfig (Triton's own definition)."""
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def write_config(model_dir: Path, text: str) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(text)
    return path


def test_export_writes_a_triton_config_that_matches_the_graph(model_repository):
    from tritonclient.grpc import model_config_pb2

    config = triton_config(model_repository / "digits" / CONFIG_FILE)
    assert (config.name, config.platform) == ("digits", "onnxruntime_onnx")
    # Triton needs max_batch_size (dims leave out the batch dimension); dynamic batching is on
    # with no delay and no instance count of its own, so the server's flags decide those.
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(config.instance_group) == []
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    for version in (1, 2):  # written with version 1, true of every version
        graph = onnx.load(model_repository / "digits" / str(version) / "model.onnx").graph
        for declared, tensors in ((config.input, graph.input), (config.output, graph.output)):
            in_graph = {
                t.name: (
                    ONNX_TO_TRITON[t.type.tensor_type.elem_type],
                    [d.dim_value for d in t.type.tensor_type.shape.dim],
                )
                for t in tensors
            }
            for tensor in declared:
                data_type, dims = in_graph[tensor.name]
                assert model_config_pb2.DataType.Name(tensor.data_type) == data_type
                # The batch dimension (symbolic in the graph) is left out, as Triton expects
                # with max_batch_size > 0; every other dimension is Triton-valid (>= 1).
                assert [0, *tensor.dims] == dims and min(tensor.dims) >= 1, tensor.name
            assert {t.name for t in declared} == set(in_graph)


def test_config_is_created_with_the_first_version_and_kept(tmp_path, model_repository):
    spec = ModelSpec.read(model_repository / "digits" / "1" / "model.json")
    (tmp_path / "digits").mkdir()
    assert write_model_config(tmp_path, spec) == tmp_path / "digits" / CONFIG_FILE
    edited = (tmp_path / "digits" / CONFIG_FILE).read_text().replace("all { }", "latest { }")
    (tmp_path / "digits" / CONFIG_FILE).write_text(edited)
    assert write_model_config(tmp_path, spec) is None
    assert (tmp_path / "digits" / CONFIG_FILE).read_text() == edited


def test_zero_sized_outputs_are_left_out():
    spec = ModelSpec(
        "cnn",
        1,
        ("a", "b"),
        (1, 8, 8),
        {"logits": (2,), "probabilities": (2,), "crop": (1, 8, 8), "theta": (0,)},
    )
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_text(spec), model_config_pb2.ModelConfig())
    assert [t.name for t in config.output] == ["logits", "probabilities", "crop"]


# Reading it back (the runtime, without tritonclient) ---------------------------------------------


def test_an_exported_config_sets_the_batch_size_and_leaves_the_rest_to_the_flags(
    model_repository,
):
    settings = read_settings(model_repository / "digits")
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.instances) == (
        DEFAULT_MAX_BATCH_SIZE,
        None,
        None,
    )
    flags = Batching(max_batch_size=8, max_queue_delay_us=100, instances=3)
    assert settings.batching(flags) == Batching(DEFAULT_MAX_BATCH_SIZE, 100, 3)
    defaults = Batching(DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US, DEFAULT_INSTANCES)
    assert settings.batching(defaults) == defaults
    assert settings.version_policy == VersionPolicy("all") and settings.ignored == ()
    assert settings.declared["image"] == (1, 28, 28)


def test_missing_file_is_todays_behaviour(tmp_path):
    assert read_settings(tmp_path) == ModelSettings()
    assert ModelSettings().version_policy.select([3, 1, 2]) == [1, 2, 3]
    flags = Batching(max_batch_size=8, max_queue_delay_us=100, instances=2)
    assert ModelSettings().batching(flags) == flags


def test_set_fields_override_the_flags_and_the_rest_keep_them(tmp_path):
    write_config(
        tmp_path / "m",
        "max_batch_size: 4\ninstance_group [ { count: 2 }, { } ]\n"
        "version_policy { specific { versions: [1, 3] } }\n",
    )
    settings = read_settings(tmp_path / "m")
    flags = Batching(max_batch_size=32, max_queue_delay_us=2000, instances=1)
    # Two groups: 2 + 1 (Triton's count defaults to 1); no dynamic_batching: the flag's delay.
    assert settings.batching(flags) == Batching(4, 2000, 3)
    assert settings.version_policy.select([1, 2, 3, 4]) == [1, 3]


def test_dynamic_batching_without_a_delay_leaves_the_flags_delay(tmp_path):
    # proto3 cannot tell 0 from unset: 0 leaves the flag in force, as max_batch_size 0 does.
    write_config(tmp_path / "m", "dynamic_batching { max_queue_delay_microseconds: 0 }\n")
    settings = read_settings(tmp_path / "m")
    assert settings.max_queue_delay_us is None and settings.max_batch_size is None
    flags = Batching(max_batch_size=8, max_queue_delay_us=100, instances=2)
    assert settings.batching(flags) == flags
    write_config(tmp_path / "m", "dynamic_batching { max_queue_delay_microseconds: 1 }\n")
    assert read_settings(tmp_path / "m").batching(flags) == Batching(8, 1, 2)


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        ("", [1, 2, 3], [3]),  # Triton's default when the file sets none: the newest
        ("version_policy { latest { num_versions: 2 } }", [1, 5, 3], [3, 5]),
        ("version_policy { all { } }", [2, 1], [1, 2]),
        ("version_policy { specific { versions: [2, 9] } }", [1, 2, 3], [2]),
    ],
)
def test_version_policies(tmp_path, policy, available, served):
    write_config(tmp_path / "m", policy)
    assert read_settings(tmp_path / "m").version_policy.select(available) == served


def test_fields_not_followed_are_reported_once_at_read(tmp_path, caplog):
    write_config(
        tmp_path / "m",
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 50 }\n"
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [0] } ]\n"
        "optimization { execution_accelerators { gpu_execution_accelerator [ "
        '{ name: "tensorrt" } ] } }\n'
        'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] '
        'label_filename: "labels.txt" } ]\n'
        'parameters { key: "x" value { string_value: "y" } }\n',
    )
    with caplog.at_level(logging.WARNING):
        settings = read_settings(tmp_path / "m")
    assert (settings.max_batch_size, settings.max_queue_delay_us) == (8, 50)
    assert set(settings.ignored) == {
        "output.label_filename",
        "dynamic_batching.preferred_batch_size",
        "instance_group.gpus",
        "optimization",
        "parameters",
        "instance_group.kind ['KIND_GPU'] (the device comes from --device)",
    }
    (record,) = [
        r for r in caplog.records if r.message == "model configuration fields not followed"
    ]
    assert record.fields == list(settings.ignored)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: [", r"config\.pbtxt: not a Triton model configuration: 1:17"),
        ("bogus_field: 1", r'has no field named "bogus_field"'),
        ('name: "other"', r"name is 'other' but the model folder is 'm'"),
        ('platform: "tensorrt_plan"', r'stn-serve serves ONNX models: platform "onnxruntime_onnx"'),
        ("max_batch_size: -2", r"max_batch_size must be >= 0"),
        ('input [ { name: "image" data_type: TYPE_UINT8 } ]', r"must have data_type TYPE_FP32"),
        ('output [ { name: "boxes" } ]', r"unknown tensors \['boxes'\]"),
        ("version_policy { specific { } }", r"version_policy specific needs positive versions"),
    ],
)
def test_a_bad_config_is_refused_naming_the_file(tmp_path, text, message):
    path = write_config(tmp_path / "m", text)
    with pytest.raises(InvalidInputError, match=message) as error:
        read_settings(tmp_path / "m")
    assert str(path) in str(error.value)


def test_a_huge_or_binary_file_is_refused(tmp_path):
    path = write_config(tmp_path / "m", "")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidInputError, match="not UTF-8 text"):
        read_settings(tmp_path / "m")
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(InvalidInputError, match="larger than 1048576 bytes"):
        read_settings(tmp_path / "m")


def test_disagreements_with_model_json_are_named(tmp_path, model_repository):
    spec = ModelSpec.read(model_repository / "digits" / "1" / "model.json")
    write_config(tmp_path / "digits", 'output [ { name: "logits" dims: [ 7 ] } ]')
    assert read_settings(tmp_path / "digits").disagreements(spec) == [
        "'logits' has dims [7], model.json [10]"
    ]
    assert read_settings(model_repository / "digits").disagreements(spec) == []
