"""``source_words_only``: a word of several word pieces must be a word of the source. The mask is checked against a
brute-force definition (every completed multi-piece word of the extended output is a source word and the unfinished
one can still become one), then end to end through the decoder, the CLI and the server's option list."""
import random

import pytest
import torch

from conftest import random_weights_checkpoint, write_tiny_bert
from s2s_ft.data.reading import load_tokenizer
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.decoding.search import SEARCH_OPTIONS, SearchConfig
from s2s_ft.decoding.source_words import SourceWords, continuation_ids
from s2s_ft.errors import UsageError

# a WordPiece vocabulary with words that only exist as pieces: un ##super ##vised, re ##in ##force ##ment ...
PIECE_WORDS = ("the a we show propose method model learning un re in super vised force ment ed ing . ? "
               "##super ##vised ##in ##force ##ment ##ed ##ing ##s ##er").split()
CONTINUATION = [i for i, w in enumerate(PIECE_WORDS) if w.startswith("##")]


def words_of(ids, continuation):
    """Every word of ``ids`` as a tuple of pieces, the last one possibly unfinished (brute-force split)."""
    words = []
    for t in ids:
        if t in continuation and words:
            words[-1] += (t,)
        else:
            words.append((t,))
    return words


def allowed_by_definition(tokens, source, vocab, continuation) -> set:
    source_words = {w for w in words_of(source, continuation) if len(w) > 1}
    prefixes = {w[:i] for w in source_words for i in range(1, len(w) + 1)}
    allowed = set()
    for t in range(vocab):
        extended = list(tokens) + [t]
        if extended[0] in continuation:  # a word cannot start with a continuation piece
            continue
        *done, last = words_of(extended, continuation)
        if any(len(w) > 1 and w not in source_words for w in done):
            continue
        if len(last) > 1 and last not in prefixes:
            continue
        allowed.add(t)
    return allowed


def test_mask_matches_the_brute_force_definition():
    rng = random.Random(0)
    vocab, continuation = len(PIECE_WORDS), set(CONTINUATION)
    for _ in range(300):
        source = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))]
        words = SourceWords([source], CONTINUATION, vocab, torch.device("cpu"))
        # grow an output that obeys the constraint, checking the mask at every step
        tokens = []
        for _ in range(8):
            banned = words.banned(torch.tensor([tokens], dtype=torch.long).view(1, -1), torch.tensor([0]))[0]
            allowed = {t for t in range(vocab) if not banned[t]}
            assert allowed == allowed_by_definition(tokens, source, vocab, continuation), (source, tokens)
            tokens.append(rng.choice(sorted(allowed)))


def test_mask_follows_each_rows_sentence():
    un, sup, vised = PIECE_WORDS.index("un"), PIECE_WORDS.index("##super"), PIECE_WORDS.index("##vised")
    the = PIECE_WORDS.index("the")
    words = SourceWords([[un, sup, vised], [un]], CONTINUATION, len(PIECE_WORDS), torch.device("cpu"))
    banned = words.banned(torch.tensor([[the, un], [the, un], [un, sup]]), torch.tensor([0, 1, 0]))
    assert not banned[0, sup] and banned[1, sup]  # only sentence 0's source has un ##super ...
    assert banned[2].sum() == len(PIECE_WORDS) - 1 and not banned[2, vised]  # "un ##super" is not a word: go on


def test_a_vocabulary_without_continuation_pieces_is_refused():
    class Bpe:
        def get_vocab(self):
            return {"Ġthe": 0, "the": 1, ",": 2}
    with pytest.raises(UsageError, match="WordPiece"):
        continuation_ids(Bpe(), "ckpt")


@pytest.fixture(scope="module")
def piece_checkpoint(tmp_path_factory):
    return random_weights_checkpoint(tmp_path_factory, 24, words=PIECE_WORDS)


def multi_piece_words(tokens, tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokens)
    return [w for w in words_of(pieces, {p for p in pieces if p.startswith("##")}) if len(w) > 1]


@pytest.mark.parametrize("search", [dict(beam_size=1), dict(beam_size=4), dict(do_sample=True, seed=3)],
                         ids=["greedy", "beam", "sample"])
def test_decoded_multi_piece_words_come_from_the_source(piece_checkpoint, search):
    loaded = load_decoder(piece_checkpoint, "cpu")
    sources = ["we show unsupervised learning", "re ##in ##force ##ment learning", "the model", "a method ."]
    ids, _ = loaded.source_ids(sources)
    free = loaded.decode_ids(ids, SearchConfig(max_tgt_length=8, **search))
    constrained = loaded.decode_ids(ids, SearchConfig(max_tgt_length=8, source_words_only=True, **search))
    assert any(multi_piece_words(h[0].tokens, loaded.tokenizer) for h in free if h)  # the weights do write some
    with pytest.raises(UsageError, match="continuation"):  # the decoder alone does not know the tokenizer
        loaded.decoder.generate(ids, SearchConfig(max_tgt_length=8, source_words_only=True, **search))
    for source, hyps in zip(ids, constrained):
        source_words = set(map(tuple, multi_piece_words(source, loaded.tokenizer)))
        for hyp in hyps:
            assert set(map(tuple, multi_piece_words(hyp.tokens, loaded.tokenizer))) <= source_words


def test_the_cli_takes_the_option_and_the_server_lists_it(piece_checkpoint, tmp_path):
    from s2s_ft.cli import decode
    assert "source_words_only" in SEARCH_OPTIONS
    src = tmp_path / "in.jsonl"
    src.write_text('{"src": "we show unsupervised learning"}\n{"src": "the model"}\n')
    out = tmp_path / "out.txt"
    assert decode.main(["--model_path", piece_checkpoint, "--input_file", str(src), "--output_file", str(out),
                        "--beam_size", "3", "--source_words_only", "--device", "cpu"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_a_vocabulary_of_whole_words_only_is_refused(tmp_path):
    directory = tmp_path / "bert"
    directory.mkdir()
    write_tiny_bert(directory, ["the", "cat"], weights=False)  # no continuation pieces at all
    with pytest.raises(UsageError, match="WordPiece"):
        continuation_ids(load_tokenizer(str(directory)), str(directory))
