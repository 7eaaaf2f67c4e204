"""--detokenize: generated ids back to text in the tokenisation of the references."""
from __future__ import annotations

import pytest
from conftest import write_tiny_bert

from s2s_ft.data.reading import load_tokenizer
from s2s_ft.decoding.detokenize import detokenize, ptb_rejoin
from s2s_ft.decoding.inference import LoadedDecoder
from s2s_ft.errors import UsageError

# Penn-Treebank-tokenised lines as SQuAD-QG has them (lower-cased, CoreNLP tokens separated by spaces).
PTB_LINES = [
    "who won at levi 's stadium -lrb- the afc -rrb- in 2016 ?",
    "why did n't the play-by-play crew say `` yes/no '' ?",
    "how many of the 80,000 u.s. fans paid 3.5 dollars -- or more ...",
]
WORDS = ["who", "won", "at", "levi", "'", "s", "stadium", "-", "lrb", "the", "afc", "rrb", "in", "2016", "?",
         "why", "did", "n", "t", "play", "by", "crew", "say", "`", "yes", "/", "no", "how", "many", "of", "80", ",",
         "000", "u", ".", "fans", "paid", "3", "5", "dollars", "or", "more", "##s"]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    return load_tokenizer(write_tiny_bert(tmp_path_factory.mktemp("wp"), WORDS, weights=False))


def ids_of(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_ptb_restores_the_treebank_tokens_that_wordpiece_splits(wordpiece):
    for line in PTB_LINES:
        ids = ids_of(wordpiece, line)
        assert wordpiece.unk_token_id not in ids
        assert detokenize(wordpiece, ids, "ptb") == line


def test_spaced_keeps_every_split_as_a_space_and_text_is_the_tokenizers_own(wordpiece):
    ids = ids_of(wordpiece, "who won at levi 's stadium ?")
    assert detokenize(wordpiece, ids, "spaced") == "who won at levi ' s stadium ?"
    # text: WordPiece's own decoder, which glues the question mark to the word before it (and keeps ' s apart)
    assert detokenize(wordpiece, ids, "text") == "who won at levi ' s stadium?"
    # WordPiece pieces merge; special tokens never reach the text
    with_specials = [wordpiece.cls_token_id, *ids_of(wordpiece, "stadiums ?"), wordpiece.sep_token_id]
    assert wordpiece.convert_ids_to_tokens(with_specials[1:-1]) == ["stadium", "##s", "?"]
    assert detokenize(wordpiece, with_specials, "spaced") == "stadiums ?"


def test_ptb_rejoin_rules():
    assert ptb_rejoin("it ' s the u . s . team ' s") == "it 's the u.s. team 's"
    assert ptb_rejoin("they ' re sure it ca n ' t") == "they 're sure it ca n't"
    assert ptb_rejoin("a - lrb - b - rrb - c - - d") == "a -lrb- b -rrb- c -- d"
    assert ptb_rejoin("` ` hi ' ' . . .") == "`` hi '' ..."
    assert ptb_rejoin("1 , 000 and 2 , 5 and 7 . 25") == "1,000 and 2 , 5 and 7.25"
    assert ptb_rejoin("what is it ?") == "what is it ?"  # nothing to undo


def test_byte_level_bpe_keeps_the_inputs_spaces_itself(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(PTB_LINES * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    for line in PTB_LINES:
        ids = tokenizer.encode(line, add_special_tokens=False)
        assert detokenize(tokenizer, ids, "spaced") == line
        assert detokenize(tokenizer, ids, "ptb") == line


def test_loaded_decoder_uses_the_style_and_rejects_unknown_ones(wordpiece):
    ids = ids_of(wordpiece, PTB_LINES[0])
    assert LoadedDecoder(None, wordpiece, {}, detokenize="ptb").text(ids) == PTB_LINES[0]
    assert LoadedDecoder(None, wordpiece, {}).text(ids) == detokenize(wordpiece, ids, "text")
    with pytest.raises(UsageError, match="--detokenize"):
        LoadedDecoder(None, wordpiece, {}, detokenize="moses")
