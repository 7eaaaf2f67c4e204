"""The fine-tuning method objects (s2s_ft/data/methods.py): the packer, the decoder and the batcher ask the method; a new
method is one new object, with no change anywhere else."""
from __future__ import annotations

import pytest
import torch
from conftest import PAIRS, SPECIAL, make_model

from s2s_ft.data.methods import (
    METHODS,
    FineTuningMethod,
    Masked,
    get_method,
    real_target_ranks,
)
from s2s_ft.data.packing import IGNORE_INDEX, Packer, packed_length
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder


class MaskedAll(Masked):
    """A fourth method, defined here only: every target token is corrupted and predicted in place."""

    name = "masked_all"

    def pack_target(self, row, target, positions, labels, packer, generator) -> None:
        for i, token in enumerate(target):
            row.add(packer.corrupt(token, generator), positions[i], packer.special.target_type,
                    real_target_ranks(i), labels[i])


def test_names_and_objects():
    assert [get_method(name).name for name in METHODS] == list(METHODS)
    custom = MaskedAll()
    assert get_method(custom) is custom
    with pytest.raises(ValueError, match="unknown fine-tuning method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("method", [*METHODS, MaskedAll()], ids=str)
def test_the_method_decides_the_packed_length(method):
    packer = Packer(method, SPECIAL)
    for pair in PAIRS:
        row = packer.pack_example(pair, torch.Generator().manual_seed(0))
        assert len(row.ids) == packed_length(pair, method)


def test_a_new_method_packs_and_decodes_without_touching_other_code():
    method = MaskedAll()
    batch = Packer(method, SPECIAL, corrupt=False)(PAIRS)
    for b, pair in enumerate(PAIRS):
        n_src, m = len(pair.source) + 2, len(pair.target) + 1
        assert batch.labels[b, n_src:n_src + m].tolist() == [*pair.target, SPECIAL.sep]  # every target token
        assert batch.input_ids[b, n_src:n_src + m].eq(SPECIAL.mask).all()
        assert batch.labels[b, n_src + m:].eq(IGNORE_INDEX).all()
    model = make_model()
    config = SearchConfig(beam_size=2, max_tgt_length=5)
    cached = Seq2SeqDecoder(model, SPECIAL, method).generate([p.source for p in PAIRS], config)
    recomputed = Seq2SeqDecoder(model, SPECIAL, method).generate(
        [p.source for p in PAIRS], SearchConfig(beam_size=2, max_tgt_length=5, use_cache=False))
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in recomputed]


def test_decoding_feeds_what_each_method_trains_on():
    """causal feeds the previous token (the start token first); the masked methods the previous token (kept in the
    cache) and a [MASK] that predicts (not kept)."""
    causal, masked = get_method("causal"), get_method("masked")
    assert causal.step_feed(0) == ([("start", 0, (1, 1))], 1)
    assert causal.step_feed(3) == ([("previous", 3, (4, 4))], 1)
    feed0, keep0 = masked.step_feed(0)
    feed2, keep2 = masked.step_feed(2)
    assert [kind for kind, _, _ in feed0] == ["mask"] and keep0 == 0
    assert [(kind, index) for kind, index, _ in feed2] == [("previous", 1), ("mask", 2)] and keep2 == 1
    assert isinstance(masked, FineTuningMethod) and get_method("pseudo_masked").step_feed(2) == (feed2, keep2)
