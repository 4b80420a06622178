"""The custom spatial-transformer layer: grid generators and a bilinear sampler whose forward
and backward are written out by hand, registered as `torch.ops.stn.*` custom ops, and the
transform families that map a parameter vector to a sampling grid."""

from stn_serve.ops.affine_grid import affine_grid, affine_grid_backward
from stn_serve.ops.bilinear import bilinear_sample_backward
from stn_serve.ops.grid_sample import grid_sample
from stn_serve.ops.projective_grid import projective_grid, projective_grid_backward
from stn_serve.ops.tps_grid import (
    tps_control_points,
    tps_grid,
    tps_grid_backward,
    tps_kernel_matrix,
)
from stn_serve.ops.transforms import FAMILIES, Transform, make_transform

__all__ = [
    "FAMILIES",
    "Transform",
    "affine_grid",
    "affine_grid_backward",
    "bilinear_sample_backward",
    "grid_sample",
    "make_transform",
    "projective_grid",
    "projective_grid_backward",
    "tps_control_points",
    "tps_grid",
    "tps_grid_backward",
    "tps_kernel_matrix",
]
