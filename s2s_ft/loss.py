"""Token-level cross-entropy over the predicted positions only (the vocabulary projection is the costly part,
so it runs on the gathered positions, not on the whole packed sequence)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .packing import IGNORE_INDEX


def seq2seq_loss(model, hidden: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1,
                 normalizer: Optional[float] = None) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over every predicted token of the batch; with ``normalizer``, the SUM of
    the token losses divided by it instead (data parallelism: a rank's rows over the global predicted-token count)."""
    predicted = labels != IGNORE_INDEX
    logits = model.head(hidden[predicted])
    # fp32 softmax: bf16/fp16 log-sums over a 30k vocabulary lose too much precision.
    if normalizer is None:
        return F.cross_entropy(logits.float(), labels[predicted], label_smoothing=label_smoothing)
    return F.cross_entropy(logits.float(), labels[predicted], label_smoothing=label_smoothing,
                           reduction="sum") / normalizer
