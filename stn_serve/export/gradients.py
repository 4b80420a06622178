"""The spatial transformer on its own, forward and hand-written backward, as exportable modules.

`TransformerBackward` is what `stn-serve export --gradients` writes as `gradients.onnx`: inputs
`image`, `theta`, `grad_crop`, outputs `grad_image`, `grad_theta`, the vector-Jacobian product of
the crop with respect to the image and the transform parameters. It is the custom layer's own
backward (`bilinear_sample_backward`, whose scatter-add of the four weighted contributions becomes
ONNX `ScatterElements` with reduction "add", and the grid generators' backward), chained by hand
through each family's parameterisation, so users get the transformer's gradients outside torch
(test-time optimisation, attacks, robustness checks).
"""

from __future__ import annotations

import torch
from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.ops import (
    affine_grid_backward,
    bilinear_sample_backward,
    grid_sample,
    projective_grid_backward,
    tps_kernel_matrix,
)
from stn_serve.ops.transforms import AffineFamily, Projective, ThinPlateSpline, Transform

GRADIENT_INPUTS = ("image", "theta", "grad_crop")
GRADIENT_OUTPUTS = ("grad_image", "grad_theta")


def _translation_backward(params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.stack((grad[:, 0, 2], grad[:, 1, 2]), dim=1)


def _attention_backward(params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.stack((grad[:, 0, 0] + grad[:, 1, 1], grad[:, 0, 2], grad[:, 1, 2]), dim=1)


def _similarity_backward(params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # theta = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]
    angle, scale = params[:, 0], params[:, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    g00, g01, g10, g11 = grad[:, 0, 0], grad[:, 0, 1], grad[:, 1, 0], grad[:, 1, 1]
    grad_angle = scale * (-(g00 + g11) * sin + (g10 - g01) * cos)
    grad_scale = (g00 + g11) * cos + (g10 - g01) * sin
    return torch.stack((grad_angle, grad_scale, grad[:, 0, 2], grad[:, 1, 2]), dim=1)


def _affine_backward(params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.flatten(1)


# d loss / d params from d loss / d theta (Tensor[N, 2, 3]) for each affine family.
AFFINE_PARAMS_BACKWARD = {
    "translation": _translation_backward,
    "attention": _attention_backward,
    "similarity": _similarity_backward,
    "affine": _affine_backward,
}


def tps_kernel(generator: ThinPlateSpline) -> torch.Tensor:
    """Tensor[h * w, K] (float64): the thin-plate spline's constant matrix M for `generator`.

    Computed eagerly, before tracing, so the exported graph holds it as a constant: traced, its
    linear solve would need an op ONNX does not have.
    """
    height, width = generator.out_size
    return tps_kernel_matrix(height, width, generator.align_corners, generator.control_grid)


def params_backward(generator: Transform, params: torch.Tensor, grad_grid: torch.Tensor,
                    kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor[N, P]: the gradient with respect to a family's parameters of its grid.

    Args:
        generator: the transform family that made the grid.
        params (Tensor[N, P]): its parameters.
        grad_grid (Tensor[N, h, w, 2]): the gradient with respect to the grid.
        kernel (Tensor[h * w, K] | None): `tps_kernel(generator)`, for the tps family only.
    """
    size = generator.size_for(params)
    if isinstance(generator, AffineFamily):
        grad_theta = affine_grid_backward(grad_grid, size, generator.align_corners)
        return AFFINE_PARAMS_BACKWARD[generator.name](params, grad_theta)
    if isinstance(generator, Projective):
        grad_homography = projective_grid_backward(
            grad_grid, generator.homography(params), size, generator.align_corners)
        # The last entry of the homography is the constant 1, not a parameter.
        return grad_homography.flatten(1)[:, :-1]
    if isinstance(generator, ThinPlateSpline):
        # tps_grid_backward's formula, grad_offsets = M^T @ grad_grid, with M given.
        grad_offsets = torch.matmul(kernel.to(grad_grid).T, grad_grid.reshape(grad_grid.shape[0], -1, 2))
        return grad_offsets.flatten(1)
    raise InvalidInputError(f"no gradient export for transform {generator.name!r}")


def spatial_transformer(model: nn.Module) -> nn.Module:
    """The `SpatialTransformer` of an ST-CNN, or InvalidInputError for a model without one."""
    transformer = getattr(model, "transformer", None)
    if transformer is None:
        raise InvalidInputError(
            f"{type(model).__name__} has no spatial transformer, so it has no transformer gradients to export"
        )
    return transformer


class TransformerForward(nn.Module):
    """The crop as a function of the image and the transform parameters.

    forward(image (Tensor[N, C, H, W]), theta (Tensor[N, P])) -> crop (Tensor[N, C, h, w]).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        transformer = self.transformer
        grid = transformer.grid_generator(theta)
        return grid_sample(image, grid, transformer.padding_mode, transformer.align_corners)


class TransformerBackward(nn.Module):
    """The vector-Jacobian product of `TransformerForward`, by the custom layer's hand-written
    backward.

    forward(image (Tensor[N, C, H, W]), theta (Tensor[N, P]), grad_crop (Tensor[N, C, h, w]))
    -> (grad_image (Tensor[N, C, H, W]), grad_theta (Tensor[N, P])).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        generator = transformer.grid_generator
        kernel = tps_kernel(generator) if isinstance(generator, ThinPlateSpline) else None
        self.register_buffer("tps_kernel", kernel, persistent=False)

    def forward(self, image: torch.Tensor, theta: torch.Tensor,
                grad_crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        transformer = self.transformer
        grid = transformer.grid_generator(theta)
        grad_image, grad_grid = bilinear_sample_backward(
            grad_crop, image, grid, transformer.padding_mode, transformer.align_corners)
        grad_theta = params_backward(transformer.grid_generator, theta, grad_grid, self.tps_kernel)
        return grad_image, grad_theta


def autograd_reference(transformer: nn.Module, image: torch.Tensor, theta: torch.Tensor,
                       grad_crop: torch.Tensor) -> dict[str, torch.Tensor]:
    """{grad_image, grad_theta} by torch autograd through the custom layer (the reference the
    exported backward is checked against)."""
    image = image.detach().requires_grad_(True)
    theta = theta.detach().requires_grad_(True)
    crop = TransformerForward(transformer)(image, theta)
    grad_image, grad_theta = torch.autograd.grad(crop, (image, theta), grad_crop)
    return {"grad_image": grad_image, "grad_theta": grad_theta}
