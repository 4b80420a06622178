"""torch vs ONNX Runtime: the exported model's outputs, its graph, and the spatial transformer's
gradients (directional derivatives of a float64 export, and the exported backward).

The default run covers every transform family, both align_corners values and the three padding
modes with six configurations (each family once; each (align_corners, padding mode) pair once);
`-m slow` runs the whole product. Each configuration is exported once and its ONNX Runtime
session reused for the batch sizes 1, 3 and 17.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import onnx
import pytest
import torch

from stn_serve.contract import OUTPUT_NAMES, PADDING_MODES, TRANSFORMS
from stn_serve.export.gradients import (
    GRADIENT_INPUTS,
    GRADIENT_OUTPUTS,
    TransformerBackward,
    TransformerForward,
    autograd_reference,
)
from stn_serve.export.graph import ServingGraph, to_onnx
from stn_serve.export.parity import GRADIENT_TOLERANCES, TOLERANCES, compare
from stn_serve.export.session import cpu_session, run
from stn_serve.models import ModelConfig, build_model

BATCH_SIZES = (1, 3, 17)
# Non-square input and crop of different sizes, so that a height/width mix-up shows.
INPUT_SIZE = (28, 32)
CROP_SIZE = (20, 24)
SMALL = {"width": 4, "hidden": 16, "loc_width": 4, "loc_hidden": 8}
GRID_FUNCTION = {"projective": "ProjectiveGrid", "tps": "TPSGrid"}
STANDARD_DOMAINS = {"", "ai.onnx"}

COVERING = [(family, index % 2 == 1, PADDING_MODES[index % 3]) for index, family in enumerate(TRANSFORMS)]


def configurations():
    """Every (family, align_corners, padding_mode); those outside COVERING are slow."""
    for case in itertools.product(TRANSFORMS, (False, True), PADDING_MODES):
        marks = () if case in COVERING else (pytest.mark.slow,)
        yield pytest.param(*case, marks=marks, id=f"{case[0]}-ac{int(case[1])}-{case[2]}")


CONFIGURATIONS = list(configurations())


@functools.cache
def spatial_transformer_model(family: str, align_corners: bool, padding_mode: str, dtype=torch.float32):
    """A small ST-CNN whose localisation head is moved off the identity (seeded): theta varies
    with the image, and its mean moves so that some sample points fall outside the input, where
    the padding mode matters."""
    config = ModelConfig(transform=family, align_corners=align_corners, padding_mode=padding_mode,
                         input_size=INPUT_SIZE, crop_size=CROP_SIZE, **SMALL)
    torch.manual_seed(0)
    model = build_model(config).eval()
    head = model.transformer.localisation.head
    # The projective family divides by its last row: keep that row near (0, 0, 1).
    spread = 0.05 if family == "projective" else 0.25
    with torch.no_grad():
        head.weight.normal_(0.0, spread / 2)
        head.bias.add_(spread * torch.randn(head.bias.shape))
    return model.to(dtype)


def images(batch: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Tensor[batch, 1, H, W] of uniform noise: sharp edges everywhere, the hardest case for the
    sampler's rounding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *INPUT_SIZE, generator=generator, dtype=dtype)


@functools.cache
def exported_model(family: str, align_corners: bool, padding_mode: str):
    """(ServingGraph, onnx.ModelProto, session) of one configuration, exported once."""
    graph = ServingGraph(spatial_transformer_model(family, align_corners, padding_mode))
    proto = to_onnx(graph, (images(2, seed=100),), ("image",), OUTPUT_NAMES)
    return graph, proto, cpu_session(proto.SerializeToString())


def all_nodes(model: onnx.ModelProto):
    """Every node of the graph and of its local functions."""
    yield from model.graph.node
    for function in model.functions:
        yield from function.node


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize(("family", "align_corners", "padding_mode"), CONFIGURATIONS)
def test_outputs_match_torch(family, align_corners, padding_mode, batch):
    # The float32 tolerances are the exporter's own (stn_serve.export.parity.TOLERANCES), and
    # they are what they are because ONNX Runtime evaluates the same maths in another order:
    # - theta and logits (rtol 1e-4, atol 1e-5): conv and GEMM sums of a few hundred products,
    #   each off by some float32 roundings (1.2e-7 relative); measured differences ~1e-7.
    # - probabilities (same): softmax of those logits; it can only shrink the differences.
    # - crop (atol 1e-4 on [0, 1] pixels): a grid off by d (normalised) moves a sample by
    #   d * W / 2 pixels, and next to a sharp edge the value moves by as much; with the uniform
    #   noise images here (edges everywhere) differences of a few 1e-6 were measured.
    # Each leaves a factor of 30 or more over what was measured, and is far below any change a
    # client could see (a prediction, or a pixel's 8-bit value).
    graph, _, session = exported_model(family, align_corners, padding_mode)
    image = images(batch, seed=batch)
    with torch.no_grad():
        outputs = dict(zip(OUTPUT_NAMES, graph(image)))
        grid = graph.model.transformer.grid_generator(outputs["theta"])
    got = run(session, {"image": image.numpy()})
    figures = compare({name: value.numpy() for name, value in outputs.items()}, got, TOLERANCES)
    assert all(figure["ok"] for figure in figures.values()), figures
    assert outputs["theta"].shape == (batch, graph.model.transformer.num_params)
    if batch > 1:
        # Points outside the input, or the padding mode was never exercised.
        assert (grid.abs() > 1).any()


@pytest.mark.parametrize(("family", "align_corners", "padding_mode"), CONFIGURATIONS)
def test_graph_uses_gridsample_and_an_stn_function(family, align_corners, padding_mode):
    _, proto, _ = exported_model(family, align_corners, padding_mode)
    samplers = [node for node in proto.graph.node if node.op_type == "GridSample"]
    assert len(samplers) == 1 and samplers[0].domain in STANDARD_DOMAINS
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in samplers[0].attribute}
    assert attributes == {"mode": b"linear", "padding_mode": padding_mode.encode(),
                          "align_corners": int(align_corners)}

    expected = GRID_FUNCTION.get(family, "AffineGrid")
    calls = [node for node in proto.graph.node if node.domain == "stn"]
    assert [node.op_type for node in calls] == [expected]
    functions = {(function.domain, function.name): function for function in proto.functions}
    assert ("stn", expected) in functions
    body_ops = {(node.domain, node.op_type) for node in functions["stn", expected].node}
    assert all(domain in STANDARD_DOMAINS | {"stn"} for domain, _ in body_ops)
    # Nested calls are defined too (AffineGrid and ProjectiveGrid call stn.BaseGrid).
    assert all((domain, op) in functions for domain, op in body_ops if domain == "stn")
    assert {node.domain for node in all_nodes(proto)} <= STANDARD_DOMAINS | {"stn"}
    assert {entry.domain: entry.version for entry in proto.opset_import} == {"": 20, "stn": 1}

    image = proto.graph.input[0]
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, *INPUT_SIZE]
    assert [output.name for output in proto.graph.output] == list(OUTPUT_NAMES)


def crossing_free(grid_at: list[torch.Tensor], align_corners: bool) -> torch.Tensor:
    """Tensor[N, h, w] (bool): points whose input coordinates cross no half-integer pixel
    position between the given grids (of one small step).

    Bilinear sampling is smooth in the grid except where a coordinate crosses an integer (a
    new pair of neighbours), a border (clamping) or a reflection fold (at integers with
    align_corners, at k * W - 1/2 without); all lie on multiples of 1/2, so a point that stays
    between two of them has a smooth value along the step.
    """
    def cell(grid):
        size = grid.new_tensor([INPUT_SIZE[1], INPUT_SIZE[0]])
        pixel = (grid + 1) * (size - 1) / 2 if align_corners else ((grid + 1) * size - 1) / 2
        return torch.floor(2 * pixel)

    cells = [cell(grid) for grid in grid_at]
    return torch.stack([(c == cells[0]).all(-1) for c in cells[1:]]).all(0)


@functools.cache
def exported_transformer_float64(family: str, align_corners: bool, padding_mode: str):
    """(TransformerForward in float64, its ONNX Runtime session)."""
    transformer = spatial_transformer_model(family, align_corners, padding_mode, torch.float64).transformer
    forward = TransformerForward(transformer)
    identity = transformer.grid_generator.identity_params().double().expand(2, -1)
    proto = to_onnx(forward, (images(2, 0, torch.float64), identity.clone()), ("image", "theta"), ("crop",))
    return forward, cpu_session(proto.SerializeToString())


# Steps of the central differences, and why.
# - Image: the crop is linear in the image, so the central difference has no truncation error
#   at any step; a step of 1 halves ONNX Runtime's rounding and leaves it as the only error.
# - Theta: ONNX Runtime's GridSample works partly in float32 even for float64 inputs (differences
#   of ~1e-6 from torch were seen with border padding; the test prints what this build gives,
#   ~5e-15 here). A rounding d becomes an error of ~d / step per point, so the step is 1e-3:
#   d = 1e-6 then costs 1e-3 per point and ~1e-4 of the derivative after the weighted sum over
#   ~1000 points. Points whose coordinates cross a pixel or fold boundary within the step get no
#   weight (bilinear sampling has a kink there), so what remains is the truncation error of the
#   smooth map theta -> crop: none for the affine families and tps (the crop is then quadratic
#   along the step), ~step^2 relative for similarity and projective.
# Measured relative errors: image ~1e-14; theta <= 1e-12 (affine families, tps), 3e-6
# (similarity), 3e-5 (projective). The tolerances cover a 1e-6 rounding with room to spare.
IMAGE_STEP = 1.0
THETA_STEP = 1e-3
DERIVATIVE_RTOL = {"image": 1e-6, "theta": 1e-3}


@pytest.mark.parametrize(("family", "align_corners", "padding_mode"), CONFIGURATIONS)
def test_directional_derivatives_float64(family, align_corners, padding_mode):
    forward, session = exported_transformer_float64(family, align_corners, padding_mode)
    generator = torch.Generator().manual_seed(7)
    batch = 3
    image = images(batch, seed=3, dtype=torch.float64)
    identity = forward.transformer.grid_generator.identity_params().double()
    theta = identity + 0.05 * torch.randn(batch, identity.numel(), generator=generator, dtype=torch.float64)
    directions = {"image": torch.randn(image.shape, generator=generator, dtype=torch.float64),
                  "theta": torch.randn(theta.shape, generator=generator, dtype=torch.float64)}

    def onnx_crop(image, theta):
        return torch.from_numpy(run(session, {"image": image.numpy(), "theta": theta.numpy()})["crop"])

    rounding = (onnx_crop(image, theta) - forward(image, theta)).abs().max().item()
    print(f"{family} align_corners={align_corners} {padding_mode}: ONNX Runtime vs torch float64 crop: {rounding:.1e}")
    assert rounding < 1e-5

    with torch.no_grad():
        grids = [forward.transformer.grid_generator(theta + k * THETA_STEP * directions["theta"]) for k in (-1, 0, 1)]
    smooth = crossing_free(grids, align_corners)
    assert smooth.float().mean() > 0.5, "the step crosses pixel boundaries at most points"
    weights = torch.randn(batch, 1, *CROP_SIZE, generator=generator, dtype=torch.float64) * smooth.unsqueeze(1)

    variables = {"image": image.clone().requires_grad_(), "theta": theta.clone().requires_grad_()}
    loss = (forward(variables["image"], variables["theta"]) * weights).sum()
    gradients = dict(zip(variables, torch.autograd.grad(loss, tuple(variables.values()))))
    for name, step in (("image", IMAGE_STEP), ("theta", THETA_STEP)):
        exact = (gradients[name] * directions[name]).sum().item()
        shifted = {key: value.detach() for key, value in variables.items()}
        plus = dict(shifted, **{name: shifted[name] + step * directions[name]})
        minus = dict(shifted, **{name: shifted[name] - step * directions[name]})
        finite = ((onnx_crop(**plus) - onnx_crop(**minus)) * weights).sum().item() / (2 * step)
        assert finite == pytest.approx(exact, rel=DERIVATIVE_RTOL[name]), name


@functools.cache
def exported_backward(family: str, align_corners: bool, padding_mode: str):
    """(transformer, onnx.ModelProto, session) of TransformerBackward in float32."""
    transformer = spatial_transformer_model(family, align_corners, padding_mode).transformer
    proto = to_onnx(TransformerBackward(transformer), backward_inputs(transformer, 2, seed=100),
                    GRADIENT_INPUTS, GRADIENT_OUTPUTS)
    return transformer, proto, cpu_session(proto.SerializeToString())


def backward_inputs(transformer, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(image, theta, grad_crop): theta is the identity moved by seeded noise, so that grid
    points do not sit exactly on pixel centres (where the sampler's derivative jumps)."""
    generator = torch.Generator().manual_seed(seed)
    identity = transformer.grid_generator.identity_params()
    theta = identity + 0.1 * torch.randn(batch, identity.numel(), generator=generator)
    grad_crop = torch.randn(batch, 1, *CROP_SIZE, generator=generator)
    return images(batch, seed), theta, grad_crop


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize(("family", "align_corners", "padding_mode"), CONFIGURATIONS)
def test_exported_backward_matches_autograd(family, align_corners, padding_mode, batch):
    # Both sides run the custom layer's hand-written backward; they differ only in the order of
    # float32 sums (ScatterElements vs scatter_add_, ONNX Runtime's MatMul), so a sum of n terms of
    # size s is off by up to ~n * 1.2e-7 * s. Measured: ~3e-6 of the largest gradient; the
    # tolerance is 1e-4 of it (stn_serve.export.parity.GRADIENT_TOLERANCES).
    transformer, _, session = exported_backward(family, align_corners, padding_mode)
    inputs = backward_inputs(transformer, batch, seed=batch)
    expected = {name: value.numpy() for name, value in autograd_reference(transformer, *inputs).items()}
    got = run(session, {name: value.numpy() for name, value in zip(GRADIENT_INPUTS, inputs)})
    figures = compare(expected, got, GRADIENT_TOLERANCES)
    assert all(figure["ok"] for figure in figures.values()), figures
    assert np.abs(expected["grad_theta"]).max() > 0


@pytest.mark.parametrize(("family", "align_corners", "padding_mode"), COVERING[:1])
def test_backward_graph_scatter_adds(family, align_corners, padding_mode):
    _, proto, _ = exported_backward(family, align_corners, padding_mode)
    # The input gradient is the scatter-add of the four weighted neighbour contributions.
    reductions = [
        {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("reduction")
        for node in proto.graph.node if node.op_type in ("ScatterElements", "ScatterND")
    ]
    assert b"add" in reductions
    assert [i.name for i in proto.graph.input] == list(GRADIENT_INPUTS)
    assert [o.name for o in proto.graph.output] == list(GRADIENT_OUTPUTS)
    assert {node.domain for node in all_nodes(proto)} <= STANDARD_DOMAINS | {"stn"}
