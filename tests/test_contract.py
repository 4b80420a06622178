"""The contract between training and serving: model.json round trips through ModelSpec, the
repository layout reads versions strictly, and the status table maps both ways."""

from __future__ import annotations

import json

import pytest
from conftest import model_json

from stn_serve.contract import (
    STATUS_CODES,
    ModelSpec,
    error_type_for,
    is_version_directory,
    parse_version,
    status_of,
)
from stn_serve.errors import InvalidInputError, NotFoundError, StnServeError


def test_model_json_round_trips_through_the_spec():
    document = model_json("digits", 3)
    spec = ModelSpec.from_json(document, "model.json")
    assert spec.to_json() == {**document, "padding_mode": "zeros", "align_corners": False}
    assert ModelSpec.from_json(json.loads(spec.dumps())) == spec
    assert (spec.num_classes, spec.crop_shape, spec.num_params) == (10, (1, 28, 28), 6)


def test_the_spec_reads_a_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**model_json("digits", 1), "padding_mode": "mirror"}))
    with pytest.raises(InvalidInputError, match=rf"{path}: padding_mode must be one of"):
        ModelSpec.read(path)
    path.write_text(json.dumps(model_json("digits", 1)))
    assert ModelSpec.read(path).name == "digits"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"transform": "spiral"}, "transform must be one of"),
        ({"align_corners": "yes"}, "align_corners must be a bool"),
        ({"opset": True}, "opset must be a int"),
        ({"normalisation": {"mean": [0.5, 0.5], "std": [0.5]}}, r"normalisation.mean must be 1"),
        ({"metrics": []}, "metrics must be a dict"),
    ],
)
def test_the_spec_checks_its_optional_fields(change, message):
    with pytest.raises(InvalidInputError, match=message):
        ModelSpec.from_json({**model_json("digits", 1), **change})


@pytest.mark.parametrize(
    "text, version",
    [("1", 1), ("12", 12), ("007", 7), ("0", None), ("", None), ("-1", None), ("+2", None),
     (" 3", None), ("\u00b2", None), ("\u0663", None), ("1.0", None), ("9" * 19, None)],
)
def test_versions_are_ascii_positive_integers(text, version):
    assert parse_version(text) == version


def test_version_directories_are_folders_named_by_a_version(tmp_path):
    for folder in ("digits/1", "digits/\u00b2", "digits/0"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "digits" / "5").write_text("a file, not a version")
    assert [is_version_directory(tmp_path / "digits" / name) for name in ("1", "\u00b2", "0", "5")] == [
        True, False, False, False
    ]


def test_the_status_table_maps_errors_to_codes_and_back():
    for error_type, code in STATUS_CODES:
        assert status_of(error_type("why")) == (code, "why")
        assert error_type_for(code) is error_type
    assert status_of(KeyError("secret detail")) == (
        "INTERNAL", "internal error; the server log has the details"
    )
    assert error_type_for("UNKNOWN") is StnServeError
    assert issubclass(error_type_for("NOT_FOUND"), NotFoundError)
