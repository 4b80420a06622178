"""The grid generators as ONNX local functions in the custom domain `stn`.

Each function's body uses standard ONNX ops only, so any ONNX Runtime runs it with no custom
kernel, while a viewer shows one named node (`stn.AffineGrid`, `stn.ProjectiveGrid`,
`stn.TPSGrid`). The formulas are those of `stn_serve.ops` (and of
`torch.nn.functional.affine_grid`): output pixel (i, j) of an h x w grid sits at the normalised
coordinates

    x_j = (2 j + 1 - w) / max(w - a, 1),   y_i = (2 i + 1 - h) / max(h - a, 1)

with a = 1 when align_corners else 0; that is `(2 j + 1) / w - 1` without align_corners (pixel
centres) and `2 j / (w - 1) - 1` with it (corner pixels on -1 and 1; a single pixel sits at 0).

The affine and projective functions are type-generic (float32 and float64) through `CastLike`,
and take the grid size and convention as attributes, so one definition serves every crop size.
`TPSGrid` takes its precomputed kernel as an input instead.
"""

from __future__ import annotations

from onnxscript import opset18 as op
from onnxscript import script
from onnxscript.values import Opset

# Written with opset 18 ops, like the rest of the exported graph; `attach_functions` stamps them
# with the model's opset, whose versions of these ops compute the same (they only add types).
DOMAIN = "stn"
DOMAIN_VERSION = 1
stn = Opset(DOMAIN, DOMAIN_VERSION)


@script(stn, default_opset=op)
def BaseGrid(like, height: int, width: int, align_corners: int):
    """Homogeneous output coordinates (x, y, 1): Tensor[h, w, 3] of `like`'s element type."""
    one = op.CastLike(op.Constant(value_float=1.0), like)
    two = op.CastLike(op.Constant(value_float=2.0), like)
    zero = op.CastLike(op.Constant(value_float=0.0), like)
    h = op.CastLike(op.Constant(value_int=height), like)
    w = op.CastLike(op.Constant(value_int=width), like)
    a = op.CastLike(op.Constant(value_int=align_corners), like)
    xs = (op.Range(zero, w, one) * two + one - w) / op.Max(w - a, one)  # (w,)
    ys = (op.Range(zero, h, one) * two + one - h) / op.Max(h - a, one)  # (h,)
    size = op.Concat(op.Shape(ys), op.Shape(xs), axis=0)
    x = op.Unsqueeze(op.Expand(op.Unsqueeze(xs, [0]), size), [2])  # (h, w, 1)
    y = op.Unsqueeze(op.Expand(op.Unsqueeze(ys, [1]), size), [2])
    ones = op.Unsqueeze(op.Expand(one, size), [2])
    return op.Concat(x, y, ones, axis=2)


@script(stn, default_opset=op)
def AffineGrid(matrix, height: int, width: int, align_corners: int):
    """matrix (Tensor[N, 2, 3]) -> grid (Tensor[N, h, w, 2]): grid = matrix @ (x, y, 1)."""
    base = BaseGrid(matrix, height=height, width=width, align_corners=align_corners)  # (h, w, 3)
    # (h, w, 3) @ (N, 1, 3, 2) broadcasts to (N, h, w, 2).
    return op.MatMul(base, op.Unsqueeze(op.Transpose(matrix, perm=[0, 2, 1]), [1]))


@script(stn, default_opset=op)
def ProjectiveGrid(homography, height: int, width: int, align_corners: int):
    """homography (Tensor[N, 3, 3]) -> grid (Tensor[N, h, w, 2]): (u, v, w) = H @ (x, y, 1),
    grid = (u / w, v / w)."""
    base = BaseGrid(homography, height=height, width=width, align_corners=align_corners)
    uvw = op.MatMul(base, op.Unsqueeze(op.Transpose(homography, perm=[0, 2, 1]), [1]))  # (N, h, w, 3)
    uv = op.Slice(uvw, op.Constant(value_ints=[0]), op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))
    w = op.Slice(uvw, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]), op.Constant(value_ints=[3]))
    return uv / w


@script(stn, default_opset=op)
def TPSGrid(offsets, kernel, control_points):
    """offsets (Tensor[N, K, 2]), kernel (Tensor[h, w, K]), control_points (Tensor[K, 2]) ->
    grid (Tensor[N, h, w, 2]) = kernel @ (control_points + offsets).

    The kernel is the thin-plate spline's constant matrix M of `stn_serve.ops.tps_grid` (it
    needs a linear solve, which ONNX has no op for, so export computes it and passes it in)."""
    targets = op.Unsqueeze(control_points + offsets, [1])  # (N, 1, K, 2)
    return op.MatMul(kernel, targets)
