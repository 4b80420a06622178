"""The spatial transformer on its own, forward and hand-written backward, as exportable modules.

`TransformerBackward` is what `stn-serve export --gradients` writes as `gradients.onnx`: inputs
`image`, `theta`, `grad_crop`, outputs `grad_image`, `grad_theta`, the vector-Jacobian product of
the crop with respect to the image and the transform parameters. It is the custom layer's own
backward (`bilinear_sample_backward`, whose scatter-add of the four weighted contributions becomes
ONNX `ScatterElements` with reduction "add", and the grid generators' backward), chained by hand
through each family's parameterisation (`Transform.params_backward`), so users get the transformer's gradients outside torch
(test-time optimisation, attacks, robustness checks).
"""

from __future__ import annotations

import torch
from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.ops import bilinear_sample_backward

GRADIENT_INPUTS = ("image", "theta", "grad_crop")
GRADIENT_OUTPUTS = ("grad_image", "grad_theta")


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
        return self.transformer.sample(image, theta)


class TransformerBackward(nn.Module):
    """The vector-Jacobian product of `TransformerForward`, by the custom layer's hand-written
    backward.

    forward(image (Tensor[N, C, H, W]), theta (Tensor[N, P]), grad_crop (Tensor[N, C, h, w]))
    -> (grad_image (Tensor[N, C, H, W]), grad_theta (Tensor[N, P])).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, image: torch.Tensor, theta: torch.Tensor,
                grad_crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        transformer = self.transformer
        grid = transformer.grid_generator(theta)
        grad_image, grad_grid = bilinear_sample_backward(
            grad_crop, image, grid, transformer.padding_mode, transformer.align_corners)
        grad_theta = transformer.grid_generator.params_backward(theta, grad_grid)
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
