"""Answer-aware checkpoints through the Hugging Face wrapper: ``model.encode`` builds the prompts (and the answer's
``answer_mask``) as s2s-ft-decode builds its input, ``generate`` carries the mask through beam expansion, and the
outputs are the project's decoder's (``load_decoder(...).decode_ids`` on ``with_answers`` sources), token for token,
for each answer encoding. Random weights: nothing is trained.
"""
from __future__ import annotations


import pytest
import torch
from conftest import make_answer_checkpoint

from s2s_ft.data.answers import uses_segment, uses_span
from s2s_ft.data.reading import load_tokenizer
from s2s_ft.decoding.inference import load_decoder, with_answers
from s2s_ft.decoding.search import SearchConfig
from s2s_ft.hf import S2sFtForConditionalGeneration

ROWS = [("the cat sat on the mat", "the mat"), ("the cat sat on the mat", "cat"), ("a dog ran", "dog"),
        ("who sat on the big red mat ?", "big red mat"), ("the fish is red", "paris"),  # not in the source
        ("the big red bird sat on a small blue tree where the cat ran on the mat", "blue tree")]
SOURCES, ANSWERS = [s for s, _ in ROWS], [a for _, a in ROWS]
CASES = [("span+segment", "pseudo_masked", True), ("span", "causal", False), ("segment", "masked", True)]


@pytest.fixture(scope="module", params=CASES, ids=[case[0] for case in CASES])
def answered(request, tmp_path_factory):
    encoding, method, copy = request.param
    path = make_answer_checkpoint(tmp_path_factory.mktemp("hf-answers"), encoding, method, copy)
    return encoding, S2sFtForConditionalGeneration.from_pretrained(path), load_tokenizer(path), load_decoder(path,
                                                                                                         device="cpu")


def test_encode_builds_the_decoders_source_ids(answered):
    encoding, model, tokenizer, decoder = answered
    batch = model.encode(tokenizer, SOURCES, ANSWERS)
    expected, cut = decoder.source_ids(with_answers(SOURCES, ANSWERS))
    assert cut == 1  # the last row is longer than the budget
    sp = model.special
    for ids, mask, source in zip(batch["input_ids"], batch["attention_mask"], expected):
        assert ids[mask.bool()].tolist() == [sp.cls, *source, sp.sep]
        assert (mask.cumsum(0) > 0).eq(mask.bool()).all()  # left padding
    assert ("answer_mask" in batch) == uses_span(encoding)
    if uses_span(encoding):
        for ids, mask, marked, source in zip(batch["input_ids"], batch["attention_mask"], batch["answer_mask"],
                                             expected):
            start, end = source.answer_span if source.answer_span else (0, 0)
            assert marked[mask.bool()].tolist() == [False] + [start <= i < end for i in range(len(source))] + [False]


@pytest.mark.parametrize("beams", [1, 5])
def test_generate_with_answers_equals_the_project_decoder(answered, beams, single_thread):
    _, model, tokenizer, decoder = answered
    batch = model.encode(tokenizer, SOURCES, ANSWERS)
    ids, _ = decoder.source_ids(with_answers(SOURCES, ANSWERS))
    expected = decoder.decode_ids(ids, SearchConfig(beam_size=beams, max_tgt_length=10), batch_size=len(ids))
    out = model.generate(**batch, num_beams=beams, max_new_tokens=10, return_dict_in_generate=True,
                         output_scores=True)
    width, sep = batch["input_ids"].shape[1], model.special.sep
    got = [row[:row.index(sep)] if sep in row else [t for t in row if t != model.special.pad]
           for row in out.sequences[:, width:].tolist()]
    assert got == [hyps[0].tokens for hyps in expected]
    if beams > 1:
        assert out.sequences_scores.tolist() == pytest.approx([hyps[0].log_prob for hyps in expected], abs=1e-4)


def test_the_answer_changes_the_prediction(answered, single_thread):
    encoding, model, tokenizer, _ = answered
    batch = model.encode(tokenizer, SOURCES[:2], ANSWERS[:2])  # one sentence, two answers
    logits = model(**batch).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    if encoding == "span":  # the same ids: only the answer's token type tells the rows apart
        assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])


def test_the_segment_encoding_is_the_tokenizers_text_pair(answered, single_thread):
    encoding, model, tokenizer, _ = answered
    encoded = model.encode(tokenizer, SOURCES[:1], ANSWERS[:1])
    pair = tokenizer(SOURCES[0], ANSWERS[0], return_tensors="pt") if uses_segment(encoding) else tokenizer(
        SOURCES[0], return_tensors="pt")  # span alone: the answer is only in answer_mask
    assert torch.equal(pair["input_ids"], encoded["input_ids"])
    if encoding == "segment":  # nothing else to give: the text pair generates alike (its token types are ignored)
        assert torch.equal(model.generate(**pair, num_beams=3), model.generate(**encoded, num_beams=3))


def test_prompts_without_the_answer_the_checkpoint_expects_are_refused(answered):
    encoding, model, tokenizer, _ = answered
    plain = tokenizer(SOURCES[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="model.encode") as error:
        model.generate(**plain)
    assert "\n" not in str(error.value)
    if uses_span(encoding):
        long = model.encode(tokenizer, SOURCES[-1:], ANSWERS[-1:])
        sep = torch.tensor([[model.special.sep]])
        too_long = torch.cat([long["input_ids"][:, :-1], long["input_ids"][:, 1:-1], sep], 1)
        with pytest.raises(ValueError, match="longer than"):
            model.generate(input_ids=too_long, answer_mask=torch.zeros_like(too_long, dtype=torch.bool))
    else:
        with pytest.raises(ValueError, match="marks no answer"):
            model.generate(**model.encode(tokenizer, SOURCES[:1], ANSWERS[:1]),
                           answer_mask=torch.zeros_like(plain["input_ids"], dtype=torch.bool))


def test_a_checkpoint_without_answers_refuses_them(tmp_path):
    from test_hf_generate import make_checkpoint

    path = make_checkpoint(tmp_path, "pseudo_masked", False, seed=0)
    model, tokenizer = S2sFtForConditionalGeneration.from_pretrained(path), load_tokenizer(path)
    batch = model.encode(tokenizer, SOURCES[:2])
    assert set(batch) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="marks no answer"):
        model.generate(**batch, answer_mask=torch.zeros_like(batch["input_ids"], dtype=torch.bool))
    with pytest.raises(ValueError, match="without answers"):
        model.encode(tokenizer, SOURCES[:2], ANSWERS[:2])
