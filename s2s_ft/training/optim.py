"""The optimizer and learning-rate schedule, from plain values (no argparse Namespace).

AdamW with BERT's weight-decay rule (no decay on biases and LayerNorm weights, the 1-D parameters); a linear warmup
over ``num_warmup_steps`` (step 0 already trains: HF's schedule would give it lr 0), then a linear decay to 0 at
``num_training_steps``.
"""
from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, *, learning_rate: float, weight_decay: float, adam_epsilon: float,
                   num_warmup_steps: int, num_training_steps: int):
    """(optimizer, scheduler); ``scheduler.step()`` once per optimizer step."""
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA freezes the pretrained weights
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=learning_rate, eps=adam_epsilon, fused=_fused_supported(model))
    warmup, total = num_warmup_steps, num_training_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # step 0 already trains (HF's schedule would give lr 0 there)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _fused_supported(model: torch.nn.Module) -> bool:
    """The fused AdamW kernel (one pass over all parameters) where torch has it: on a 2-core CPU it takes 14 ms a
    step against 91 ms for the per-parameter loop (all-MiniLM-L6-v2's 22M parameters)."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
               for p in model.parameters())
