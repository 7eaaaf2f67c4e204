"""Why ``AutoModelForCausalLM`` must not open an s2s-ft directory, and the guard against it.

A fine-tuned directory keeps its family's config (``model_type: "bert"`` etc.) so that ``AutoModelForMaskedLM`` and
every tool that reads BERT weights still open it. The same config makes ``AutoModelForCausalLM`` build
``BertLMHeadModel``: the same weights without the source/target layout (no bidirectional source, no [MASK] to
predict at), which loads with no missing key and generates fluent-looking garbage. Nothing in the directory can
refuse that without breaking ``AutoModelForMaskedLM`` (both read the same config and the same keys), so the guard is
in this package: importing ``s2s_ft.hf`` makes the causal-LM auto class refuse a directory that holds
``s2s_ft_settings.json``, naming the class to use; any other directory loads exactly as before.
"""
from __future__ import annotations

import os

from transformers import AutoModelForCausalLM, BertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from s2s_ft.model.checkpoint import SETTINGS_NAME

FAMILY_CONFIGS = (BertConfig, RobertaConfig, XLMRobertaConfig, ElectraConfig)


class S2sFtCheckpointError(ValueError):
    """An s2s-ft directory handed to a class that would misread it."""


def _refusing(model_class: type) -> type:
    """``model_class`` whose ``from_pretrained`` refuses s2s-ft directories (same name, same behaviour otherwise)."""

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if os.path.isfile(os.path.join(str(pretrained_model_name_or_path), SETTINGS_NAME)):
            raise S2sFtCheckpointError(
                f"{pretrained_model_name_or_path} is an s2s-ft checkpoint: {model_class.__name__} would ignore its "
                f"source/target layout and generate garbage; load it with "
                f"s2s_ft.hf.S2sFtForConditionalGeneration.from_pretrained")
        return super(guarded, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    guarded = type(model_class.__name__, (model_class,), {"from_pretrained": classmethod(from_pretrained),
                                                          "__module__": __name__})
    guarded._s2s_ft_guard = True
    return guarded


def guard_causal_lm_auto_class() -> None:
    """Register the refusing classes for the families s2s-ft saves (idempotent)."""
    for config_class in FAMILY_CONFIGS:
        current = MODEL_FOR_CAUSAL_LM_MAPPING[config_class]
        if not getattr(current, "_s2s_ft_guard", False):
            AutoModelForCausalLM.register(config_class, _refusing(current), exist_ok=True)
