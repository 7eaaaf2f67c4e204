"""Token-level cross-entropy over the predicted positions only (the vocabulary projection is the costly part,
so it runs on the gathered positions, not on the whole packed sequence)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .packing import IGNORE_INDEX


def seq2seq_loss(model, hidden: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1,
                 normalizer: Optional[float] = None, input_ids: Optional[torch.Tensor] = None,
                 copyable: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over every predicted token of the batch; with ``normalizer``, the SUM of
    the token losses divided by it instead (data parallelism: a rank's rows over the global predicted-token count).

    With the copy mechanism (``model.copy``; needs the batch's ``input_ids`` and ``copyable`` mask) the loss is that
    of the mixture distribution: label smoothing then spreads its epsilon over the mixture's log-probabilities,
    (1 - eps) * -log P(y) + eps * mean_w -log P(w), as it does over the softmax's without it."""
    predicted = labels != IGNORE_INDEX
    reduction = "mean" if normalizer is None else "sum"
    if getattr(model, "copy", None) is None:
        # fp32 softmax: bf16/fp16 log-sums over a 30k vocabulary lose too much precision.
        scores = model.head(hidden[predicted]).float()
    else:
        if input_ids is None or copyable is None:
            raise ValueError("a copy-mechanism model's loss needs the batch's input_ids and copyable mask")
        rows = predicted.nonzero()[:, 0]
        keys = model.copy.source_keys(hidden)  # every column's key; only the copyable ones are attended
        copy_scores = model.copy.scores(hidden, keys)[predicted]  # [N, L]: each prediction over its own row
        # normalised log-probabilities: cross_entropy's log_softmax leaves them as they are (up to rounding)
        scores = model.log_probs(hidden[predicted], copy_scores, input_ids[rows], copyable[rows])
    loss = F.cross_entropy(scores, labels[predicted], label_smoothing=label_smoothing, reduction=reduction)
    return loss if normalizer is None else loss / normalizer
