"""The custom spatial-transformer layer: grid generators and a bilinear sampler whose forward
and backward are written out by hand, registered as `torch.ops.stn.*` custom ops."""

from stn_serve.ops.affine_grid import (
    AffineGrid,
    affine_grid,
    affine_grid_backward,
    affine_grid_forward,
)
from stn_serve.ops.grid_sample import (
    PADDING_MODES,
    GridSample,
    bilinear_sample_backward,
    bilinear_sample_forward,
    grid_sample,
)
from stn_serve.ops.projective_grid import (
    ProjectiveGrid,
    projective_grid,
    projective_grid_backward,
    projective_grid_forward,
)
from stn_serve.ops.tps_grid import (
    TPSGrid,
    tps_control_points,
    tps_grid,
    tps_grid_backward,
    tps_grid_forward,
    tps_kernel_matrix,
)
from stn_serve.ops.transforms import TRANSFORMS, Transform, make_transform

__all__ = [
    "PADDING_MODES",
    "TRANSFORMS",
    "AffineGrid",
    "GridSample",
    "ProjectiveGrid",
    "TPSGrid",
    "Transform",
    "affine_grid",
    "affine_grid_backward",
    "affine_grid_forward",
    "bilinear_sample_backward",
    "bilinear_sample_forward",
    "grid_sample",
    "make_transform",
    "projective_grid",
    "projective_grid_backward",
    "projective_grid_forward",
    "tps_control_points",
    "tps_grid",
    "tps_grid_backward",
    "tps_grid_forward",
    "tps_kernel_matrix",
]
