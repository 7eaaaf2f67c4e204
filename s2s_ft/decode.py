"""``python -m s2s_ft.decode``: the same tool as ``s2s-ft-decode`` and ``python -m s2s_ft.cli.decode``.

A thin entry point kept at this short name for scripts written before the command line moved to s2s_ft/cli/; the
tool itself is s2s_ft/cli/decode.py."""
import sys

from s2s_ft.cli.decode import main

if __name__ == "__main__":
    sys.exit(main())
