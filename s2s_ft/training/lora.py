"""LoRA fine-tuning (``--lora_rank``) through ``peft`` (an optional dependency: ``pip install .[lora]``).

peft injects low-rank adapters into the shared Transformer's linear layers in place (``inject_adapter_in_model``:
the model stays a ``UnifiedTransformer``, so the packing, the loss, the dev decoder and the checkpoints need no
other code); the pretrained weights are frozen. The parts a pretrained checkpoint may lack are trained in full
beside the adapters (``TRAINED_IN_FULL``: the MLM head's transform and LayerNorm, the copy attention), since a fresh
head frozen at its initialisation would cap what the adapters can do.

What a LoRA run writes:

* ``OUTPUT_DIR/lora_base/``: the model the run starts from (frozen weights, fresh parts at their initialisation),
  an ordinary s2s-ft checkpoint;
* each ``ckpt-N/``: the adapters merged into the weights (an ordinary checkpoint: every decoder and server reads it)
  plus ``ckpt-N/adapter/``, peft's own format for ``S2sFtForConditionalGeneration`` (``adapter_config.json``,
  ``adapter_model.safetensors``) and ``trained_in_full.safetensors``. ``s2s_ft.hf.from_pretrained_with_adapter``
  loads ``lora_base`` + an adapter as a peft model.
"""
from __future__ import annotations

import copy
import os

import torch

from s2s_ft.model import checkpoint

LORA_TARGETS = ("qkv", "out", "ffn_in", "ffn_out")  # every linear layer of the body (attention and feed-forward)
TRAINED_IN_FULL = ("head.transform.", "head.norm.", "copy.")
BASE_DIR = "lora_base"
ADAPTER_DIR = "adapter"
HF_PREFIX = "transformer."  # S2sFtForConditionalGeneration's name for the wrapped model


def lora_config(rank: int, alpha: float, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS))


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float) -> None:
    """Inject adapters of ``rank`` into ``model`` (in place) and leave only them and TRAINED_IN_FULL trainable."""
    try:
        from peft import inject_adapter_in_model
    except ImportError:
        from s2s_ft.errors import UsageError
        raise UsageError("--lora_rank needs peft: pip install peft (or this package's [lora] extra)") from None
    inject_adapter_in_model(lora_config(rank, alpha, dropout), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name or name.startswith(TRAINED_IN_FULL))


def trainable_state(model: torch.nn.Module) -> dict:
    """What a LoRA run changes (adapters and TRAINED_IN_FULL): all that resuming needs beside the base."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every adapter merged into its layer's weight and the plain layer put back: the
    module tree, and so the saved keys, of a model trained without LoRA."""
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged


def save_adapter(model: torch.nn.Module, rank: int, alpha: float, dropout: float, directory: str) -> None:
    """peft's adapter files for ``S2sFtForConditionalGeneration`` (keys under ``base_model.model.transformer.``),
    and the parts trained in full."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    config = lora_config(rank, alpha, dropout)
    config.save_pretrained(directory)
    adapters = get_peft_model_state_dict(model)
    save_file({"base_model.model." + HF_PREFIX + key: value.detach().cpu().contiguous()
               for key, value in adapters.items()}, os.path.join(directory, "adapter_model.safetensors"))
    full = {HF_PREFIX + name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if p.requires_grad and "lora_" not in name}
    save_file(full, os.path.join(directory, checkpoint.TRAINED_IN_FULL_NAME))
