"""Sampling decode (do_sample): checked against the reference full-sequence scorer of test_decoding."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import one_error_line, train_args
from test_decoding import (
    SOURCES,
    has_repeated_ngram,
    make,
    reference_log_probs,
    special,
)

from s2s_ft.cli import decode, train
from s2s_ft.decoding import inference
from s2s_ft.decoding.inference import LoadedDecoder
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder
from s2s_ft.errors import UsageError


def sample_config(**overrides):
    settings = dict(do_sample=True, max_tgt_length=6, min_len=0, num_return_sequences=6, seed=1)
    return SearchConfig(**{**settings, **overrides})


def steps(model, method, source, hyp, sp, min_len=0):
    """(reference constrained log-probs, chosen token) of every step of a sampled hypothesis."""
    tokens = hyp.tokens + ([sp.sep] if hyp.finished else [])
    for i, token in enumerate(tokens):
        log_probs = reference_log_probs(model, method, source, tokens[:i], sp)
        log_probs[[sp.cls, sp.pad, sp.mask]] = float("-inf")
        if i < min_len:
            log_probs[sp.sep] = float("-inf")
        yield log_probs, token


@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
def test_top_k_never_leaves_the_k_most_likely(method):
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, method)
    for hyps, source in zip(decoder.generate(SOURCES, sample_config(top_k=3, temperature=2.0)), SOURCES):
        assert len(hyps) == 6
        for hyp in hyps:
            for log_probs, token in steps(model, method, source, hyp, sp):
                assert token in log_probs.topk(3).indices.tolist()


@pytest.mark.parametrize("method", ["masked", "pseudo_masked"])
def test_top_p_never_leaves_the_smallest_nucleus(method):
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, method)
    p = 0.6
    seen_outside_top1 = False
    for hyps, source in zip(decoder.generate(SOURCES, sample_config(top_p=p, num_return_sequences=8)), SOURCES):
        for hyp in hyps:
            for log_probs, token in steps(model, method, source, hyp, sp):
                probs, order = log_probs.exp().sort(descending=True)
                size = int((probs.cumsum(0) < p).sum()) + 1  # the smallest prefix reaching p
                nucleus = order[:size].tolist()
                assert token in nucleus
                seen_outside_top1 |= token != nucleus[0]
    assert seen_outside_top1  # the test has teeth: the nucleus is more than the argmax somewhere


@pytest.mark.parametrize("method", ["causal", "masked", "pseudo_masked"])
def test_temperature_towards_zero_is_greedy(method):
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, method)
    greedy = decoder.generate(SOURCES, SearchConfig(max_tgt_length=8, min_len=2))
    sampled = decoder.generate(SOURCES, sample_config(max_tgt_length=8, min_len=2, temperature=1e-4,
                                                      num_return_sequences=3))
    for g, s in zip(greedy, sampled):
        assert [h.tokens for h in s] == [g[0].tokens] * 3
        assert s[0].log_prob == pytest.approx(g[0].log_prob, abs=1e-4)


def tokens_of(results):
    return [[h.tokens for h in hyps] for hyps in results]


def test_same_seed_reproduces_different_seeds_differ_and_cache_matches_recomputation():
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, "pseudo_masked")
    first = tokens_of(decoder.generate(SOURCES, sample_config(seed=7)))
    assert tokens_of(decoder.generate(SOURCES, sample_config(seed=7))) == first
    assert tokens_of(decoder.generate(SOURCES, sample_config(seed=7, use_cache=False))) == first
    assert tokens_of(decoder.generate(SOURCES, sample_config(seed=8))) != first
    # the samples of one sentence differ from each other too
    assert any(len({tuple(t) for t in hyps}) > 1 for hyps in first)


def test_samples_do_not_depend_on_batch_size_or_order():
    model, sp = make(), special()
    decoder = Seq2SeqDecoder(model, sp, "pseudo_masked")
    config = sample_config(top_k=10, temperature=1.5)
    together = tokens_of(decoder.generate(SOURCES, config))
    alone = [tokens_of(decoder.generate([s], config, keys=[i]))[0] for i, s in enumerate(SOURCES)]
    assert together == alone
    loaded = LoadedDecoder(decoder, tokenizer=None, settings={})
    for batch_size in (1, 3):
        assert tokens_of(loaded.decode_ids(SOURCES, config, batch_size)) == together


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_first_token_frequencies_match_the_softmax(temperature):
    vocab, n = 8, 6000
    model, sp = make(vocab=vocab, seed=4), special(vocab)
    with torch.no_grad():  # a flatter distribution: several tokens with real mass
        model.head.norm.weight.mul_(0.3)
    decoder = Seq2SeqDecoder(model, sp, "masked")
    source = [4, 5, 6]
    [hyps] = decoder.generate([source], sample_config(max_tgt_length=1, num_return_sequences=n,
                                                      temperature=temperature))
    counts = torch.zeros(vocab)
    for h in hyps:
        counts[h.tokens[0] if h.tokens else sp.sep] += 1
    log_probs = reference_log_probs(model, "masked", source, [], sp)
    log_probs[[sp.cls, sp.pad, sp.mask]] = float("-inf")
    expected = (log_probs / temperature).softmax(-1)
    assert len(hyps) == n
    assert (expected > 0.05).sum() >= 3
    assert torch.allclose(counts / n, expected, atol=0.025), (counts / n, expected)


def test_min_len_and_ngram_blocking_hold_while_sampling():
    model, sp = make(), special()
    with torch.no_grad():
        model.head.bias[sp.sep] = 50.0
    decoder = Seq2SeqDecoder(model, sp, "masked")
    for hyps in decoder.generate(SOURCES, sample_config(max_tgt_length=12, min_len=5)):
        assert len(hyps) == 6 and all(len(h.tokens) == 5 and h.finished for h in hyps)
    model = make()
    decoder = Seq2SeqDecoder(model, sp, "masked")
    config = sample_config(max_tgt_length=12, min_len=12, forbid_duplicate_ngrams=True, ngram_size=2)
    for hyps in decoder.generate(SOURCES, config):
        for h in hyps:
            assert not has_repeated_ngram(h.tokens, 2) and not {sp.cls, sp.pad, sp.mask} & set(h.tokens)
            assert len(h.tokens) == 12 and not h.finished  # stopped by max_tgt_length


@pytest.mark.parametrize("overrides, expected", [
    (dict(do_sample=True, beam_size=2), "cannot be combined with --beam_size 2"),
    (dict(do_sample=True, top_p=0.0), "--top_p must be in (0, 1]"),
    (dict(do_sample=True, top_p=1.5), "--top_p must be in (0, 1]"),
    (dict(do_sample=True, temperature=0.0), "--temperature must lie in [0.0001, 10000]"),
    (dict(do_sample=True, temperature=1e-310), "--temperature must lie in [0.0001, 10000]"),
    (dict(do_sample=True, temperature=float("nan")), "--temperature must lie in"),
    (dict(beam_size=0), "--beam_size must be >= 1"),
    (dict(ngram_size=0, forbid_duplicate_ngrams=True), "--ngram_size must be >= 1"),
    (dict(length_penalty=1e308), "--length_penalty must lie in [-10, 10]"),
    (dict(length_penalty=float("nan")), "--length_penalty must lie in"),
    (dict(beam_size=2, nbest=3), "--nbest 3 exceeds --beam_size 2"),
    (dict(max_tgt_length=4, min_len=5), "--min_len 5 exceeds --max_tgt_length 4"),
    (dict(do_sample=True, top_k=-1), "--top_k must be >= 0"),
    (dict(do_sample=True, num_return_sequences=0), "--num_return_sequences must be >= 1"),
    (dict(top_k=5), "--top_k needs --do_sample"),
    (dict(num_return_sequences=2), "--num_return_sequences needs --do_sample"),
])
def test_contradictory_settings_are_refused(overrides, expected):
    decoder = Seq2SeqDecoder(make(), special(), "masked")
    with pytest.raises(UsageError, match=None) as error:
        decoder.generate(SOURCES, SearchConfig(**overrides))
    assert expected in str(error.value)


def test_decode_cli_sampling(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "model"
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "4", "--save_steps", "4")) == 0
    inputs = ["the cat sat on the big red mat", "a dog", "the tree is blue and the bird is red", "fish"]
    input_file = tmp_path / "in.jsonl"
    input_file.write_text("".join(json.dumps({"src": s}) + "\n" for s in inputs))
    common = ["--model_path", str(out / "ckpt-4"), "--input_file", str(input_file), "--max_tgt_length", "6",
              "--do_sample", "--top_k", "20", "--top_p", "0.95", "--temperature", "1.3", "--seed", "5"]
    paths = {name: tmp_path / name for name in ("b1.jsonl", "b3.jsonl", "seed6.jsonl", "first.txt")}
    many = ["--num_return_sequences", "3", "--output_format", "jsonl"]
    assert decode.main(common + many + ["--batch_size", "1", "--output_file", str(paths["b1.jsonl"])]) == 0
    assert decode.main(common + many + ["--batch_size", "3", "--output_file", str(paths["b3.jsonl"])]) == 0
    records = [json.loads(line) for line in paths["b1.jsonl"].read_text().splitlines()]
    texts = lambda rs: [[h["text"] for h in r["hyps"]] for r in rs]
    # independent of the batch size (the texts; padding may change the scores' last bits)
    assert texts(records) == texts(json.loads(line) for line in paths["b3.jsonl"].read_text().splitlines())
    assert len(records) == len(inputs) and all(len(r["hyps"]) == 3 for r in records)
    assert decode.main(common[:-1] + ["6"] + many + ["--output_file", str(paths["seed6.jsonl"])]) == 0
    assert texts(json.loads(line) for line in paths["seed6.jsonl"].read_text().splitlines()) != texts(records)
    assert decode.main(common + ["--output_file", str(paths["first.txt"])]) == 0  # text: one sample, sample 0
    assert paths["first.txt"].read_text().splitlines() == [r["hyps"][0]["text"] for r in records]
    loaded = inference.load_decoder(str(out / "ckpt-4"))
    assert loaded.decode_texts(inputs, batch_size=2, max_tgt_length=6, do_sample=True, top_k=20, top_p=0.95,
                               temperature=1.3, seed=5) == [r["hyps"][0]["text"] for r in records]
    capsys.readouterr()
    output = str(tmp_path / "x.txt")
    for extra, expected in [
        (["--do_sample", "--beam_size", "2"], "cannot be combined with --beam_size 2"),
        (["--do_sample", "--top_p", "0"], "--top_p must be in (0, 1]"),
        (["--do_sample", "--temperature", "0"], "--temperature must lie in"),
        (["--do_sample", "--top_k", "-1"], "--top_k must be >= 0"),
        (["--do_sample", "--num_return_sequences", "2"], "--num_return_sequences > 1 needs --output_format jsonl"),
        (["--temperature", "0.5"], "--temperature needs --do_sample"),
    ]:
        assert decode.main(["--model_path", str(out / "ckpt-4"), "--input_file", str(input_file),
                            "--output_file", output, *extra]) == 2, extra
        assert expected in one_error_line(capsys), extra
