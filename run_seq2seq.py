#!/usr/bin/env python
"""Fine-tune a pretrained bidirectional Transformer as a seq2seq model.

    python run_seq2seq.py --model_type bert --model_name_or_path DIR --train_file train.jsonl \
        --output_dir out --fine_tune pseudo_masked

The s2s-ft-compatible entry point; the same tool is ``s2s-ft-train`` and ``python -m s2s_ft.cli.train``. Flags are listed
by --help and in README.md (s2s_ft/cli/train.py); the loop lives in s2s_ft/training/loop.py.
"""
import sys

from s2s_ft.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
