"""Packaging for the unified s2s-ft toolkit.

torch is deliberately only a plain requirement here: install the wanted torch build *before* this package
(``scripts/setup.sh`` does ``pip install torch==2.13.0`` first), otherwise pip may resolve ``torch>=2.1``
to a multi-GB CUDA build.
"""
from setuptools import find_packages, setup

setup(
    name="s2s-ft-unified",
    version="0.1.0",
    description="Fine-tune pretrained BERT-like checkpoints as sequence-to-sequence generators (s2s-ft style)",
    packages=find_packages(include=["s2s_ft*", "mass_objective*"]),
    py_modules=["run_seq2seq", "decode_seq2seq"],
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "transformers>=5",
        "tokenizers",
        "safetensors",
        "tqdm",
        "numpy",
    ],
    extras_require={
        "test": ["pytest"],
        "eval": ["rouge-score", "sacrebleu", "nltk", "matplotlib"],
    },
)
