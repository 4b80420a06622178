"""PNG figures of a run: training curves, and test inputs beside their canonicalised crops."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

#: Image pairs per row of the crops figure.
PAIRS_PER_ROW = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch (training and validation) from metrics.jsonl records."""
    plt = _pyplot()
    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for split in ("train", "val"):
            axes.plot(
                epochs, [record[f"{split}_{metric}"] for record in history], marker="o", label=split
            )
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("training curves")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _as_picture(image: torch.Tensor):
    """Tensor[C, H, W] in [0, 1] -> array for imshow ([H, W] grey or [H, W, 3])."""
    image = image.clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


@torch.no_grad()
def plot_crops(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path
) -> Path:
    """Each input (top) above the transformer's crop (bottom), titled "predicted (true)".

    Args:
        model: an STCNN or CNNBaseline, run where it is, in eval mode, and left as it was.
        images (Tensor[N, C, H, W]): inputs in [0, 1].
        labels (Tensor[N]): true classes.
        classes: class names.
        path: PNG to write.
    """
    plt = _pyplot()
    was_training = model.training
    model.eval()
    try:
        output = model(images.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    predicted, crops = output.logits.argmax(1).cpu(), output.crop.cpu()
    count = len(images)
    rows = math.ceil(count / PAIRS_PER_ROW)
    figure, axes = plt.subplots(
        2 * rows, PAIRS_PER_ROW, figsize=(1.5 * PAIRS_PER_ROW, 3.2 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for index in range(count):
        row, column = 2 * (index // PAIRS_PER_ROW), index % PAIRS_PER_ROW
        ok = bool(predicted[index] == labels[index])
        axes[row, column].imshow(_as_picture(images[index]), cmap="gray", vmin=0, vmax=1)
        axes[row, column].set_title(
            f"{classes[predicted[index]]} ({classes[labels[index]]})",
            fontsize=8,
            color="black" if ok else "red",
        )
        axes[row + 1, column].imshow(_as_picture(crops[index]), cmap="gray", vmin=0, vmax=1)
    figure.suptitle("inputs (top) and spatial-transformer crops (bottom): predicted (true)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
