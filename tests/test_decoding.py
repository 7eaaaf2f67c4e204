"""Decoder checks against independent references: a hand-built full-sequence scorer and exhaustive search."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import assert_cache_matches_recomputation

from s2s_ft.data.packing import SpecialIds
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder, banned_ngram_mask
from s2s_ft.model.transformer import NEVER_VISIBLE, ModelConfig, UnifiedTransformer

METHODS = ("causal", "masked", "pseudo_masked")
SOURCES = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17]]

# Architectural variants standing in for the families: BERT (2 segments), RoBERTa (offset positions, 1 segment),
# ELECTRA generator (narrow embeddings + projection), UniLM (relative position bias, 6 segments).
VARIANTS = {
    "bert": dict(),
    "roberta": dict(position_offset=2, type_vocab_size=1),
    "electra": dict(embedding_size=16),
    "unilm": dict(rel_pos_bins=32, max_rel_pos=128, type_vocab_size=6),
}


def make(vocab=40, seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **overrides)
    model = UnifiedTransformer(config).eval()
    with torch.no_grad():  # larger weights than BERT's init so that the search has real choices to make
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def special(vocab=40, target_type=1):
    return SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=vocab, source_type=0, target_type=target_type)


def reference_log_probs(model, method, source, prefix, sp):
    """log p(. | source, prefix) from one full forward pass over the whole sequence, built by hand."""
    ids = [sp.cls, *source, sp.sep]
    n_src = len(ids)
    positions = list(range(n_src))
    key, query = [0] * n_src, [0] * n_src
    if method == "causal":
        inputs = [sp.start, *prefix]
        for i, token in enumerate(inputs):
            ids.append(token), positions.append(n_src + i), key.append(i + 1), query.append(i + 1)
    else:
        for i, token in enumerate(prefix):
            ids.append(token), positions.append(n_src + i), key.append(i + 1), query.append(i + 1)
        ids.append(sp.mask), positions.append(n_src + len(prefix)), key.append(NEVER_VISIBLE)
        query.append(len(prefix))
    t = lambda x: torch.tensor([x])
    segments = [0] * n_src + [sp.target_type] * (len(ids) - n_src)
    with torch.no_grad():
        hidden = model(t(ids), t(positions), t(segments), t(key), t(query))
        return torch.log_softmax(model.head(hidden[0, -1]).float(), -1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_gives_identical_ids_to_recomputation(method, variant):
    model = make(**VARIANTS[variant])
    # RoBERTa-likes have one segment row: source and target both use segment 0.
    decoder = Seq2SeqDecoder(model, special(target_type=int(model.config.type_vocab_size > 1)), method)
    for beam in (1, 4):
        config = SearchConfig(beam_size=beam, max_tgt_length=10, min_len=2, nbest=beam, length_penalty=0.6)
        assert_cache_matches_recomputation(decoder, SOURCES, config)


@pytest.mark.parametrize("method", METHODS)
def test_greedy_follows_the_reference_argmax(method):
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, method)
    results = decoder.generate(SOURCES, SearchConfig(beam_size=1, max_tgt_length=8, min_len=0))
    never = {sp.cls, sp.pad, sp.mask}
    for source, hyps in zip(SOURCES, results):
        prefix = []
        while len(prefix) < 8:
            log_probs = reference_log_probs(model, method, source, prefix, sp)
            log_probs[list(never)] = -math.inf
            token = int(log_probs.argmax())
            if token == sp.sep:
                break
            prefix.append(token)
        assert hyps[0].tokens == prefix


@pytest.mark.parametrize("method", METHODS)
def test_beam_search_is_exact_when_the_beam_covers_every_hypothesis(method):
    # Two word ids (4, 5) besides the specials; 3 steps give 1 + 2 + 4*3 = 15 complete hypotheses <= beam 16.
    vocab, max_len = 6, 3
    model, sp = make(vocab=vocab, seed=3), special(vocab)
    decoder = Seq2SeqDecoder(model, sp, method)
    alpha = 1.0
    sources = [[4, 5, 4], [5]]
    results = decoder.generate(sources, SearchConfig(beam_size=16, max_tgt_length=max_len, min_len=0,
                                                     length_penalty=alpha, nbest=16))
    for source, hyps in zip(sources, results):
        scored = []
        for length in range(0, max_len + 1):
            for words in itertools.product([4, 5], repeat=length):
                # Shorter hypotheses end with [SEP]; at the length limit a hypothesis stops without one.
                closed = length < max_len
                total, prefix = 0.0, []
                for token in [*words, sp.sep] if closed else list(words):
                    total += float(reference_log_probs(model, method, source, prefix, sp)[token])
                    prefix.append(token)
                n = length + 1 if closed else length
                scored.append((total / ((5 + n) / 6) ** alpha, list(words)))
        scored.sort(key=lambda x: -x[0])
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert hyps[0].tokens == scored[0][1]
        assert hyps[0].score == pytest.approx(scored[0][0], abs=1e-4)
        assert [round(h.score, 4) for h in hyps] == [round(s, 4) for s, _ in scored[:len(hyps)]]


def reference_beam_search(model, method, source, sp, k, max_len, alpha):
    """The documented beam rule written out one hypothesis at a time with full forward passes (no batch, no cache):
    rank all continuations by raw score, read the best 2k in order, finish a [SEP] (or, at the length limit, any
    token) only if it ranks among the best k, keep the first k others live; stop at k finished hypotheses."""
    never = {sp.cls, sp.pad, sp.mask}
    live, finished = [([], 0.0)], []
    for step in range(max_len):
        candidates = []
        for words, total in live:
            log_probs = reference_log_probs(model, method, source, words, sp)
            candidates += [(total + float(log_probs[t]), words, t) for t in range(len(log_probs)) if t not in never]
        candidates.sort(key=lambda c: -c[0])
        last, next_live = step == max_len - 1, []
        for rank, (total, words, t) in enumerate(candidates[:2 * k]):
            if t == sp.sep or last:
                if rank < k and len(finished) < k:
                    hyp = words if t == sp.sep else words + [t]
                    n = len(hyp) + (t == sp.sep)
                    finished.append((total / ((5 + n) / 6) ** alpha, hyp))
            elif len(next_live) < k:
                next_live.append((words + [t], total))
        if len(finished) >= k or not next_live:
            break
        live = next_live
    return sorted(finished, key=lambda h: -h[0])


@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
@pytest.mark.parametrize("beam", [2, 3])
def test_beam_search_matches_a_brute_force_beam_that_prunes(method, beam):
    # Three word ids and 5 steps give hundreds of hypotheses for a beam of 2 or 3, so pruning decides the result;
    # [SEP] is made about as likely as a word so that it often lands just below the best k candidates.
    vocab, max_len = 7, 5
    for seed in range(6):
        model, sp = make(vocab=vocab, seed=seed), special(vocab)
        with torch.no_grad():
            model.head.bias[sp.sep] += 1.0
        decoder = Seq2SeqDecoder(model, sp, method)
        sources = [[4, 5, 6], [6], [5, 5, 4, 6]]
        for alpha in (0.0, 1.0):
            config = SearchConfig(beam_size=beam, max_tgt_length=max_len, min_len=0, length_penalty=alpha, nbest=beam)
            for source, hyps in zip(sources, decoder.generate(sources, config)):
                expected = reference_beam_search(model, method, source, sp, beam, max_len, alpha)
                assert [h.tokens for h in hyps] == [words for _, words in expected]
                assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected], abs=1e-4)


def has_repeated_ngram(tokens, n, ignore=()):
    seen = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if any(t in ignore for t in gram):
            continue
        if gram in seen:
            return True
        seen.add(gram)
    return False


@pytest.mark.parametrize("beam", [1, 3])
def test_ngram_blocking_never_repeats_an_ngram(beam):
    model, sp = make(vocab=12, seed=1), special(12)
    decoder = Seq2SeqDecoder(model, sp, "pseudo_masked")
    sources = [[4, 5, 6, 7], [8], [9, 10, 11]]
    for n in (1, 2, 3):
        config = SearchConfig(beam_size=beam, max_tgt_length=20, min_len=20 if n > 1 else 5, nbest=beam,
                              forbid_duplicate_ngrams=True, ngram_size=n)
        unblocked = decoder.generate(sources, SearchConfig(beam_size=beam, max_tgt_length=20, min_len=20))
        assert any(has_repeated_ngram(h[0].tokens, n) for h in unblocked)  # the constraint has work to do
        for hyps in decoder.generate(sources, config):
            for hyp in hyps:
                assert not has_repeated_ngram(hyp.tokens, n)
    # Ignored words may repeat inside n-grams.
    config = SearchConfig(beam_size=beam, max_tgt_length=20, min_len=20, forbid_duplicate_ngrams=True,
                          ngram_size=2, forbid_ignore_ids=[4])
    for hyps in decoder.generate(sources, config):
        assert not has_repeated_ngram(hyps[0].tokens, 2, ignore={4})


def test_banned_ngram_mask_matches_brute_force():
    torch.manual_seed(0)
    history = torch.randint(4, 8, (6, 9))
    for n in (1, 2, 3):
        mask = banned_ngram_mask(history, 8, n, torch.tensor([], dtype=torch.long))
        for row in range(6):
            tokens = history[row].tolist()
            grams = {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
            tail = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
            expected = {tok for tok in range(8) if tail + (tok,) in grams}
            assert set(mask[row].nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("beam", [1, 4])
def test_min_len_holds(beam):
    model, sp = make(), special()
    with torch.no_grad():  # make [SEP] overwhelmingly likely so that min_len is what keeps hypotheses going
        model.head.bias[sp.sep] = 50.0
    decoder = Seq2SeqDecoder(model, sp, "masked")
    free = decoder.generate(SOURCES, SearchConfig(beam_size=beam, max_tgt_length=12, min_len=0))
    assert all(hyps[0].tokens == [] for hyps in free)
    for hyps in decoder.generate(SOURCES, SearchConfig(beam_size=beam, max_tgt_length=12, min_len=5, nbest=beam)):
        assert all(len(h.tokens) >= 5 for h in hyps)


def test_batched_decoding_equals_one_by_one_and_keeps_order():
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, "pseudo_masked")
    config = SearchConfig(beam_size=3, max_tgt_length=10, min_len=1, nbest=2)
    together = decoder.generate(SOURCES, config)
    alone = [decoder.generate([s], config)[0] for s in SOURCES]
    assert [[h.tokens for h in x] for x in together] == [[h.tokens for h in x] for x in alone]


def test_a_sentence_with_every_candidate_banned_ends_empty_with_a_counted_warning(caplog):
    from s2s_ft.decoding.inference import LoadedDecoder
    # Two words, each allowed once (1-gram blocking), and [SEP] forbidden before 5 tokens: step 2 has no candidate.
    model, sp = make(vocab=6, seed=2), special(6)
    decoder = Seq2SeqDecoder(model, sp, "pseudo_masked")
    config = SearchConfig(beam_size=2, max_tgt_length=8, min_len=5, forbid_duplicate_ngrams=True, ngram_size=1)
    assert decoder.generate([[4, 5]], config) == [[]]
    loaded = LoadedDecoder(decoder, tokenizer=None, settings={})
    with caplog.at_level("WARNING", logger="s2s_ft"):
        results = loaded.decode_ids([[4, 5], [5], [4]], config)
    assert results == [[], [], []]
    assert "3 of 3 sentences ended with no hypothesis" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="s2s_ft"):
        loaded.decode_ids([[4, 5]], SearchConfig(beam_size=2, max_tgt_length=8, min_len=1))
    assert "no hypothesis" not in caplog.text
