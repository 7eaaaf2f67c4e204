#!/usr/bin/env python
"""Decode a JSONL file with a fine-tuned checkpoint (greedy or beam search, key/value cache).

    python decode_seq2seq.py --model_path out/ckpt-1000 --input_file dev.jsonl --output_file dev.pred \
        --beam_size 5

The s2s-ft-compatible entry point; the same tool is ``s2s-ft-decode`` and ``python -m s2s_ft.cli.decode``. Flags are
listed by --help and in README.md (s2s_ft/cli/decode.py); the search lives in s2s_ft/decoding/search.py.
"""
import sys

from s2s_ft.cli.decode import main

if __name__ == "__main__":
    sys.exit(main())
