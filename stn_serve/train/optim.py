"""Optimiser with a separate learning rate for the localisation net, and the step-wise schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.train.config import OPTIMIZERS, SCHEDULES

#: The step schedule multiplies the rate by STEP_GAMMA at these fractions of training.
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1


def make_optimizer(
    model: nn.Module, name: str, lr: float, loc_lr_mult: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov, momentum 0.9) with two groups: the localisation net at
    `lr * loc_lr_mult`, everything else at `lr`.

    The paper trains the localisation net with a lower rate, as its updates move the sampling
    grid of every pixel at once. With the pose-consistency loss (`stn_serve.train.losses`) giving
    it a direct signal, a higher rate learns the rotation faster: the default is 2x (see the
    sweep in docs/training.md).
    """
    if name not in OPTIMIZERS:
        raise InvalidInputError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    if lr <= 0 or loc_lr_mult < 0 or weight_decay < 0:
        raise InvalidInputError(
            f"need lr > 0, loc_lr_mult >= 0 and weight_decay >= 0, got {lr}, {loc_lr_mult}, {weight_decay}"
        )
    localisation = {id(p) for p in model.localisation_parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in localisation], "lr": lr},
        {
            "params": [p for p in model.parameters() if id(p) in localisation],
            "lr": lr * loc_lr_mult,
        },
    ]
    groups = [group for group in groups if group["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base rates after `step` of `total_steps` optimiser steps.

    The first `warmup_steps` rise linearly to 1; the schedule runs over the steps after them.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return STEP_GAMMA ** sum(progress >= milestone for milestone in STEP_MILESTONES)
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int = 0
):
    """A LambdaLR stepped once per optimiser step; its state_dict holds plain numbers only."""
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if warmup_steps < 0:
        raise InvalidInputError(f"warm-up must be >= 0 steps, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, total_steps, warmup_steps)
    )
