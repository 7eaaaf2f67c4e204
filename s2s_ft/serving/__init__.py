"""HTTP serving (``server``): limits, admission, the batcher and the decoding thread, health and metrics, around a
``decoding.inference.LoadedDecoder``. Its command line is ``s2s_ft.cli.serve``."""
