"""MASS pre-training (Song et al., ICML 2019) in the unified model.

A monolingual sentence becomes a ``Pair`` for the shared packer: the sentence with a masked fragment is the
source, the fragment (at its original positions, no closing token) is the target. The same packing methods, the
same model and the same attention rule as fine-tuning.

This package is the objective's public face; the code lives with the other training objectives, so that the library
never imports back a package that imports it: ``s2s_ft/training/mass_spans.py`` (span choice, 80/10/10 corruption,
original positions) and ``s2s_ft/training/mass_sentences.py`` (the monolingual reader).
"""
from s2s_ft.training.mass_sentences import SentenceStats, read_sentences, split_chunks
from s2s_ft.training.mass_spans import (
                                        SPAN_POSITIONS,
                                        MassConfig,
                                        fragment_length,
                                        mass_pair,
                                        mass_pairs,
                                        parse_mask_keep_rand,
                                        span_start,
)

__all__ = ["SPAN_POSITIONS", "MassConfig", "SentenceStats", "fragment_length", "mass_pair", "mass_pairs",
           "parse_mask_keep_rand", "read_sentences", "span_start", "split_chunks"]
