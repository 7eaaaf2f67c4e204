"""Streaming, below HTTP: the search's step events against its own final hypotheses, sentences dropped mid-search
leaving the others exactly as they were, and the text pieces a stream sends (``TextStream``) always the start of the
final text, on random token sequences for every detokenize style (the Penn-Treebank re-joining rewrites text a few
characters back) and a byte-level BPE that splits characters."""
from __future__ import annotations

import random

import pytest
from conftest import random_weights_checkpoint

from s2s_ft.decoding.detokenize import detokenize
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.decoding.search import SearchConfig
from s2s_ft.serving.streaming import HOLD_CHARS, TextStream, cut_at_stop, token_texts

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()
SOURCES = ["the cat sat on the mat", "a dog", "the big red house is on the small tree", "fish", "who ran",
           "the blue bird"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_decoder(random_weights_checkpoint(tmp_path_factory, 12, WORDS), "cpu")


def ids_of(loaded, sources):
    return loaded.source_ids(sources)[0]


@pytest.mark.parametrize("search", [dict(), dict(do_sample=True, seed=3, num_return_sequences=2, top_k=8)],
                         ids=["greedy", "sampling"])
def test_step_events_are_the_final_hypotheses_token_by_token(loaded, search):
    config = SearchConfig(max_tgt_length=8, **search)
    events = []
    hyps = loaded.decode_ids(ids_of(loaded, SOURCES), config, batch_size=4, on_step=events.extend)
    plain = loaded.decode_ids(ids_of(loaded, SOURCES), config, batch_size=4)
    assert [[h.tokens for h in row] for row in hyps] == [[h.tokens for h in row] for row in plain]
    for sentence, row in enumerate(hyps):
        for sample, hyp in enumerate(row):
            mine = [e for e in events if e.sentence == sentence and e.sample == sample]
            assert [e.token for e in mine if e.end != "eos"] == hyp.tokens
            assert [e.end for e in mine][:-1] == [None] * (len(mine) - 1)
            assert mine[-1].end == ("eos" if hyp.finished else "length")
            assert [e.log_prob for e in mine] == pytest.approx(hyp.token_log_probs, abs=1e-6)
            assert sum(hyp.token_log_probs) == pytest.approx(hyp.log_prob, abs=1e-4)


@pytest.mark.parametrize("search", [dict(), dict(beam_size=3), dict(do_sample=True, seed=5)],
                         ids=["greedy", "beam", "sampling"])
def test_dropping_a_sentence_leaves_the_others_as_they_were(loaded, search):
    config = SearchConfig(max_tgt_length=8, **search)
    ids = ids_of(loaded, SOURCES)
    alone = loaded.decode_ids(ids, config, batch_size=len(ids))
    asked = []

    def drop():  # sentences 2 and 4 leave before the third step
        asked.append(1)
        return [2, 4] if len(asked) >= 3 else []

    with_drop = loaded.decode_ids(ids, config, batch_size=len(ids), drop=drop)
    for i, (a, b) in enumerate(zip(alone, with_drop)):
        if i in (2, 4):
            assert all(len(h.tokens) <= 2 for h in b)  # it left before the third step, with what it had
            if not search.get("beam_size"):  # one row: its tokens so far are the start of its full output
                assert all(h.tokens == full.tokens[:len(h.tokens)] for h, full in zip(b, a))
        else:
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


# -------------------------------------------------------------------------------------------------- TextStream
PIECES = ["80", ",", "000", "##0", "'", "s", "n", "t", "-", "lrb", "rrb", ".", "u", "##x", "3", "5", "`", "did",
          "play", "/", "ll", "re", "a", "##s", "1", "##00", "?", "the", "d", "m", "by", "..."]


@pytest.fixture(scope="module")
def piece_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer whose vocabulary is PIECES: the server's own detokenizer renders their ids."""
    from transformers import BertTokenizerFast

    path = tmp_path_factory.mktemp("pieces") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PIECES]) + "\n")
    return BertTokenizerFast(vocab=str(path), do_lower_case=True)


def renderer(tokenizer, style):
    return lambda ids: detokenize(tokenizer, ids, style)


@pytest.mark.parametrize("style", ["text", "spaced", "ptb"])
def test_a_stream_only_ever_sends_the_start_of_the_final_text(style, piece_tokenizer):
    rng, render, ids = random.Random(0), renderer(piece_tokenizer, style), piece_tokenizer.convert_tokens_to_ids(PIECES)
    for _ in range(3000):
        tokens = [rng.choice(ids) for _ in range(rng.randint(1, 14))]
        stream = TextStream(render, style)
        sent = "".join(stream.add(t) for t in tokens)
        assert sent + stream.finish() == render(tokens)


def test_the_hold_is_needed_and_enough(piece_tokenizer):
    """With a shorter hold the Penn-Treebank rules rewrite text already sent (so the rule above can fail)."""
    rng, broken = random.Random(1), 0
    render, ids = renderer(piece_tokenizer, "ptb"), piece_tokenizer.convert_tokens_to_ids(PIECES)
    for _ in range(3000):
        tokens = [rng.choice(ids) for _ in range(rng.randint(1, 14))]
        stream = TextStream(render, "ptb")
        stream.hold = 3
        for t in tokens:
            stream.add(t)
        try:
            stream.finish()
        except RuntimeError:
            broken += 1
    assert broken > 0 and HOLD_CHARS["ptb"] > 3


def test_an_unfinished_character_waits_for_its_bytes():
    text = "caf\u00e9 \u00fcber"
    data = text.encode("utf-8")

    def render(tokens):  # one token per byte: a character may arrive in pieces
        return bytes(tokens).decode("utf-8", errors="replace")

    stream = TextStream(render, "text")
    sent = [stream.add(b) for b in data]
    assert all("\ufffd" not in piece for piece in sent)
    assert "".join(sent) + stream.finish() == text


@pytest.mark.parametrize("include", [True, False])
def test_stop_sequences_end_the_text_and_are_never_half_sent(include):
    tokens = "the cat sat on the mat and ran".split()
    pieces, text, stop, used = token_texts(lambda t: " ".join(t), tokens, "text", ["on the", "zebra"], include)
    assert stop == "on the" and used == 5
    assert text == ("the cat sat on the" if include else "the cat sat ")
    assert "".join(pieces) == text
    assert cut_at_stop("x a b c", ["b c", "a b"], True) == ("x a b", "a b")  # the one that ends first
    stream = TextStream(lambda t: " ".join(t), "text", ["sat on"], include_stop=False)
    sent = [stream.add(t) for t in tokens[:3]]
    assert "".join(sent) == "the cat "  # "sat" could begin the stop sequence: held back
