"""The model: the one shared Transformer (``transformer``: encoder and decoder in one stack, the only model code),
checkpoints in and out of Hugging Face directories (``checkpoint``: every family's key names mapped in one place),
precision (``precision``), int8 quantisation (``quantize``) and the packaged all-MiniLM-L6-v2 (``minilm``).
Depends on nothing else in s2s_ft but ``errors``."""
