"""The generated gRPC code: in step with protos/, and wire-compatible with Triton's client."""

from __future__ import annotations

from pathlib import Path

from stn_serve import codegen

COMMITTED = Path(codegen.__file__).parent / "_proto"


def test_regenerating_changes_nothing(tmp_path):
    written = codegen.generate(tmp_path / "_proto")
    committed = sorted(
        p.relative_to(COMMITTED)
        for p in COMMITTED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(written) == committed
    for relative in written:
        fresh = (tmp_path / "_proto" / relative).read_bytes()
        assert fresh == (COMMITTED / relative).read_bytes(), (
            f"{relative} differs from a fresh `python -m stn_serve.codegen`; rerun it and commit"
        )


def test_generated_imports_are_package_qualified():
    for path in COMMITTED.rglob("*_pb2*.py"):
        for line in path.read_text().splitlines():
            if line.startswith("from ") and "_pb2" in line:
                assert line.startswith("from stn_serve._proto"), f"{path}: {line}"


def test_qualify_imports_leaves_other_packages_alone():
    source = "from stn.v1 import stn_pb2 as x\nfrom google.protobuf import any_pb2\n"
    assert codegen.qualify_imports(source, {"stn"}) == (
        "from stn_serve._proto.stn.v1 import stn_pb2 as x\nfrom google.protobuf import any_pb2\n"
    )


def _enum(enum) -> dict:
    return {value.name: value.number for value in enum.values}


def _fields(message) -> dict:
    """name -> (number, type, repeated, message or enum type name, oneof) for a message, and the
    same for its nested messages and enums."""
    fields = {
        field.name: (
            field.number,
            field.type,
            field.is_repeated,
            (field.message_type or field.enum_type).full_name
            if field.message_type or field.enum_type
            else None,
            field.containing_oneof.name if field.containing_oneof else None,
        )
        for field in message.fields
    }
    for nested in message.nested_types:
        fields[nested.name] = _fields(nested)
    for nested in message.enum_types:
        fields[nested.name] = _enum(nested)
    return fields


def test_inference_protocol_matches_tritonclient():
    """Every message and method stn-serve defines is wire-identical to Triton's definition."""
    from tritonclient.grpc import service_pb2

    from stn_serve._proto.inference import grpc_service_pb2

    ours, theirs = grpc_service_pb2.DESCRIPTOR, service_pb2.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    for name, message in ours.message_types_by_name.items():
        assert _fields(message) == _fields(theirs.message_types_by_name[name]), name
    our_service = ours.services_by_name["GRPCInferenceService"]
    their_service = theirs.services_by_name["GRPCInferenceService"]
    for method in our_service.methods:
        theirs_method = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == theirs_method.input_type.full_name
        assert method.output_type.full_name == theirs_method.output_type.full_name
        assert method.client_streaming == theirs_method.client_streaming
        assert method.server_streaming == theirs_method.server_streaming


def test_model_config_is_tritons_in_full():
    """Every message and enum of Triton's model configuration, field for field, so any
    config.pbtxt written for Triton parses here and the ModelConfig answer is wire-identical."""
    from tritonclient.grpc import model_config_pb2 as theirs

    from stn_serve._proto.inference import model_config_pb2 as ours

    assert ours.DESCRIPTOR.package == theirs.DESCRIPTOR.package == "inference"
    assert set(ours.DESCRIPTOR.message_types_by_name) == set(theirs.DESCRIPTOR.message_types_by_name)
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        assert _fields(message) == _fields(theirs.DESCRIPTOR.message_types_by_name[name]), name
    assert set(ours.DESCRIPTOR.enum_types_by_name) == set(theirs.DESCRIPTOR.enum_types_by_name)
    for name, enum in ours.DESCRIPTOR.enum_types_by_name.items():
        assert _enum(enum) == _enum(theirs.DESCRIPTOR.enum_types_by_name[name]), name


def test_generated_code_loads_beside_tritonclient():
    """Our descriptors live in their own pool, so both copies of `inference` load in one process."""
    from tritonclient.grpc import service_pb2

    from stn_serve._proto.inference import grpc_service_pb2

    request = grpc_service_pb2.ModelInferRequest(
        model_name="digits", raw_input_contents=[b"\0" * 4]
    )
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 1, 1])
    decoded = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.model_name == "digits"
    assert list(decoded.inputs[0].shape) == [1, 1, 1, 1]
