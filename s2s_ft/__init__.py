"""s2s_ft: fine-tune pretrained bidirectional Transformers (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, UniLM) as
sequence-to-sequence generators with one shared Transformer.

Where things live: ``model`` (the only model code), ``packing`` (the fine-tuning methods), ``checkpoint``
(HF key names per family), ``loss``, ``decoding`` (cached greedy/beam search), ``training`` and ``inference``
(the code behind run_seq2seq.py and decode_seq2seq.py), ``data`` (JSONL reading).
"""
__version__ = "0.1.0"
