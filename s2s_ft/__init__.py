"""s2s_ft: fine-tune pretrained bidirectional Transformers (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, UniLM) as
sequence-to-sequence generators with one shared Transformer.

Where things live (dependencies point down this list, never up):

* ``model/``       the Transformer (the only model code), checkpoints in/out, precision, int8;
* ``data/``        reading and tokenising, the fine-tuning methods and the shared packing layer, batches;
* ``decoding/``    cached greedy / beam / sampling search, the Python decoding API, resumable file decoding;
* ``evaluation/``  metrics, WordNet for METEOR, trivial baselines;
* ``training/``    objectives (seq2seq, MASS), loss, optimizer, the loop, run directory and restarts;
* ``serving/``     the HTTP server;
* ``cli/``         the command-line tools (``s2s-ft-train``, ``s2s-ft-decode``, ``s2s-ft-eval``, ``s2s-ft-serve``).

``errors``, ``fileio`` and ``distributed`` are shared by all of them.
"""
import re

__version__ = "0.1.0"
# The oldest torch with every API used here: torch.get_autocast_dtype(device_type) and the device-typed
# torch.is_autocast_enabled(device_type) (s2s_ft/model/transformer.py) arrived in 2.4. setup.py reads this line.
MIN_TORCH = "2.4"


def check_torch_version(version: str) -> None:
    """ImportError, with the versions and the fix, if ``version`` (a torch.__version__) is older than MIN_TORCH."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < tuple(int(part) for part in MIN_TORCH.split(".")):
        raise ImportError(f"s2s_ft needs torch>={MIN_TORCH} (torch.get_autocast_dtype), found torch {version}; "
                          f"install a newer one: pip install 'torch>={MIN_TORCH}'")


def _check_installed_torch() -> None:
    import torch

    check_torch_version(torch.__version__)


_check_installed_torch()
