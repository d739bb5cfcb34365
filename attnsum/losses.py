"""The training objectives: BERTSum's summed binary cross-entropy over sentences (training,
head importance) and the distillation term (students)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sentence_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed binary cross-entropy over the real sentences (BERTSum)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (bce * mask).sum()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed binary KL(teacher || student) of the sentence probabilities: 0 when they agree."""
    p = torch.sigmoid(teacher)
    kl = (p * (F.logsigmoid(teacher) - F.logsigmoid(student))
          + (1 - p) * (F.logsigmoid(-teacher) - F.logsigmoid(-student)))
    return (kl * mask).sum()
