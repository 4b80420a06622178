"""Transform families: modules mapping a parameter vector to a sampling grid, and back.

Each family maps `params (Tensor[N, P])` to `grid (Tensor[N, h, w, 2])` for a fixed output size
and knows the parameters of the identity map. Parameters are in [-1, 1] coordinates of the
input, as in `grid_sample`. Beside its forward, each family writes out by hand the gradient with
respect to its parameters, `params_backward(params, grad_grid)`: the chain rule through the grid
generator's backward and the family's parameterisation, which `stn-serve export --gradients`
exports as ONNX.

| name        | P   | params                                        | identity         |
| ----------- | --- | --------------------------------------------- | ---------------- |
| translation | 2   | (tx, ty)                                      | (0, 0)           |
| attention   | 3   | (s, tx, ty): isotropic scale, translation     | (1, 0, 0)        |
| similarity  | 4   | (angle, s, tx, ty): rotation in radians,      | (0, 1, 0, 0)     |
|             |     | isotropic scale, translation                  |                  |
| affine      | 6   | the matrix row by row (a, b, tx, c, d, ty)    | (1, 0, 0, 0, 1, 0) |
| projective  | 8   | the homography row by row, its last entry 1   | (1, 0, 0, 0, 1, 0, 0, 0) |
| tps         | 2 K | control-point offsets (x_0, y_0, x_1, ...)    | zeros            |

The first four build the affine matrix (Tensor[N, 2, 3], output to input coordinates) with
differentiable tensor ops and call `affine_grid`; projective calls `projective_grid` and tps
calls `tps_grid`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.contract import TRANSFORMS
from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import require_floating, shape_text
from stn_serve.ops.affine_grid import affine_grid, affine_grid_backward
from stn_serve.ops.base_grid import GridGenerator
from stn_serve.ops.projective_grid import projective_grid, projective_grid_backward
from stn_serve.ops.tps_grid import check_control_grid, tps_grid, tps_kernel_matrix


class Transform(GridGenerator):
    """Base of the families: `num_params`, `identity_params()`, `forward(params) -> grid` and
    `params_backward(params, grad_grid) -> grad_params`."""

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

    def params_backward(self, params: torch.Tensor, grad_grid: torch.Tensor) -> torch.Tensor:
        """Tensor[N, P]: the gradient with respect to `params` from the gradient with respect to
        the grid (Tensor[N, h, w, 2]), by the hand-written backward of the grid generator."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}, {super().extra_repr()}"


class AffineFamily(Transform):
    """A family of affine maps: `matrix(params)` builds the [N, 2, 3] matrix and
    `matrix_backward(params, grad_matrix)` takes its gradient back to the parameters."""

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 2, 3] for params (Tensor[N, P])."""
        raise NotImplementedError

    def matrix_backward(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Tensor[N, P] from the gradient with respect to the matrix (Tensor[N, 2, 3])."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        self.check_params(params)
        return affine_grid(self.matrix(params), self.size_for(params), self.align_corners)

    def params_backward(self, params, grad_grid):
        grad = affine_grid_backward(grad_grid, self.size_for(params), self.align_corners)
        return self.matrix_backward(params, grad)


def _rows(entries: list[torch.Tensor]) -> torch.Tensor:
    """Tensor[N, 2, 3] from six Tensor[N] entries, row by row."""
    return torch.stack(entries, dim=1).view(entries[0].shape[0], 2, 3)


class Translation(AffineFamily):
    name = "translation"
    num_params = 2
    _identity = (0.0, 0.0)

    def matrix(self, params):
        tx, ty = params.unbind(1)
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        return _rows([one, zero, tx, zero, one, ty])

    def matrix_backward(self, params, grad):
        return torch.stack((grad[:, 0, 2], grad[:, 1, 2]), dim=1)


class Attention(AffineFamily):
    name = "attention"
    num_params = 3
    _identity = (1.0, 0.0, 0.0)

    def matrix(self, params):
        scale, tx, ty = params.unbind(1)
        zero = torch.zeros_like(tx)
        return _rows([scale, zero, tx, zero, scale, ty])

    def matrix_backward(self, params, grad):
        return torch.stack((grad[:, 0, 0] + grad[:, 1, 1], grad[:, 0, 2], grad[:, 1, 2]), dim=1)


class Similarity(AffineFamily):
    name = "similarity"
    num_params = 4
    _identity = (0.0, 1.0, 0.0, 0.0)

    def matrix(self, params):
        angle, scale, tx, ty = params.unbind(1)
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        return _rows([cos, -sin, tx, sin, cos, ty])

    def matrix_backward(self, params, grad):
        # matrix = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]
        angle, scale = params[:, 0], params[:, 1]
        cos, sin = torch.cos(angle), torch.sin(angle)
        g00, g01, g10, g11 = grad[:, 0, 0], grad[:, 0, 1], grad[:, 1, 0], grad[:, 1, 1]
        grad_angle = scale * (-(g00 + g11) * sin + (g10 - g01) * cos)
        grad_scale = (g00 + g11) * cos + (g10 - g01) * sin
        return torch.stack((grad_angle, grad_scale, grad[:, 0, 2], grad[:, 1, 2]), dim=1)


class Affine(AffineFamily):
    name = "affine"
    num_params = 6
    _identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def matrix(self, params):
        return params.view(params.shape[0], 2, 3)

    def matrix_backward(self, params, grad):
        return grad.flatten(1)


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

    def params_backward(self, params, grad_grid):
        grad = projective_grid_backward(
            grad_grid, self.homography(params), self.size_for(params), self.align_corners
        )
        # The last entry of the homography is the constant 1, not a parameter.
        return grad.flatten(1)[:, :-1]


class ThinPlateSpline(Transform):
    """Holds its constant kernel M (`tps_kernel_matrix`, Tensor[h * w, K]) as a buffer, so that a
    traced backward (the gradient export) sees it as a constant instead of tracing its linear
    solve, which ONNX has no op for."""

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
        kernel = tps_kernel_matrix(*self.out_size, self.align_corners, self.control_grid)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        self.check_params(params)
        offsets = params.view(params.shape[0], self.num_params // 2, 2)
        return tps_grid(offsets, self.size_for(params), self.align_corners, self.control_grid)

    def params_backward(self, params, grad_grid):
        # tps_grid_backward's formula, grad_offsets = M^T @ grad_grid, with M held here.
        points = grad_grid.reshape(grad_grid.shape[0], -1, 2)
        return torch.matmul(self.kernel.to(grad_grid).T, points).flatten(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, control_grid={self.control_grid}"


FAMILIES: dict[str, type[Transform]] = {
    family.name: family
    for family in (Translation, Attention, Similarity, Affine, Projective, ThinPlateSpline)
}
if tuple(FAMILIES) != TRANSFORMS:  # the contract names what this module must implement
    raise ImportError(
        f"transform families {list(FAMILIES)} differ from the contract's {TRANSFORMS}"
    )


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
    if name not in FAMILIES:
        raise InvalidInputError(f"transform must be one of {', '.join(TRANSFORMS)}, got {name!r}")
    family = FAMILIES[name]
    allowed = {"control_grid"} if family is ThinPlateSpline else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidInputError(
            f"transform {name!r} takes options {sorted(allowed) or 'none'}, got {unknown}"
        )
    return family(out_size, align_corners, **options)
