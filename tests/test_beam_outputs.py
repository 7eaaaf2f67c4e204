"""Beam search gives the outputs it gave before the shared-source cache and the vectorised selection (issue 15,
part 1): ``data/beam_outputs.json`` holds the hypotheses of the previous implementation (main at 66c258b: per-beam
source copies, SDPA attention, per-sentence selection loop in Python) on random tiny models, for beams 1/2/3/5,
with and without length penalty, min length and n-gram blocking, for every method and four architectural variants.

Regenerate (only when a change of results is intended): ``python tests/test_beam_outputs.py``.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # run as a script too (regenerating the fixture)
from test_decoding import VARIANTS, make, special  # noqa: E402

from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder  # noqa: E402

FIXTURE = os.path.join(HERE, "data", "beam_outputs.json")
# Sources of unequal lengths, so that the source block is padded and the padding has to stay invisible.
SOURCES = [[5, 6, 7, 8, 9, 10, 11], [11, 4], [6, 10, 5, 4], [7], [9, 9, 8, 7, 6]]
SETTINGS = {
    "plain": dict(min_len=1),
    "length_penalty": dict(min_len=1, length_penalty=0.6),
    "min_len": dict(min_len=6),
    "ngram": dict(min_len=1, forbid_duplicate_ngrams=True, ngram_size=2, forbid_ignore_ids=[4]),
    "all": dict(min_len=3, length_penalty=1.0, forbid_duplicate_ngrams=True, ngram_size=1),
    # 8 words, each allowed once, and no [SEP] before 9 tokens: every candidate is banned at step 8 (no hypothesis)
    "starved": dict(min_len=9, forbid_duplicate_ngrams=True, ngram_size=1),
}
CASES = [(variant, seed, method) for seed, variant in enumerate(["bert", "unilm", "roberta", "electra", "bert"])
         for method in ("causal", "masked", "pseudo_masked")]


def case_outputs(variant: str, seed: int, method: str) -> dict:
    """{"beam/setting": [[tokens, score, finished] per hypothesis] per source} for one tiny model and method."""
    vocab = 12  # few words: [SEP] competes, n-gram blocking and min_len bite, sentences end at different steps
    model = make(vocab=vocab, seed=seed, **VARIANTS[variant])
    with torch.no_grad():
        model.head.bias[2] += 1.0  # [SEP] about as likely as a word, so that it lands near the k-th candidate
    decoder = Seq2SeqDecoder(model, special(vocab, target_type=int(model.config.type_vocab_size > 1)), method)
    found = {}
    for beam in (1, 2, 3, 5):
        for name, setting in SETTINGS.items():
            config = SearchConfig(beam_size=beam, max_tgt_length=9, nbest=beam, **setting)
            found[f"{beam}/{name}"] = [[[h.tokens, h.score, h.finished] for h in hyps]
                                       for hyps in decoder.generate(SOURCES, config)]
    return found


@pytest.mark.parametrize("variant,seed,method", CASES)
def test_beam_outputs_equal_the_previous_implementation(variant, seed, method):
    with open(FIXTURE) as handle:
        expected = json.load(handle)[f"{variant}/{seed}/{method}"]
    got = case_outputs(variant, seed, method)
    assert got.keys() == expected.keys()
    for key in expected:
        for got_hyps, expected_hyps in zip(got[key], expected[key], strict=True):
            assert [(h[0], h[2]) for h in got_hyps] == [(h[0], h[2]) for h in expected_hyps], key
            assert [h[1] for h in got_hyps] == pytest.approx([h[1] for h in expected_hyps], abs=1e-4), key


if __name__ == "__main__":
    torch.set_num_threads(1)
    outputs = {f"{variant}/{seed}/{method}": case_outputs(variant, seed, method) for variant, seed, method in CASES}
    with open(FIXTURE, "w") as handle:
        json.dump(outputs, handle, separators=(",", ":"))
        handle.write("\n")
