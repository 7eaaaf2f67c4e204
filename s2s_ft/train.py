"""``python -m s2s_ft.train``: the same tool as ``s2s-ft-train`` and ``python -m s2s_ft.cli.train``.

A thin entry point kept at this short name for scripts written before the command line moved to s2s_ft/cli/; the
tool itself is s2s_ft/cli/train.py."""
import sys

from s2s_ft.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
