"""One training epoch and one evaluation pass, with figures summed over all processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from stn_serve.train.distributed import Context, all_sum, sync_buffers
from stn_serve.train.losses import pose_consistency

#: Progress-bar postfix refresh interval; reading the loss forces a device sync.
POSTFIX_EVERY = 20


def _summary(totals: torch.Tensor) -> dict[str, float]:
    loss_sum, correct, count = totals.tolist()
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    context: Context,
    description: str,
    progress: bool,
    pose_weight: float = 0.0,
) -> dict[str, float]:
    """Train one pass over `loader`; returns the mean loss and accuracy over all processes.

    The loss is cross-entropy plus `pose_weight` times the pose-consistency loss
    (`stn_serve.train.losses`) for models with a spatial transformer; the reported loss is the
    cross-entropy alone, comparable with validation.
    """
    model.train()
    transformer = getattr(getattr(model, "module", model), "transformer", None)
    pose_weight = pose_weight if transformer is not None else 0.0
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)  # loss sum, correct, count
    bar = tqdm(
        loader,
        desc=description,
        leave=False,
        disable=not (progress and context.is_main),
        unit="batch",
    )
    for step, (images, labels, poses) in enumerate(bar):
        images, labels = (
            images.to(context.device, non_blocking=True),
            labels.to(context.device, non_blocking=True),
        )
        output = model(images)
        logits = output.logits
        loss = F.cross_entropy(logits, labels)
        objective = loss
        if pose_weight > 0:
            grid = transformer.grid_generator(output.theta)  # (B, h, w, 2)
            objective = loss + pose_weight * pose_consistency(grid, poses.to(context.device))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            totals += torch.stack(
                [
                    loss.detach().double() * len(labels),
                    (logits.argmax(1) == labels).sum().double(),
                    torch.tensor(float(len(labels)), dtype=torch.float64, device=context.device),
                ]
            )
        if step % POSTFIX_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return _summary(all_sum(totals, context))


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, context: Context
) -> dict[str, float]:
    """Mean loss and accuracy of `model` on images (Tensor[N, C, H, W]) / labels (Tensor[N]).

    Each process scores every world_size-th image and the sums are combined, so the figures
    cover each image exactly once.
    """
    sync_buffers(model, context)
    model.eval()
    images, labels = (
        images[context.rank :: context.world_size],
        labels[context.rank :: context.world_size],
    )
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)
    for start in range(0, len(labels), batch_size):
        batch = images[start : start + batch_size].to(context.device)
        target = labels[start : start + batch_size].to(context.device)
        logits = model(batch).logits
        totals += torch.stack(
            [
                F.cross_entropy(logits, target, reduction="sum").double(),
                (logits.argmax(1) == target).sum().double(),
                torch.tensor(float(len(target)), dtype=torch.float64, device=context.device),
            ]
        )
    return _summary(all_sum(totals, context))
