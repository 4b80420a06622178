"""The pose-consistency loss: every crop should show its object in one and the same pose.

Training images are made by distortions whose transforms are known (`distort_with_pose`). With
D_i the i-th image's transform (canvas -> source coordinates) and g_i(p) the canvas point the
model's grid reads for crop pixel p, D_i(g_i(p)) is the point of the undistorted source that crop
pixel p shows. If the spatial transformer undoes the distortions, that point is the same for every
image of the batch; the loss is its variance across the batch,

    L = mean over p of  mean over i of  |D_i(g_i(p)) - mean_j D_j(g_j(p))|²,

in the source's normalised coordinates (±1 spans the image). It asks only for a consistent pose,
not a given one, so the model still chooses the canonical pose (and the zoom) that classifies
best; `stn_serve.train.canonical` measures the same consistency as a figure. Classification alone
leaves rotation almost untouched on RTS digits (the classifier learns every tilt instead); this
term is what makes the crops upright.

Only meaningful where the poses are known: distortion "none" reports identities that say nothing
about the source's own poses, so training turns the term off there.
"""

from __future__ import annotations

import torch


def source_points(grid: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Where each crop pixel reads the undistorted source.

    Args:
        grid (Tensor[N, h, w, 2]): the model's sampling grid (canvas normalised (x, y)).
        poses (Tensor[N, 3, 3]): each canvas's distortion, canvas -> source, projective.

    Returns:
        Tensor[N, h * w, 2]: source normalised (x, y).
    """
    n = grid.shape[0]
    points = grid.reshape(n, -1, 2)
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (N, hw, 3)
    mapped = homogeneous @ poses.to(grid).transpose(1, 2)  # (N, hw, 3)
    return mapped[..., :2] / mapped[..., 2:]


def pose_consistency(grid: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """The loss L of the module docstring (a scalar; 0 for a batch of one)."""
    points = source_points(grid, poses)
    return (points - points.mean(dim=0, keepdim=True)).square().sum(-1).mean()
