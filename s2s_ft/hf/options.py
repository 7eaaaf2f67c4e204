"""The generation settings of one ``generate()`` call, as ``transformers`` will merge them, rewritten where this class
must differ from a decoder-only model; and the ``transformers`` features it refuses, with why (docs/hf.md lists them).

``transformers`` merges three levels: the call's keyword arguments over a passed ``generation_config`` over the
model's own ``generation_config`` (then its global defaults). The rewrites:

* ``no_repeat_ngram_size`` and ``repetition_penalty`` count the *generated* tokens only (an encoder-decoder model's
  rule, and for n-grams the project's decoder's): the call gets ``transformers``' own processors switched off and ours
  (built by the model from ``ngram_size`` / ``repetition_penalty``) instead;
* ``max_length`` / ``min_length`` (prompt included) are turned into ``max_new_tokens`` / ``min_new_tokens`` when set at
  a higher level than the new-token setting: the class's default ``max_new_tokens`` / ``min_new_tokens`` would
  otherwise always win over them (``transformers`` only warns);
* beam search gets the project's ``BEAM_DEFAULTS`` unless set at any level. They are not in the default
  ``generation_config`` because ``transformers`` refuses to save a config that sets beam-only flags without beams.
"""
from __future__ import annotations

import copy
from typing import Optional

from transformers import GenerationConfig

# No length normalisation, and a sentence stops with num_beams finished hypotheses (fairseq's and s2s-ft's rule).
BEAM_DEFAULTS = {"length_penalty": 0.0, "early_stopping": True}

_ONE_POSITION = ("verifies several candidate tokens in one forward pass, and this model predicts one position per "
                 "forward (the token its fine-tuning method's step feed predicts)")
# setting -> why it cannot apply to a one-stack model (a value that switches it off is not refused)
REFUSED_SETTINGS = {
    "prompt_lookup_num_tokens": f"prompt lookup decoding {_ONE_POSITION}",
    "assistant_early_exit": f"assisted decoding {_ONE_POSITION}",
    "use_mtp": f"multi-token prediction {_ONE_POSITION}",
    "output_attentions": "attention runs in PyTorch's scaled_dot_product_attention, which returns no attention weights",
    "guidance_scale": "classifier-free guidance runs the model on a second prompt outside generate()'s source/target "
                      "layout",
    "token_healing": "it rewrites the prompt's last tokens to continue them; here a prompt is a whole source closed "
                     "by [SEP]",
}
REFUSED_INPUTS = {
    "assistant_model": f"assisted decoding {_ONE_POSITION}",
    "inputs_embeds": "the layout is built from token ids (each step feeds [MASK] or the previous token by id)",
    "decoder_input_ids": "there is no separate decoder: the prompt is [CLS] source [SEP] and generation continues it",
    "negative_prompt_ids": "classifier-free guidance runs the model on a second prompt outside generate()'s "
                           "source/target layout",
}
_OFF_VALUES = {"output_attentions": (False,), "guidance_scale": (1, 1.0), "use_mtp": (False,),
               "token_healing": (False,)}


def setting_level(name: str, kwargs: dict, passed: Optional[GenerationConfig], model: GenerationConfig) -> int:
    """Where ``name`` is set: 3 the call's keyword arguments, 2 the passed config, 1 the model's, 0 nowhere."""
    if kwargs.get(name) is not None:
        return 3
    for level, config in ((2, passed), (1, model)):
        if config is not None and getattr(config, name, None) is not None:
            return level
    return 0


def setting(name: str, kwargs: dict, passed: Optional[GenerationConfig], model: GenerationConfig):
    """The value ``transformers`` will use for ``name`` (None: its global default)."""
    level = setting_level(name, kwargs, passed, model)
    return kwargs[name] if level == 3 else getattr(passed if level == 2 else model, name, None) if level else None


def refuse_unsupported(kwargs: dict, passed: Optional[GenerationConfig], model: GenerationConfig) -> None:
    """ValueError (one line) for a ``transformers`` feature this model cannot serve."""
    for name, why in REFUSED_INPUTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"generate(): {name} is not supported by S2sFtForConditionalGeneration: {why}")
    for name, why in REFUSED_SETTINGS.items():
        value = setting(name, kwargs, passed, model)
        if value is not None and value not in _OFF_VALUES.get(name, ()):
            raise ValueError(f"generate(): {name}={value!r} is not supported by S2sFtForConditionalGeneration: {why}")
    cache = setting("cache_implementation", kwargs, passed, model)
    if cache not in (None, "dynamic"):
        raise ValueError(f"generate(): cache_implementation={cache!r} is not supported: the cache holds only the "
                         f"tokens the layout keeps (S2sFtCache, a DynamicCache); leave cache_implementation unset")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError("generate(): a filled cache cannot be continued: generate() reads the source again; pass the "
                         "whole prompt [CLS] source [SEP] without a cache")


class CallOptions:
    """One call's settings: ``config`` (a copy of the passed generation_config, or None) and ``kwargs`` to hand to
    ``transformers``, and the values of the two processors the model adds (``ngram_size``, ``repetition_penalty``)."""

    def __init__(self, kwargs: dict, passed: Optional[GenerationConfig], model: GenerationConfig, prompt_width: int):
        self.kwargs, self.passed, self.model = dict(kwargs), passed, model
        self.ngram_size = setting("no_repeat_ngram_size", self.kwargs, passed, model) or 0
        penalty = setting("repetition_penalty", self.kwargs, passed, model)
        self.repetition_penalty = 1.0 if penalty is None else float(penalty)
        overrides = {"no_repeat_ngram_size": 0, "repetition_penalty": 1.0}
        for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
            overrides.update(self._length_as_new_tokens(total, new, prompt_width))
        if (setting("num_beams", self.kwargs, passed, model) or 1) > 1:
            overrides.update({name: value for name, value in BEAM_DEFAULTS.items()
                              if setting(name, self.kwargs, passed, model) is None})
        if passed is not None:  # transformers warns on a config plus generation keyword arguments: set them on a copy
            self.config = copy.deepcopy(passed)
            for name, value in overrides.items():
                setattr(self.config, name, value)
                self.kwargs.pop(name, None)
        else:
            self.config = None
            self.kwargs = {name: value for name, value in self.kwargs.items() if name not in overrides}
            self.kwargs.update({name: value for name, value in overrides.items() if value is not None})

    def _length_as_new_tokens(self, total: str, new: str, prompt_width: int) -> dict:
        """``{total: None, new: value - prompt_width}`` where ``total`` is set at a higher level than ``new``."""
        level = setting_level(total, self.kwargs, self.passed, self.model)
        if not level or level <= setting_level(new, self.kwargs, self.passed, self.model):
            return {}
        value = setting(total, self.kwargs, self.passed, self.model)
        if total == "max_length" and value <= prompt_width:
            raise ValueError(f"generate(): max_length={value} leaves no room after the prompt ({prompt_width} columns, "
                             f"padding included); use max_new_tokens")
        return {total: None, new: max(value - prompt_width, 0)}
