"""Packing layout, labels and corruption statistics, checked against a layout written out by hand."""
from __future__ import annotations

import collections

import pytest
import torch
from conftest import PAIRS, SPECIAL, allowed_matrix, roles_of

from s2s_ft.data.packing import (
    IGNORE_INDEX,
    METHODS,
    Packer,
    Pair,
    SpecialIds,
    decoding_prefix,
)
from s2s_ft.model.transformer import NEVER_VISIBLE, attention_allowed

CLS, SEP, MASK, PAD = SPECIAL.cls, SPECIAL.sep, SPECIAL.mask, SPECIAL.pad
pytestmark = pytest.mark.usefixtures("single_thread")


def expected_width(pairs, method):
    per = [len(p.source) + 2 + (len(p.target) + 1) * (2 if method == "pseudo_masked" else 1) for p in pairs]
    return max(per)


@pytest.mark.parametrize("method", METHODS)
def test_common_layout(method):
    batch = Packer(method, SPECIAL, corrupt=False)(PAIRS)
    width = expected_width(PAIRS, method)
    assert batch.input_ids.shape == (len(PAIRS), width)  # longest example, not a fixed maximum
    for name in ("position_ids", "token_type_ids", "key_rank", "query_rank", "labels"):
        assert getattr(batch, name).shape == (len(PAIRS), width)
        assert getattr(batch, name).dtype == torch.long
    for b, pair in enumerate(PAIRS):
        ids, pos, seg = batch.input_ids[b].tolist(), batch.position_ids[b].tolist(), batch.token_type_ids[b].tolist()
        n_src, m = len(pair.source) + 2, len(pair.target) + 1
        assert ids[:n_src] == [CLS, *pair.source, SEP]
        assert pos[:n_src] == list(range(n_src))
        assert seg[:n_src] == [0] * n_src
        # target positions count from the REAL source length of this row
        assert pos[n_src:n_src + m] == [n_src + i for i in range(m)]
        assert seg[n_src:n_src + m] == [1] * m
        used = n_src + m
        if method == "pseudo_masked":
            assert pos[used:used + m] == [n_src + i for i in range(m)]  # pseudo i shares real i's position
            assert seg[used:used + m] == [1] * m
            used += m
        # right padding only
        assert ids[used:] == [PAD] * (width - used)
        assert PAD not in ids[:used]
        assert batch.labels[b, used:].eq(IGNORE_INDEX).all()
    assert batch.num_real_tokens == sum(width - (batch.input_ids[b] == PAD).sum().item() for b in range(len(PAIRS)))


@pytest.mark.parametrize("method", METHODS)
def test_rank_mask_matches_role_rule(method):
    batch = Packer(method, SPECIAL)(PAIRS, torch.Generator().manual_seed(3))
    width = batch.input_ids.shape[1]
    got = attention_allowed(batch.key_rank, batch.query_rank)
    assert got.shape == (len(PAIRS), 1, width, width)
    assert torch.equal(got, allowed_matrix(PAIRS, method, width))


def test_causal_labels_and_shift():
    batch = Packer("causal", SPECIAL)(PAIRS)
    for b, pair in enumerate(PAIRS):
        n_src = len(pair.source) + 2
        target = [*pair.target, SEP]
        m = len(target)
        assert batch.input_ids[b, n_src:n_src + m].tolist() == [SPECIAL.start, *target[:-1]]
        assert batch.labels[b, n_src:n_src + m].tolist() == target  # every token incl. the final [SEP]
        assert batch.labels[b, :n_src].eq(IGNORE_INDEX).all()
    assert batch.num_predicted == sum(len(p.target) + 1 for p in PAIRS)


def test_causal_custom_start_token():
    special = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=50, decoder_start=7)
    batch = Packer("causal", special)([Pair([10], [20, 21])])
    assert batch.input_ids[0, 3:6].tolist() == [7, 20, 21]
    assert batch.labels[0, 3:6].tolist() == [20, 21, 2]


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 0.7, 1.0])
def test_masked_count_labels_and_coverage(ratio):
    pair = Pair(source=[10, 11], target=[20, 21, 22, 23, 24, 25, 26])
    target = [*pair.target, SEP]
    m, n_src = len(target), 4
    count = max(1, round(m * ratio))
    packer = Packer("masked", SPECIAL, target_mask_prob=ratio)
    hits = collections.Counter()
    for seed in range(300):
        batch = packer([pair], torch.Generator().manual_seed(seed))
        labels = batch.labels[0, n_src:n_src + m].tolist()
        chosen = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        assert len(chosen) == count
        assert batch.labels[0, :n_src].eq(IGNORE_INDEX).all()
        for i in chosen:
            assert labels[i] == target[i]  # label is the original token
        for i in set(range(m)) - set(chosen):
            assert batch.input_ids[0, n_src + i].item() == target[i]  # unchosen tokens are untouched
        hits.update(chosen)
    # every position, the final [SEP] included, gets chosen sometimes
    assert set(hits) == set(range(m)), hits
    if count < m:
        expected = 300 * count / m
        for i in range(m):
            assert abs(hits[i] - expected) < 6 * (expected ** 0.5) + 5


def test_masked_without_corruption_uses_mask_token():
    pair = Pair(source=[10, 11], target=[20, 21, 22, 23])
    batch = Packer("masked", SPECIAL, target_mask_prob=0.5, corrupt=False)([pair])
    predicted = batch.labels[0] != IGNORE_INDEX
    assert predicted.sum() == 2
    assert batch.input_ids[0][predicted].eq(MASK).all()


def test_pseudo_labels():
    batch = Packer("pseudo_masked", SPECIAL, corrupt=False)(PAIRS)
    for b, pair in enumerate(PAIRS):
        n_src = len(pair.source) + 2
        target = [*pair.target, SEP]
        m = len(target)
        assert batch.input_ids[b, n_src:n_src + m].tolist() == target  # no word drop without corruption
        assert batch.labels[b, :n_src + m].eq(IGNORE_INDEX).all()  # nothing predicted at real positions
        assert batch.labels[b, n_src + m:n_src + 2 * m].tolist() == target  # one label per target token
        assert batch.input_ids[b, n_src + m:n_src + 2 * m].eq(MASK).all()
    assert batch.num_predicted == sum(len(p.target) + 1 for p in PAIRS)


def _corruption_outcomes(tokens_in, tokens_orig):
    out = collections.Counter()
    for got, orig in zip(tokens_in, tokens_orig):
        out["mask" if got == MASK else "kept" if got == orig else "random"] += 1
    return out


def test_masked_corruption_split_80_10_10():
    pair = Pair(source=[10], target=list(range(20, 40)))
    packer = Packer("masked", SPECIAL, target_mask_prob=0.5)
    got, orig = [], []
    for seed in range(400):
        batch = packer([pair], torch.Generator().manual_seed(seed))
        predicted = batch.labels[0] != IGNORE_INDEX
        got += batch.input_ids[0][predicted].tolist()
        orig += batch.labels[0][predicted].tolist()
    _check_split(_corruption_outcomes(got, orig), len(got))


def test_pseudo_corruption_split_80_10_10():
    pair = Pair(source=[10], target=list(range(20, 40)))
    packer = Packer("pseudo_masked", SPECIAL, target_mask_prob=0.0)
    got, orig = [], []
    for seed in range(200):
        batch = packer([pair], torch.Generator().manual_seed(seed))
        predicted = batch.labels[0] != IGNORE_INDEX
        got += batch.input_ids[0][predicted].tolist()
        orig += batch.labels[0][predicted].tolist()
        # target_mask_prob=0: real targets are never dropped
        assert batch.input_ids[0, 3:3 + 21].tolist() == [*pair.target, SEP]
    _check_split(_corruption_outcomes(got, orig), len(got))


def _check_split(outcomes, n):
    v = SPECIAL.vocab_size
    # a random draw can land on [MASK] or on the original token
    expected = {"mask": 0.8 + 0.1 / v, "kept": 0.1 + 0.1 / v, "random": 0.1 * (1 - 2 / v)}
    for key, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(outcomes[key] / n - p) < 5 * sd + 1e-3, (key, outcomes, n)


@pytest.mark.parametrize("prob", [0.15, 0.5])
def test_pseudo_word_drop_rate(prob):
    pair = Pair(source=[10], target=list(range(20, 40)))
    m = 21
    # all-[MASK] corruption makes every dropped token visible
    packer = Packer("pseudo_masked", SPECIAL, target_mask_prob=prob, corruption=(1.0, 0.0, 0.0))
    dropped, total, last_dropped = 0, 0, 0
    for seed in range(300):
        batch = packer([pair], torch.Generator().manual_seed(seed))
        real = batch.input_ids[0, 3:3 + m]
        dropped += int((real == MASK).sum())
        last_dropped += int(real[-1] == MASK)
        total += m
        assert batch.input_ids[0, 3 + m:3 + 2 * m].eq(MASK).all()
    sd = (prob * (1 - prob) / total) ** 0.5
    assert abs(dropped / total - prob) < 5 * sd
    assert last_dropped > 0


def test_explicit_target_positions():
    pair = Pair(source=[10, 11, 12, 13], target=[21, 22], target_positions=[7, 8, 9])
    for method in METHODS:
        batch = Packer(method, SPECIAL, corrupt=False)([pair, Pair([10], [20, 21, 22, 23, 24])])
        pos = batch.position_ids[0].tolist()
        assert pos[:6] == list(range(6))
        assert pos[6:9] == [7, 8, 9]
        if method == "pseudo_masked":
            assert pos[9:12] == [7, 8, 9]
        with pytest.raises(ValueError):
            Packer(method, SPECIAL)([Pair([10], [20], target_positions=[5])])


def test_padding_ranks_and_decoding_prefix():
    sources = [[10, 11, 12], [13]]
    prefix = decoding_prefix(sources, SPECIAL)
    assert prefix.input_ids.tolist() == [[CLS, 10, 11, 12, SEP], [CLS, 13, SEP, PAD, PAD]]
    assert prefix.position_ids[0].tolist() == [0, 1, 2, 3, 4]
    assert prefix.position_ids[1, :3].tolist() == [0, 1, 2]
    assert prefix.token_type_ids.eq(0).all()
    assert prefix.key_rank[1].tolist() == [0, 0, 0, NEVER_VISIBLE, NEVER_VISIBLE]
    assert prefix.query_rank[1].tolist() == [0, 0, 0, -1, -1]
    assert prefix.labels.eq(IGNORE_INDEX).all()


def test_packer_validation():
    with pytest.raises(ValueError):
        Packer("nope", SPECIAL)
    with pytest.raises(ValueError):
        Packer("masked", SPECIAL, corruption=(0.5, 0.5, 0.5))


def test_roles_reference_is_consistent_with_layout():
    # sanity of the test helper itself: the role list marks exactly the non-padding columns as non-pad
    for method in METHODS:
        batch = Packer(method, SPECIAL, corrupt=False)(PAIRS)
        width = batch.input_ids.shape[1]
        for b, pair in enumerate(PAIRS):
            roles = roles_of(pair, method, width)
            assert [r[0] == "pad" for r in roles] == (batch.input_ids[b] == PAD).tolist()
