"""Errors that the command-line tools report as one line (``cli.run_cli``) instead of a traceback.

``DataError`` (s2s_ft/data/reading.py) and ``CheckpointError`` (s2s_ft/model/checkpoint.py) live where they are raised.
"""


class UsageError(ValueError):
    """Contradictory or impossible flags."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite losses); reported as one line, exit status 3."""
