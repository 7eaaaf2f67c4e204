"""Decoding: the incremental-state search (``search``: cached greedy, beam and sampling over the model), the Python
API around a loaded checkpoint (``inference``), resumable file decoding (``resumable``) and detokenisation
(``detokenize``). Depends on ``model`` and ``data``."""
