"""Transform families: modules mapping a parameter vector to a sampling grid.

Each family maps `params (Tensor[N, P])` to `grid (Tensor[N, h, w, 2])` for a fixed output size
and knows the parameters of the identity map. Parameters are in [-1, 1] coordinates of the
input, as in `grid_sample`.

| name        | P   | params                                        | identity         |
| ----------- | --- | --------------------------------------------- | ---------------- |
| translation | 2   | (tx, ty)                                      | (0, 0)           |
| attention   | 3   | (s, tx, ty): isotropic scale, translation     | (1, 0, 0)        |
| similarity  | 4   | (angle, s, tx, ty): rotation in radians,      | (0, 1, 0, 0)     |
|             |     | isotropic scale, translation                  |                  |
| affine      | 6   | theta row by row (a, b, tx, c, d, ty)         | (1, 0, 0, 0, 1, 0) |
| projective  | 8   | the homography row by row, its last entry 1   | (1, 0, 0, 0, 1, 0, 0, 0) |
| tps         | 2 K | control-point offsets (x_0, y_0, x_1, ...)    | zeros            |

The first four build theta (Tensor[N, 2, 3]) with differentiable tensor ops and call
`affine_grid`; projective calls `projective_grid` and tps calls `tps_grid`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import require_floating, shape_text
from stn_serve.ops.affine_grid import affine_grid
from stn_serve.ops.base_grid import GridGenerator
from stn_serve.ops.projective_grid import projective_grid
from stn_serve.ops.tps_grid import check_control_grid, tps_grid


class Transform(GridGenerator):
    """Base of the families: `num_params`, `identity_params()` and `forward(params) -> grid`."""

    name = ""
    num_params = 0
    _identity: tuple[float, ...] = ()

    def identity_params(self) -> torch.Tensor:
        """Tensor[P] (float32): the parameters of the identity map."""
        return torch.tensor(self._identity, dtype=torch.float32)

    def check_params(self, params: torch.Tensor) -> None:
        require_floating("params", params)
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise InvalidInputError(
                f"{self.name} params must be [N, {self.num_params}], got {shape_text(params.shape)}"
            )

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}, {super().extra_repr()}"


class AffineFamily(Transform):
    """A family of affine maps: `theta(params)` builds the [N, 2, 3] matrix."""

    def theta(self, params: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 2, 3] for params (Tensor[N, P])."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        self.check_params(params)
        return affine_grid(self.theta(params), self.size_for(params), self.align_corners)


def _rows(entries: list[torch.Tensor]) -> torch.Tensor:
    """Tensor[N, 2, 3] from six Tensor[N] entries, row by row."""
    return torch.stack(entries, dim=1).view(entries[0].shape[0], 2, 3)


class Translation(AffineFamily):
    name = "translation"
    num_params = 2
    _identity = (0.0, 0.0)

    def theta(self, params):
        tx, ty = params.unbind(1)
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        return _rows([one, zero, tx, zero, one, ty])


class Attention(AffineFamily):
    name = "attention"
    num_params = 3
    _identity = (1.0, 0.0, 0.0)

    def theta(self, params):
        scale, tx, ty = params.unbind(1)
        zero = torch.zeros_like(tx)
        return _rows([scale, zero, tx, zero, scale, ty])


class Similarity(AffineFamily):
    name = "similarity"
    num_params = 4
    _identity = (0.0, 1.0, 0.0, 0.0)

    def theta(self, params):
        angle, scale, tx, ty = params.unbind(1)
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        return _rows([cos, -sin, tx, sin, cos, ty])


class Affine(AffineFamily):
    name = "affine"
    num_params = 6
    _identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def theta(self, params):
        return params.view(params.shape[0], 2, 3)


class Projective(Transform):
    name = "projective"
    num_params = 8
    _identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

    def homography(self, params: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 3, 3] for params (Tensor[N, 8]): the params row by row, then 1."""
        homography = torch.cat((params, torch.ones_like(params[:, :1])), dim=1)
        return homography.view(params.shape[0], 3, 3)

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        self.check_params(params)
        return projective_grid(self.homography(params), self.size_for(params), self.align_corners)


class ThinPlateSpline(Transform):
    name = "tps"

    def __init__(
        self,
        out_size: Sequence[int],
        align_corners: bool = False,
        control_grid: Sequence[int] = (4, 4),
    ):
        super().__init__(out_size, align_corners)
        self.control_grid = check_control_grid(control_grid)
        self.num_params = 2 * self.control_grid[0] * self.control_grid[1]
        self._identity = (0.0,) * self.num_params

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        self.check_params(params)
        offsets = params.view(params.shape[0], self.num_params // 2, 2)
        return tps_grid(offsets, self.size_for(params), self.align_corners, self.control_grid)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, control_grid={self.control_grid}"


TRANSFORMS = {
    family.name: family
    for family in (Translation, Attention, Similarity, Affine, Projective, ThinPlateSpline)
}


def make_transform(
    name: str, out_size: Sequence[int], align_corners: bool = False, **options
) -> Transform:
    """The transform family `name` producing grids of size out_size = (h, w).

    Args:
        name (str): translation, attention, similarity, affine, projective or tps.
        out_size (h, w): the sampling grid's size.
        align_corners (bool): as in `grid_sample` (default False).
        **options: family options; tps takes control_grid=(rows, cols) (default (4, 4)).

    Raises:
        InvalidInputError (a ValueError): an unknown name or an option the family does not take.
    """
    if name not in TRANSFORMS:
        raise InvalidInputError(f"transform must be one of {', '.join(TRANSFORMS)}, got {name!r}")
    family = TRANSFORMS[name]
    allowed = {"control_grid"} if family is ThinPlateSpline else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidInputError(
            f"transform {name!r} takes options {sorted(allowed) or 'none'}, got {unknown}"
        )
    return family(out_size, align_corners, **options)
