"""Answer-aware checkpoints through the Hugging Face wrapper: ``model.encode`` builds the prompts (and the answer's
``answer_mask``) as s2s-ft-decode builds its input, ``generate`` carries the mask through beam expansion, and the
outputs are the project's decoder's (``load_decoder(...).decode_ids`` on ``with_answers`` sources), token for token,
for each answer encoding; prompts given as the text ``"sentence [SEP] answer"`` (as the server takes them) through
``generate``, ``forward`` and the text-generation pipeline equal them too. Random weights: nothing is trained.
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


# ------------------------------------------------------------- the text "sentence [SEP] answer", as the server takes it
# ROWS, and a long sentence whose answer lies past the budget: the decoder cuts a window around it
TEXT_ROWS = ROWS + [("the big red bird sat on a small blue tree where the cat ran on the mat", "the mat")]


def answer_texts(tokenizer, rows) -> list[str]:
    return [f"{sentence} {tokenizer.sep_token} {answer}" for sentence, answer in rows]


def test_the_text_prompt_is_the_tokenizers_text_pair(answered):
    _, _, tokenizer, _ = answered
    for (sentence, answer), text in zip(TEXT_ROWS, answer_texts(tokenizer, TEXT_ROWS)):
        assert tokenizer(text)["input_ids"] == tokenizer(sentence, answer)["input_ids"]


@pytest.mark.parametrize("beams", [1, 5])
def test_generate_on_sentence_sep_answer_equals_the_project_decoder(answered, beams, single_thread):
    _, model, tokenizer, decoder = answered
    sources, answers = [s for s, _ in TEXT_ROWS], [a for _, a in TEXT_ROWS]
    ids, cut = decoder.source_ids(with_answers(sources, answers))
    assert cut == 2 and len(tokenizer(answer_texts(tokenizer, TEXT_ROWS[-1:]))["input_ids"][0]) > 16
    expected = decoder.decode_ids(ids, SearchConfig(beam_size=beams, max_tgt_length=10), batch_size=len(ids))
    tokenizer.padding_side = "left"
    batch = tokenizer(answer_texts(tokenizer, TEXT_ROWS), padding=True, return_tensors="pt")
    out = model.generate(**batch, num_beams=beams, max_new_tokens=10, return_dict_in_generate=True,
                         output_scores=True)
    width, sep = batch["input_ids"].shape[1], model.special.sep
    assert torch.equal(out.sequences[:, :width], batch["input_ids"])  # the prompt comes back as given
    got = [row[:row.index(sep)] if sep in row else [t for t in row if t != model.special.pad]
           for row in out.sequences[:, width:].tolist()]
    assert got == [hyps[0].tokens for hyps in expected]
    if beams > 1:
        assert out.sequences_scores.tolist() == pytest.approx([hyps[0].log_prob for hyps in expected], abs=1e-4)


def test_forward_reads_the_text_prompt_as_encode_builds_it(answered, single_thread):
    _, model, tokenizer, _ = answered
    sources, answers = [s for s, _ in TEXT_ROWS], [a for _, a in TEXT_ROWS]
    tokenizer.padding_side = "left"
    text = model(**tokenizer(answer_texts(tokenizer, TEXT_ROWS), padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(text, model(**model.encode(tokenizer, sources, answers)).logits, atol=1e-5, rtol=0)


def test_the_pipeline_takes_the_answer_after_the_separator(answered, single_thread):
    from transformers import pipeline

    _, model, tokenizer, decoder = answered
    rows = [TEXT_ROWS[0], TEXT_ROWS[4], TEXT_ROWS[-1]]  # in the source, not in it, past the budget
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    expected = decoder.decode_texts([s for s, _ in rows], answers=[a for _, a in rows], beam_size=5,
                                    max_tgt_length=10)
    got = [out[0]["generated_text"].strip() for out in pipe(answer_texts(tokenizer, rows), do_sample=False,
                                                             num_beams=5, max_new_tokens=10, return_full_text=False)]
    assert got == expected


@pytest.mark.parametrize("text, match", [("the cat sat [SEP] on [SEP] the mat", "a prompt has 2"),
                                         ("the cat sat on the mat [SEP]", "answer is empty")])
def test_a_text_prompt_that_is_not_sentence_sep_answer_is_refused_in_one_line(answered, text, match):
    _, model, tokenizer, _ = answered
    for call in (model.generate, model):
        with pytest.raises(ValueError, match=match) as error:
            call(**tokenizer(text, return_tensors="pt"))
        assert "\n" not in str(error.value)


def test_a_text_prompt_is_read_at_later_steps_from_the_s2s_ft_cache_only(answered, single_thread):
    from transformers import DynamicCache

    from s2s_ft.hf import S2sFtCache

    _, model, tokenizer, _ = answered
    batch = tokenizer(answer_texts(tokenizer, TEXT_ROWS[-1:]), return_tensors="pt")
    width = batch["input_ids"].shape[1]
    expected = model.generate(**batch, max_new_tokens=2, min_new_tokens=2, output_logits=True,
                              return_dict_in_generate=True)
    cache = S2sFtCache()
    first = model(**batch, cache=cache, use_cache=True).logits[:, -1]
    token = expected.sequences[:, width:width + 1]
    second = model(token, attention_mask=torch.ones(1, width + 1, dtype=torch.long), cache=cache,
                   source_width=width, use_cache=True).logits[:, -1]
    for got, logits in zip((first, second), expected.logits):
        torch.testing.assert_close(got, logits, atol=1e-5, rtol=0)
    other = DynamicCache()
    model(**batch, cache=other, use_cache=True)
    with pytest.raises(ValueError, match="S2sFtCache") as error:
        model(token, cache=other, source_width=width, use_cache=True)
    assert "\n" not in str(error.value)
