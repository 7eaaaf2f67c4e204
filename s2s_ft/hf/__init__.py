"""The project's checkpoints as ``transformers`` models (``generate()``, streamers, pipeline, PEFT): docs/hf.md."""
from s2s_ft.hf.modeling import (S2sFtCache, S2sFtConfig, S2sFtForConditionalGeneration,
                                TargetNoRepeatNGramLogitsProcessor, from_pretrained_with_adapter)

from s2s_ft.hf.auto import S2sFtCheckpointError, guard_causal_lm_auto_class

guard_causal_lm_auto_class()

__all__ = ["S2sFtCheckpointError", "S2sFtCache", "S2sFtConfig", "S2sFtForConditionalGeneration", "TargetNoRepeatNGramLogitsProcessor",
           "from_pretrained_with_adapter"]
