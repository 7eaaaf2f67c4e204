"""``python -m s2s_ft.serve``: the same tool as ``s2s-ft-serve`` and ``python -m s2s_ft.cli.serve``.

A thin entry point kept at this short name for scripts written before the command line moved to s2s_ft/cli/; the
tool itself is s2s_ft/cli/serve.py."""
import sys

from s2s_ft.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
