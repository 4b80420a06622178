"""`SpatialTransformer`: localisation net -> grid generator -> bilinear sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.ops import grid_sample
from stn_serve.ops.transforms import AffineFamily, make_transform


class SpatialTransformer(nn.Module):
    """Predicts a transform from the image and samples a crop of `crop_size` through it.

    Args:
        localisation: module mapping Tensor[N, C, H, W] to Tensor[N, P]; P must equal the
            family's `num_params`.
        transform: transform family name (see `stn_serve.ops.transforms.make_transform`).
        crop_size: (h, w) of the output; may differ from the input size.
        padding_mode: what the sampler reads outside the image: "zeros" | "border" | "reflection".
        align_corners: grid convention, shared by grid generator and sampler. Default: False.
    """

    def __init__(
        self,
        localisation: nn.Module,
        transform: str,
        crop_size: tuple[int, int],
        padding_mode: str = "zeros",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.localisation = localisation
        self.grid_generator = make_transform(
            transform, tuple(crop_size), align_corners=align_corners
        )
        self.transform = transform
        self.crop_size = tuple(crop_size)
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        # True samples with torch's own affine_grid and grid_sample instead of this project's
        # layer (affine families only), so that `stn-serve bench layer --train-step` can time
        # the same model both ways.
        self.native_ops = False

    @property
    def num_params(self) -> int:
        return self.grid_generator.num_params

    def forward(
        self, image: torch.Tensor, loc_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the crop.

        Args:
            image (Tensor[N, C, H, W]): what the crop is sampled from.
            loc_input (Tensor[N, C, H, W] | None): what the localisation net sees; default `image`.
                (The models pass the normalised image here and sample from the raw one.)

        Returns:
            crop (Tensor[N, C, h, w]) and theta (Tensor[N, P]).
        """
        theta = self.localisation(image if loc_input is None else loc_input)
        return self.sample(image, theta), theta

    def sample(self, image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The crop (Tensor[N, C, h, w]) of `image` (Tensor[N, C, H, W]) through the transform
        parameters `theta` (Tensor[N, P])."""
        if self.native_ops:
            return self._native_crop(image, theta)
        grid = self.grid_generator(theta)  # (N, h, w, 2)
        return grid_sample(
            image, grid, padding_mode=self.padding_mode, align_corners=self.align_corners
        )

    def _native_crop(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The crop by torch.nn.functional.affine_grid and grid_sample (see `native_ops`)."""
        if not isinstance(self.grid_generator, AffineFamily):
            raise InvalidInputError(
                f"native_ops needs an affine transform family, got {self.transform!r}"
            )
        size = [image.shape[0], image.shape[1], *self.crop_size]
        grid = F.affine_grid(
            self.grid_generator.matrix(params), size, align_corners=self.align_corners
        )
        return F.grid_sample(
            image,
            grid,
            mode="bilinear",
            padding_mode=self.padding_mode,
            align_corners=self.align_corners,
        )

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform}, crop_size={self.crop_size}, "
            f"padding_mode={self.padding_mode}, align_corners={self.align_corners}"
        )
