"""The sampler's fused CPU kernel (stn_serve/ops/csrc/bilinear_sampler.cpp) and its fallback.

Every value and gradient test of `tests/test_ops.py` runs against both the kernel and the
tensor-op reference; these are the cases specific to the kernel: float64 exactness on shapes that
span several blocks and channel tiles, far and NaN points, threads, and the fallback.
"""

from __future__ import annotations

import logging

import pytest
import torch

from stn_serve.contract import PADDING_MODES
from stn_serve.ops import affine_grid, grid_sample, sampler_kernel
from test_ops import ALIGN, native, value_and_grads



@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("align_corners", ALIGN)
# 1,600 output points span two blocks of the kernel; 9 channels are two tiles of 4 and one more.
@pytest.mark.parametrize("shape", [(2, 9, 13, 11, 40, 40), (3, 1, 7, 30, 5, 3), (1, 4, 1, 1, 4, 5)])
def test_kernel_matches_native_to_rounding_in_float64(sampler_implementation, shape, padding_mode,
                                                     align_corners):
    generator = torch.Generator().manual_seed(20)
    batch, channels, height, width, out_height, out_width = shape
    input = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    grid = (torch.rand(batch, out_height, out_width, 2, generator=generator,
                       dtype=torch.float64) * 2 - 1) * 1.7
    grad_output = torch.randn(batch, channels, out_height, out_width, generator=generator,
                              dtype=torch.float64)
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, align_corners)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, align_corners)
    for name, mine, reference in zip(("output", "grad_input", "grad_grid"), ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("align_corners", ALIGN)
def test_points_far_outside_the_input_match_native(sampler_implementation, padding_mode, align_corners):
    # Far points must not wrap around in integer conversions or index outside the input.
    generator = torch.Generator().manual_seed(21)
    input = torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    far = torch.tensor([1e3, -1e3, 4e6, -4e6, 1e9, -1e9, 2.5e4, 1.5], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(far, far.flip(0), indexing="xy"), dim=-1).expand(2, 8, 8, 2)
    grad_output = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, align_corners)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, align_corners)
    for mine, reference in zip(ours, theirs):
        assert torch.isfinite(mine).all()
        torch.testing.assert_close(mine, reference)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_nan_points_give_nan_values_and_gradients_and_touch_nothing_else(
    sampler_implementation, padding_mode
):
    generator = torch.Generator().manual_seed(22)
    input = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    grid = (torch.rand(2, 4, 4, 2, generator=generator, dtype=torch.float64) * 2 - 1) * 1.2
    grad_output = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    poisoned = grid.clone()
    poisoned[0, 1, 2, 0] = float("nan")  # x only
    poisoned[1, 3, 0] = float("nan")  # x and y
    nan_points = torch.zeros(2, 4, 4, dtype=torch.bool)
    nan_points[0, 1, 2] = nan_points[1, 3, 0] = True
    output, grad_input, grad_grid = value_and_grads(
        grid_sample, input, poisoned, grad_output, padding_mode, False
    )
    assert torch.isnan(output.permute(0, 2, 3, 1)[nan_points]).all()
    # Each NaN point's grid gradient is NaN where it depends on the NaN coordinate.
    assert torch.isnan(grad_grid[nan_points]).any(dim=-1).all()
    # Every other point as torch samples it; a NaN point adds nothing to the input gradient.
    reference = value_and_grads(
        native, input, grid, grad_output * ~nan_points.unsqueeze(1), padding_mode, False
    )
    torch.testing.assert_close(output.permute(0, 2, 3, 1)[~nan_points],
                               reference[0].permute(0, 2, 3, 1)[~nan_points])
    torch.testing.assert_close(grad_input, reference[1])
    torch.testing.assert_close(grad_grid[~nan_points], reference[2][~nan_points])


def test_grids_with_no_points_give_empty_outputs_and_zero_input_gradients(sampler_implementation):
    input = torch.randn(2, 3, 4, 4, requires_grad=True)
    grid = torch.zeros(2, 0, 5, 2, requires_grad=True)
    output = grid_sample(input, grid)
    assert output.shape == (2, 3, 0, 5)
    grad_input, grad_grid = torch.autograd.grad(output, (input, grid), torch.ones(2, 3, 0, 5))
    assert torch.equal(grad_input, torch.zeros_like(input)) and grad_grid.shape == grid.shape


def test_results_do_not_depend_on_the_number_of_threads(sampler_implementation):
    # Each image belongs to one thread, whichever claims it: the sums are the same in any split.
    generator = torch.Generator().manual_seed(23)
    input = torch.randn(37, 2, 9, 9, generator=generator)
    theta = torch.eye(2, 3) + 0.3 * torch.randn(37, 2, 3, generator=generator)
    grad_output = torch.randn(37, 2, 7, 8, generator=generator)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            i, t = input.clone().requires_grad_(), theta.clone().requires_grad_()
            output = grid_sample(i, affine_grid(t, (37, 2, 7, 8)), "border")
            results.append((output, *torch.autograd.grad(output, (i, t), grad_output)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for mine, first in zip(other, results[0]):
            assert torch.equal(mine, first)


def test_disabling_the_kernel_runs_the_reference_and_logs_it(monkeypatch, caplog):
    monkeypatch.setattr(sampler_kernel, "_logged", None)
    monkeypatch.setenv(sampler_kernel.ENABLE_ENV, "0")
    input = torch.randn(2, 1, 5, 5)
    with caplog.at_level(logging.INFO, logger=sampler_kernel.__name__):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(2):
                grid_sample(input, torch.zeros(2, 3, 3, 2))
    names = {event.name for event in profile.events()}
    assert "stn::grid_sample" in names and "stn_kernel::bilinear_sample" not in names
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["bilinear sampler on the CPU: the tensor-op reference"]
    assert sampler_kernel.ENABLE_ENV in caplog.records[0].reason


def test_the_kernel_logs_once_that_it_runs(monkeypatch, caplog):
    if sampler_kernel.missing_tools() is not None:
        pytest.skip("the sampler kernel cannot be built here")
    monkeypatch.setattr(sampler_kernel, "_logged", None)
    monkeypatch.setenv(sampler_kernel.ENABLE_ENV, "1")
    input = torch.randn(2, 1, 5, 5, requires_grad=True)
    with caplog.at_level(logging.INFO, logger=sampler_kernel.__name__):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(3):
                grid_sample(input, torch.zeros(2, 3, 3, 2)).sum().backward()
    names = {event.name for event in profile.events()}
    assert {"stn_kernel::bilinear_sample", "stn_kernel::bilinear_sample_backward"} <= names
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["bilinear sampler on the CPU: the fused C++ kernel"]


def test_without_a_compiler_the_reference_runs_and_the_reason_is_logged(monkeypatch, caplog):
    # As on a machine without a C++ compiler: the build is not possible, the layer still works.
    monkeypatch.setattr(sampler_kernel, "_loaded", False)
    monkeypatch.setattr(sampler_kernel, "_failure", None)
    monkeypatch.setattr(sampler_kernel, "_logged", None)
    monkeypatch.setenv("CXX", "no-such-compiler-for-stn-serve")
    monkeypatch.setenv(sampler_kernel.ENABLE_ENV, "1")
    generator = torch.Generator().manual_seed(24)
    input = torch.randn(2, 3, 6, 6, generator=generator)
    grid = torch.rand(2, 4, 4, 2, generator=generator) * 2 - 1
    grad_output = torch.randn(2, 3, 4, 4, generator=generator)
    with caplog.at_level(logging.INFO, logger=sampler_kernel.__name__):
        ours = value_and_grads(grid_sample, input, grid, grad_output, "zeros", False)
    theirs = value_and_grads(native, input, grid, grad_output, "zeros", False)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no C++ compiler ('no-such-compiler-for-stn-serve'" in warnings[0].reason
    with pytest.raises(RuntimeError, match="cannot build the bilinear sampler kernel"):
        sampler_kernel.build()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_are_left_to_the_reference(dtype):
    assert sampler_kernel.kernel_for(torch.zeros(1, 1, 2, 2, dtype=dtype)) is None


def test_kernel_rejects_arguments_it_was_not_written_for():
    if sampler_kernel.missing_tools() is not None:
        pytest.skip("the sampler kernel cannot be built here")
    sampler_kernel.build()
    input, grid = torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="padding_mode must be one of .* got 'mirror'"):
        torch.ops.stn_kernel.bilinear_sample(input, grid, "mirror", False)
    with pytest.raises(RuntimeError, match="grid batch must equal input batch"):
        torch.ops.stn_kernel.bilinear_sample(input, torch.zeros(2, 2, 2, 2), "zeros", False)
