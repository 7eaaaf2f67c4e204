"""``python -m s2s_ft.evaluate``: the same tool as ``s2s-ft-eval`` and ``python -m s2s_ft.cli.evaluate``.

A thin entry point kept at this short name for scripts written before the command line moved to s2s_ft/cli/; the
tool itself is s2s_ft/cli/evaluate.py."""
import sys

from s2s_ft.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
