"""The optimiser and the lr schedule: AdamW in four parameter groups, linear warm-up, x0.1 at each milestone."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float,
                    backbone_prefix: str = "backbone.body.") -> torch.optim.AdamW:
    """AdamW with four parameter groups: {ResNet body, rest} x {decayed, not decayed}.

    The ResNet body (``backbone.body.*``) trains at ``lr * backbone_lr_mult``; the FPN and head at
    ``lr``. Norm weights and biases (1-d parameters) get no weight decay: decaying them only pulls
    scales/offsets towards 0 without regularising anything (the common detection practice).
    Frozen parameters are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith(backbone_prefix), param.ndim <= 1), []).append(param)
    param_groups = []
    for (is_backbone, no_decay), params in sorted(groups.items()):  # fixed order: resume-safe
        param_groups.append({"params": params, "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                             "weight_decay": 0.0 if no_decay else weight_decay})
    # The fused kernel: one pass over all parameters (on a 2-core CPU 5x faster than the per-tensor loop).
    fused = all(p.device.type in ("cpu", "cuda") for group in param_groups for p in group["params"])
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused)


def lr_factor(it: int, *, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int]) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warm-up, then x0.1 per milestone."""
    factor = 0.1 ** sum(it >= m for m in milestones)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_ratio * (1 - alpha) + alpha
    return factor


def build_lr_schedule(optimizer: torch.optim.Optimizer, *, warmup_iters: int, warmup_ratio: float,
                      milestones: Sequence[int]) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of :func:`lr_factor`, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(
        it, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio, milestones=milestones))
