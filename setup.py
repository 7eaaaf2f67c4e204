"""Packaging for the unified s2s-ft toolkit.

torch is deliberately only a plain requirement here: install the wanted torch build *before* this package
(``scripts/setup.sh`` does ``pip install torch==2.13.0`` first), otherwise pip may resolve the torch requirement
to a multi-GB CUDA build. The minimum torch version is ``MIN_TORCH`` in s2s_ft/__init__.py (read here without
importing the package; the package checks it again at import).
"""
import os
import re

from setuptools import find_packages, setup

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "s2s_ft", "__init__.py"), encoding="utf-8") as f:
    MIN_TORCH = re.search(r'^MIN_TORCH = "([\d.]+)"', f.read(), re.M).group(1)

setup(
    name="s2s-ft-unified",
    version="0.1.0",
    description="Fine-tune pretrained BERT-like checkpoints as sequence-to-sequence generators (s2s-ft style)",
    packages=find_packages(include=["s2s_ft*", "mass_objective*"]),
    package_data={"s2s_ft.serving": ["page.html"]},  # the server's page (GET /)
    # run_seq2seq.py and decode_seq2seq.py stay in the checkout as the s2s-ft-compatible scripts; installed, the
    # tools are these commands (and python -m s2s_ft.cli.train / .decode / .evaluate / .serve, or the short
    # python -m s2s_ft.train / .decode / .evaluate / .serve; s2s-ft-serve needs the serve extra).
    entry_points={
        "console_scripts": [
            "s2s-ft-train = s2s_ft.cli.train:main",
            "s2s-ft-decode = s2s_ft.cli.decode:main",
            "s2s-ft-eval = s2s_ft.cli.evaluate:main",
            "s2s-ft-serve = s2s_ft.cli.serve:main",
        ],
    },
    python_requires=">=3.9",
    install_requires=[
        f"torch>={MIN_TORCH}",
        "transformers>=5",
        "tokenizers",
        "safetensors",
        "tqdm",
        "numpy",
    ],
    extras_require={
        # httpx: FastAPI's TestClient; openai and huggingface_hub (with transformers): the real clients the server is
        # tested with; playwright: drives Debian's chromium for the page's test (scripts/setup.sh installs chromium)
        "test": ["pytest", "httpx", "openai", "playwright"],
        "eval": ["rouge-score", "sacrebleu", "nltk", "matplotlib"],
        # --metrics coco: the coco-caption scorers QG papers report (METEOR 1.5 runs its jar: needs Java)
        "papers": ["pycocoevalcap"],
        # s2s-ft-serve (/metrics: prometheus-client; token streams: sse-starlette)
        "serve": ["fastapi", "uvicorn", "prometheus-client", "sse-starlette"],
        "lora": ["peft"],  # --lora_rank, s2s_ft.hf.from_pretrained_with_adapter
        "bench": ["ctranslate2"],  # benchmarks/ctranslate2_speed.py only; the package never imports it
    },
)
