"""The command-line tools, the only place flags exist: ``train`` (s2s-ft-train, run_seq2seq.py), ``decode``
(s2s-ft-decode, decode_seq2seq.py), ``evaluate`` (s2s-ft-eval), ``serve`` (s2s-ft-serve) and the flags and error
reporting they share (``common``). Nothing in the library imports this package."""
