"""Scoring: BLEU / METEOR / ROUGE as published papers compute them (``metrics``), the offline WordNet METEOR needs
(``wordnet``) and the trivial baselines every score is reported beside (``baselines``)."""
