"""Token-level cross-entropy over the predicted positions only (the vocabulary projection is the costly part,
so it runs on the gathered positions, not on the whole packed sequence)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from s2s_ft.data.packing import IGNORE_INDEX


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
        loss = F.cross_entropy(model.head(hidden[predicted]).float(), labels[predicted],
                               label_smoothing=label_smoothing, reduction=reduction)
        return loss if normalizer is None else loss / normalizer
    if input_ids is None or copyable is None:
        raise ValueError("a copy-mechanism model's loss needs the batch's input_ids and copyable mask")
    token_losses = copy_mixture_token_losses(model, hidden, predicted, labels[predicted], input_ids, copyable,
                                             label_smoothing)
    return token_losses.mean() if normalizer is None else token_losses.sum() / normalizer


def copy_mixture_token_losses(model, hidden, predicted, targets, input_ids, copyable, label_smoothing):
    """[N] label-smoothed losses under the copy mixture, computed from the MLM head's log-softmax and per-column
    terms (``CopyAttention.mixture``): the mixture differs from log g + log P_vocab only at the row's source words, so
    no second [N, V] tensor is built (on a CPU, [N, V] passes cost as much as the rest of the copy path many times).
      -log P(y): the column value where y is a source word, else -(log g + log P_vocab(y));
      mean_w -log P(w) = -(log g + mean_w log P_vocab(w)) - (1/V) sum over distinct source words of the difference."""
    rows = predicted.nonzero()[:, 0]
    source_ids, row_copyable = input_ids[rows], copyable[rows]
    keys = model.copy.source_keys(hidden)  # every column's key; only the copyable ones are attended
    copy_scores = model.copy.scores(hidden, keys)[predicted]  # [N, L]: each prediction over its own row
    states = hidden[predicted]
    logits = model.head(states)
    picked, vocab_mean = LogSoftmaxPicks.apply(logits, torch.cat([targets[:, None], source_ids], 1))
    vocab_at_target, vocab_at_columns = picked[:, 0], picked[:, 1:]
    log_vocab_share, column, same_word = model.copy.mixture(states, vocab_at_columns, copy_scores, source_ids,
                                                            row_copyable)
    outside = log_vocab_share + vocab_at_columns  # each column's word as if it were not copyable
    is_target = (source_ids == targets[:, None]) & row_copyable
    target_log_prob = torch.where(is_target.any(-1), column.masked_fill(~is_target, float("-inf")).amax(-1),
                                  log_vocab_share[:, 0] + vocab_at_target)
    gain = ((column - outside) / same_word.clamp_min(1)).masked_fill(~row_copyable, 0.0).sum(-1)
    mean_log_prob = log_vocab_share[:, 0] + vocab_mean + gain / logits.shape[-1]
    return -(1.0 - label_smoothing) * target_log_prob - label_smoothing * mean_log_prob


class LogSoftmaxPicks(torch.autograd.Function):
    """``log_softmax(logits)`` (in fp32 at least) at some columns of each row, and its mean over the row, without
    keeping the [N, V] log-softmax for the backward pass. Autograd's composition (log_softmax, gather, mean, .float())
    spends several [N, V] passes in backward (a zero fill for the gather, the mean's broadcast, their sum, the
    softmax, ...); the closed form needs the softmax and two in-place passes:
      d/dz = scatter(g_picked) + g_mean / V - softmax(z) * (sum(g_picked) + g_mean).
    It keeps the logits in their own dtype (bf16 under autocast: half of the fp32 tensor autograd kept)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, columns: torch.Tensor):
        log_probs = torch.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        picked = log_probs.gather(1, columns)
        log_normalizer = logits[:, 0].to(log_probs.dtype) - log_probs[:, 0]
        ctx.save_for_backward(logits, columns, log_normalizer)
        return picked, log_probs.mean(-1)

    @staticmethod
    def backward(ctx, grad_picked: Optional[torch.Tensor], grad_mean: Optional[torch.Tensor]):
        logits, columns, log_normalizer = ctx.saved_tensors
        if grad_picked is None:  # an output the loss did not use
            grad_picked = log_normalizer.new_zeros(columns.shape)
        if grad_mean is None:
            grad_mean = torch.zeros_like(log_normalizer)
        total = grad_picked.sum(-1) + grad_mean
        grad = torch.sub(logits, log_normalizer[:, None]).exp_()  # the softmax, in fp32 (type promotion)
        grad.mul_(-total[:, None]).add_((grad_mean / logits.shape[-1])[:, None])
        grad.scatter_add_(1, columns, grad_picked.to(grad.dtype))
        return grad.to(logits.dtype), None
