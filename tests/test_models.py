"""Models: shapes for every transform family and both archs, identity start, parameter budget,
normalisation inside the model, and config validation."""

from __future__ import annotations

import pytest
import torch

from stn_serve.contract import TRANSFORMS
from stn_serve.errors import InvalidInputError
from stn_serve.models import (
    ARCHS,
    ModelConfig,
    ModelOutput,
    SpatialTransformer,
    build_model,
    count_parameters,
    matched_baseline_config,
)
from stn_serve.ops.transforms import make_transform

RTS = {"input_size": (42, 42), "crop_size": (28, 28)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_output_shapes(arch, transform):
    config = ModelConfig(
        arch=arch,
        transform=transform,
        in_channels=3,
        num_classes=7,
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.3, 0.4),
        **RTS,
    )
    model = build_model(config)
    image = torch.rand(5, 3, 42, 42, requires_grad=True)
    output = model(image)
    assert isinstance(output, ModelOutput)
    params = make_transform(transform, (28, 28)).num_params if arch == "stcnn" else 0
    crop = (5, 3, 28, 28) if arch == "stcnn" else (5, 3, 42, 42)
    assert output.logits.shape == (5, 7)
    assert output.crop.shape == crop
    assert output.theta.shape == (5, params)
    output.logits.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_stcnn_starts_at_identity(transform):
    torch.manual_seed(0)
    model = build_model(ModelConfig(transform=transform, input_size=(28, 28))).eval()
    image = torch.rand(4, 1, 28, 28)
    output = model(image)
    identity = model.transformer.grid_generator.identity_params()
    # Random images and weights everywhere else: only a zero-weight, identity-bias head gives this.
    assert torch.allclose(output.theta, identity.expand(4, -1))
    assert torch.allclose(output.crop, image, atol=1e-5)


def test_crop_is_sampled_from_raw_pixels():
    """The localisation net sees the normalised image, but the crop keeps the input's [0, 1] range."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(mean=(0.3,), std=(0.1,), input_size=(28, 28), crop_size=(20, 20))
    ).eval()
    image = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        model.transformer.localisation.head.weight.normal_(std=0.01)  # leave the identity
        crop = model(image).crop
        expected_crop, _ = model.transformer(image, loc_input=(image - 0.3) / 0.1)
        logits = model.classifier((crop - 0.3) / 0.1)
    assert torch.equal(crop, expected_crop)
    assert torch.allclose(model(image).logits, logits)
    assert crop.min() >= 0 and crop.max() <= 1


def test_cnn_baseline_passes_input_through_and_normalises():
    model = build_model(ModelConfig(arch="cnn", mean=(0.5,), std=(0.25,))).eval()
    image = torch.rand(3, 1, 28, 28)
    output = model(image)
    assert output.crop is image
    assert output.theta.shape == (3, 0)
    assert torch.allclose(output.logits, model.classifier((image - 0.5) / 0.25))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        RTS,
        {**RTS, "transform": "tps", "depth": 3, "width": 32},
        {"in_channels": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3},
    ],
)
def test_matched_baseline_within_ten_percent(overrides):
    stcnn = ModelConfig(**overrides)
    baseline = matched_baseline_config(stcnn)
    assert baseline.arch == "cnn" and baseline.depth == stcnn.depth
    ours, theirs = count_parameters(build_model(stcnn)), count_parameters(build_model(baseline))
    assert abs(theirs - ours) <= 0.1 * ours, (ours, theirs)


def test_spatial_transformer_output_size_differs_from_input():
    localisation = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 24, 6))
    transformer = SpatialTransformer(
        localisation, "affine", (8, 12), padding_mode="border", align_corners=True
    )
    crop, theta = transformer(torch.rand(2, 3, 16, 24))
    assert crop.shape == (2, 3, 8, 12) and theta.shape == (2, 6)
    assert "crop_size=(8, 12)" in repr(transformer)


@pytest.mark.parametrize("transform", ["similarity", "affine"])
def test_native_ops_sample_the_same_crop_with_torchs_own_layer(transform):
    # What `stn-serve bench layer --train-step` compares: the same model, weights and batch.
    torch.manual_seed(0)
    model = build_model(ModelConfig(transform=transform, **RTS))
    image = torch.rand(3, 1, 42, 42)
    with torch.no_grad():
        # Transforms away from the identity, a different one for each image.
        model.transformer.localisation.head.weight.normal_(std=0.05)
        ours = model(image)
        model.transformer.native_ops = True
        theirs = model(image)
    torch.testing.assert_close(theirs.crop, ours.crop, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs.logits, ours.logits, atol=1e-4, rtol=1e-4)


def test_native_ops_need_an_affine_family():
    model = build_model(ModelConfig(transform="tps", **RTS))
    model.transformer.native_ops = True
    with pytest.raises(InvalidInputError, match="native_ops needs an affine transform family"):
        model(torch.rand(2, 1, 42, 42))


def test_config_round_trips_through_plain_dict():
    config = ModelConfig(transform="similarity", padding_mode="border", **RTS)
    data = config.to_dict()
    assert all(not isinstance(value, tuple) for value in data.values())
    assert ModelConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "resnet"}, "arch must be one of"),
        ({"transform": "warp"}, "transform must be one of"),
        ({"padding_mode": "wrap"}, "padding_mode must be one of"),
        ({"mean": (0.5, 0.5)}, "mean needs one value per channel"),
        ({"std": (0.0,)}, "std values must be > 0"),
        ({"width": 0}, "width must be a positive integer"),
        ({"input_size": (3, 3)}, "too small"),
        ({"crop_size": (2, 40)}, "too small"),
        ({"input_size": (28,)}, "input_size must be two positive integers"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        ModelConfig(**changes)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(InvalidInputError, match="unknown keys \\['colour'\\]"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "colour": "red"})


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_compiles_as_one_graph_with_dynamic_batch(arch):
    """No Python control flow on tensor values: torch.compile traces forward without a graph break."""
    model = build_model(ModelConfig(arch=arch, **RTS)).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for batch in (3, 5):
        image = torch.rand(batch, 1, 42, 42)
        for ours, reference in zip(compiled(image), model(image)):
            torch.testing.assert_close(ours, reference)

