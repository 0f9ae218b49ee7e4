"""Adversarial training on word embeddings (Miyato et al. 2017): the loss of each review pushed the worst way."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def adversarial_loss(score: Callable[[torch.Tensor], torch.Tensor], loss: torch.Tensor, embedded: torch.Tensor,
                     labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """The loss of the batch with each review's embeddings moved the way that raises `loss` most, by
    `fraction` of their own L2 norm; `score` maps embeddings (time, batch, embed) to logits (batch,)."""
    (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)  # (time, batch, embed)
    # Scaled per review relative to its own embeddings, so growing the embeddings cannot shrink the push.
    size = fraction * embedded.detach().norm(dim=(0, 2))  # (batch,)
    step = grad * (size / grad.norm(dim=(0, 2)).clamp_min(1e-12))[None, :, None]  # (time, batch, embed)
    return F.binary_cross_entropy_with_logits(score(embedded + step.detach()), labels.float())
