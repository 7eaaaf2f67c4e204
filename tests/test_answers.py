"""Answer-aware inputs (s2s_ft/data/answers.py): rows checked line by line, the answer's span found in the source's
word pieces, the encodings laid out as their references say (the tokenizer's own text-pair encoding for ``segment``,
the answer's own pieces for ``span``), the answer token type packed the same for training and decoding, the extra
token type loading in Hugging Face's BertModel, and the answer reaching the model through every way in."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import one_error_line, train_args, write_tiny_bert

from s2s_ft.cli import decode, train
from s2s_ft.data.answers import AnswerSource, encode_answer_sources
from s2s_ft.data.packing import Pair, Packer, SourceIds, SpecialIds, decoding_prefix
from s2s_ft.data.reading import DataError, load_tokenizer, prepare_sources
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.model import minilm
from s2s_ft.model.checkpoint import ANSWER_TYPE_KEY, load_finetuned, load_pretrained, save_checkpoint

SENTENCES = [  # (sentence, answer, answer_start as a word index of sentence.split(), or None / -1)
    ("the bbc was founded in 1922 by john reith .", "1922", 5),
    ("the bbc was founded in 1922 by john reith .", "john reith", 7),
    ("tesla 's coil resonated at unprecedented frequencies .", "unprecedented frequencies", None),
    ("Normandy is a region in France .", "france", None),  # found ignoring case
    ("the answer is elsewhere .", "paris", -1),
]


@pytest.fixture(scope="module")
def wordpiece():
    try:
        return load_tokenizer(minilm.minilm_dir())
    except minilm.MiniLMNotFound as error:
        pytest.skip(f"all-MiniLM-L6-v2: {error}")


@pytest.fixture(scope="module")
def byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    lines = [s for s, _, _ in SENTENCES] * 5
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return T.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", pad_token="<pad>")


def encode(tokenizer, encoding, max_len=64, rows=SENTENCES):
    items = [AnswerSource(s, a, start) for s, a, start in rows]
    return encode_answer_sources(tokenizer, items, max_len, encoding, tokenizer.sep_token_id)


# -------------------------------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("family", ["wordpiece", "byte_bpe"])
def test_the_span_covers_exactly_the_answers_pieces(family, request):
    tokenizer = request.getfixturevalue(family)
    encoded, _ = encode(tokenizer, "span")
    for (sentence, answer, start), ids in zip(SENTENCES, encoded):
        assert list(ids) == tokenizer(sentence, add_special_tokens=False)["input_ids"]  # the source as it was
        if start == -1:
            assert ids.answer_span is None
            continue
        begin, end = ids.answer_span
        assert tokenizer.decode(ids[begin:end]).strip().lower() == answer  # the marked pieces spell the answer
        assert answer not in tokenizer.decode(ids[:begin]).lower()  # its first occurrence
        assert tokenizer.decode(ids[end:]).strip() == "" or not tokenizer.decode(ids[end:]).lower().startswith(
            answer.split()[-1])


def test_segment_is_the_tokenizers_own_text_pair_encoding(wordpiece):
    encoded, _ = encode(wordpiece, "segment")
    for (sentence, answer, _), ids in zip(SENTENCES, encoded):
        assert [wordpiece.cls_token_id, *ids, wordpiece.sep_token_id] == wordpiece(sentence, answer)["input_ids"]
        assert ids.answer_span is None
    both, _ = encode(wordpiece, "span+segment")
    spans, _ = encode(wordpiece, "span")
    assert [list(b) for b in both] == [list(e) for e in encoded]
    assert [b.answer_span for b in both] == [s.answer_span for s in spans]


def test_a_long_source_is_cut_around_its_answer(wordpiece):
    words = [f"w{i}" for i in range(60)]
    sentence = " ".join(words[:50] + ["the", "answer", "here"] + words[50:])
    (plain,), _ = prepare_sources(wordpiece, [sentence], 1000)
    (ids,), (full,) = encode(wordpiece, "span+segment", max_len=24, rows=[(sentence, "the answer here", 50)])
    answer = wordpiece("the answer here", add_special_tokens=False)["input_ids"]
    assert len(ids) == 22 and full > 22
    sep = ids.index(wordpiece.sep_token_id)
    assert ids[sep + 1:] == answer  # the appended answer, whole
    begin, end = ids.answer_span
    assert ids[begin:end] == answer and begin > 0 and end < sep  # the window holds the answer, with context
    window = ids[:sep]
    assert any(plain[i:i + len(window)] == window for i in range(len(plain)))  # a contiguous piece of the source


# ------------------------------------------------------------------------------------------------ the packing
def test_training_and_decoding_pack_the_answer_type_alike():
    special = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=50, source_type=0, target_type=1, answer_type=2)
    source = SourceIds([10, 11, 12, 13, 2, 12], answer_span=(2, 4))  # ... [SEP] answer, the span marked
    packed = Packer("pseudo_masked", special, corrupt=False)([Pair(source, [20, 21])])
    assert packed.token_type_ids[0, :8].tolist() == [0, 0, 0, 2, 2, 0, 0, 0]
    assert packed.token_type_ids[0, 8:].tolist() == [1] * 6
    prefix = decoding_prefix([source], special)
    for name in ("input_ids", "position_ids", "token_type_ids", "key_rank", "query_rank"):
        assert getattr(prefix, name).tolist() == getattr(packed, name)[:, :8].tolist(), name
    with pytest.raises(ValueError, match="no answer token type"):
        decoding_prefix([source], SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=50))


# ------------------------------------------------------------------------------------------------- the model
def test_the_answer_type_is_one_more_row_that_hf_bert_reads(tmp_path):
    config = T.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    T.BertForMaskedLM(config).save_pretrained(tmp_path / "base")
    model, info = load_pretrained("bert", str(tmp_path / "base"), answer_type=True)
    table = model.embeddings.token_type.weight
    assert info["answer_type_added"] and info["hf_config"][ANSWER_TYPE_KEY] == 2 and table.shape[0] == 3
    assert torch.equal(table[2], table[1])  # starts as BERT's second segment
    with torch.no_grad():
        table[2].add_(0.5)  # as if trained
    save_checkpoint(model, str(tmp_path / "ft"), "bert", info["hf_config"], settings={})
    saved = json.load(open(tmp_path / "ft" / "config.json"))
    assert saved["type_vocab_size"] == 3 and saved[ANSWER_TYPE_KEY] == 2
    reference = T.BertModel.from_pretrained(tmp_path / "ft").eval()
    ids = torch.randint(5, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    types = torch.tensor([[0, 0, 2, 2, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 1, 1, 1, 1]])
    expected = reference(input_ids=ids, token_type_ids=types).last_hidden_state
    reloaded = load_finetuned_model(tmp_path / "ft")[0].eval()
    zeros = torch.zeros_like(ids)
    with torch.no_grad():
        ours = reloaded(ids, torch.arange(9).expand_as(ids), types, zeros, zeros)
    assert (ours - expected).abs().max() < 1e-5


def load_finetuned_model(path):
    (path / "s2s_ft_settings.json").write_text(json.dumps({"model_type": "bert"}))
    return load_finetuned(str(path))


# -------------------------------------------------------------------------------------------- bad rows, clearly
BAD_ROWS = [
    ("mixed", '{"src": "the cat", "answer": "cat", "tgt": "what ?"}\n{"src": "a dog", "tgt": "who ?"}\n',
     ':2: no "answer", but line 1 has one'),
    ("mixed-other-way", '{"src": "the cat", "tgt": "what ?"}\n{"src": "a dog", "answer": "dog", "tgt": "who ?"}\n',
     ':2: an "answer", but line 1 has none'),
    ("answer-number", '{"src": "the cat", "answer": 3, "tgt": "what ?"}\n', ':1: "answer" must be a non-empty'),
    ("answer-empty", '{"src": "the cat", "answer": " ", "tgt": "what ?"}\n', ':1: "answer" must be a non-empty'),
    ("start-elsewhere", '{"src": "the cat sat", "answer": "cat", "answer_start": 2, "tgt": "what ?"}\n',
     ':1: "answer_start" 2 does not point at the answer: "src" word 2 on is "sat"'),
    ("start-past-end", '{"src": "the cat", "answer": "cat", "answer_start": 7, "tgt": "what ?"}\n',
     ':1: "answer_start" 7 does not point at the answer'),
    ("start-string", '{"src": "the cat", "answer": "cat", "answer_start": "1", "tgt": "what ?"}\n',
     ':1: "answer_start" must be an integer'),
    ("start-bool", '{"src": "the cat", "answer": "cat", "answer_start": true, "tgt": "what ?"}\n',
     ':1: "answer_start" must be an integer'),
    ("start-alone", '{"src": "the cat", "answer_start": 1, "tgt": "what ?"}\n', ':1: "answer_start" without'),
]


@pytest.mark.parametrize("name, text, message", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_bad_answer_rows_are_one_line_naming_file_and_line(name, text, message, tiny_bert, tmp_path, capsys):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text)
    assert train.main(train_args(tiny_bert, str(path), tmp_path / "out", "--num_training_steps", "1")) == 2
    assert f"{path}{message}" in one_error_line(capsys)


ANSWER_ROWS = [("the cat sat on the mat", "cat", "who sat on the mat ?"),
               ("the cat sat on the mat", "the mat", "where did the cat sit ?"),
               ("a big dog ran", "dog", "who ran ?"), ("a big dog ran", "ran", "what did the dog do ?"),
               ("the red bird sat on the tree", "bird", "who sat on the tree ?"),
               ("the red bird sat on the tree", "the tree", "where did the bird sit ?")]


@pytest.fixture(scope="module")
def answer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    with open(folder / "train.jsonl", "w") as handle:
        for src, answer, tgt in ANSWER_ROWS:
            handle.write(json.dumps({"src": src, "answer": answer, "tgt": tgt}) + "\n")
    with open(folder / "plain.jsonl", "w") as handle:
        handle.write(json.dumps({"src": "the cat sat", "tgt": "who ?"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def answer_model(tmp_path_factory, answer_files):
    words = "the a cat dog sat ran on mat big red bird tree who what where did do sit ?".split()
    base = write_tiny_bert(tmp_path_factory.mktemp("tiny"), words, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    out = tmp_path_factory.mktemp("answer-run")
    assert train.main(train_args(base, str(answer_files / "train.jsonl"), out, "--num_training_steps", "150",
                                 "--save_steps", "150", "--per_device_train_batch_size", "6", "--max_source_seq_length",
                                 "16", "--max_target_seq_length", "10", "--copy_mechanism", "--seed", "3")) == 0
    return str(out / "ckpt-150")


def test_the_answer_decides_the_question_in_every_way_in(answer_model, answer_files, tmp_path):
    settings = json.load(open(f"{answer_model}/s2s_ft_settings.json"))
    assert settings["answer_encoding"] == "span+segment" and settings["special_ids"]["answer_type"] == 2
    decoder = load_decoder(answer_model, "cpu", detokenize="spaced")
    sources, answers = [r[0] for r in ANSWER_ROWS], [r[1] for r in ANSWER_ROWS]
    by_api = decoder.decode_texts(sources, answers=answers, beam_size=3)
    assert by_api == [r[2] for r in ANSWER_ROWS]  # learnt: one sentence, two answers, two questions
    output = tmp_path / "pred.txt"
    assert decode.main(["--model_path", answer_model, "--input_file", str(answer_files / "train.jsonl"),
                        "--output_file", str(output), "--beam_size", "3", "--detokenize", "spaced"]) == 0
    assert output.read_text().splitlines() == by_api


def test_answers_and_checkpoints_must_agree(answer_model, answer_files, tiny_bert, train_file, tmp_path, capsys):
    decoder = load_decoder(answer_model, "cpu")
    with pytest.raises(DataError, match="trained with answers"):
        decoder.decode_texts(["the cat sat"])
    output = str(tmp_path / "out.txt")
    assert decode.main(["--model_path", answer_model, "--input_file", str(answer_files / "plain.jsonl"),
                        "--output_file", output]) == 2
    assert f"{answer_files / 'plain.jsonl'}: {answer_model} was trained with answers" in one_error_line(capsys)
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "run", "--num_training_steps", "1",
                                 "--answer_encoding", "span")) == 2
    assert "--answer_encoding is span, but the rows have no \"answer\"" in one_error_line(capsys)
