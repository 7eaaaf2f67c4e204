"""The project's checkpoints as ``transformers`` models (``generate()``, streamers, pipeline, PEFT): docs/hf.md."""
from s2s_ft.hf.modeling import (S2sFtCache, S2sFtConfig, S2sFtForConditionalGeneration,
                                TargetNoRepeatNGramLogitsProcessor)

__all__ = ["S2sFtCache", "S2sFtConfig", "S2sFtForConditionalGeneration", "TargetNoRepeatNGramLogitsProcessor"]
