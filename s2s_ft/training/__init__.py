"""Training: what is trained on (``objectives``: seq2seq pairs, or MASS sentences via ``mass_spans`` /
``mass_sentences``), the loss (``loss``), the optimizer (``optim``), the loop (``loop``), the run directory and its
restart protocol (``rundir``, ``restart``, ``rng``), memory release (``memory``), dev evaluation during training
(``dev_eval``) and the plots of a run (``plotting``). Depends on ``model``, ``data``, ``decoding`` and
``evaluation``; nothing below imports it."""
