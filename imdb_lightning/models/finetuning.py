"""Fine-tuning a pretrained encoder (ULMFiT, Howard & Ruder 2018): per-layer learning rates, gradual
unfreezing, and the check that stops a run whose predictions have collapsed to one side.

Layer groups run from the head down: head, recurrent layers top down, embedding tables.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError, UserError


class FineTuningCollapsed(UserError):
    pass


def check_lr_decay(lr_decay: float) -> None:
    if lr_decay < 1:
        raise ConfigError(f"model.lr_decay divides the learning rate layer by layer; it must be at least 1, got {lr_decay}")


def discriminative_groups(groups: list[list[nn.Parameter]], lr_decay: float) -> list[dict]:
    """Optimizer groups: the head at the optimizer's rate, each group below at the one above's / lr_decay."""
    return [{"params": group, "lr_scale": lr_decay**-depth} for depth, group in enumerate(groups)]


def unfreeze(groups: list[list[nn.Parameter]], epoch: int) -> None:
    """Epoch 0 trains the head alone; each epoch after, one more group, top down (the embedding last)."""
    for depth, group in enumerate(groups):
        for param in group:
            param.requires_grad_(depth <= epoch)


def check_collapse(share_positive: float, epoch: int) -> None:
    """Stop a fine-tuning run whose validation predictions all fall on one side, from its second epoch
    on (one epoch of a small run may not have moved off one side yet)."""
    if epoch >= 1 and share_positive in (0.0, 1.0):
        side = "positive" if share_positive else "negative"
        raise FineTuningCollapsed(
            f"fine-tuning collapsed: after epoch {epoch} every validation review is predicted {side}; "
            "lower the learning rate (or unfreeze more gradually) and start again; the checkpoints written so far are kept")
