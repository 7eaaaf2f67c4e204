"""The Hugging Face wrapper under the contract ``transformers``' generation tests hold a model to (issue 41): one rule
for long sources on every way in, generation settings that save and reload, ``max_length`` honoured, hidden states
that are what they say, a repetition penalty on the generated tokens only, and one-line errors for empty inputs and
for the features a one-stack model cannot serve.

References are independent of the wrapper: the project's decoder (``Seq2SeqDecoder`` through ``load_decoder``), a
prompt cut by hand, and brute-force recomputations of a processor from the model's raw log-probabilities.
"""
from __future__ import annotations

import pytest
import torch
from test_hf_generate import METHODS, SOURCES, make_checkpoint, reference
from transformers import GenerationConfig

from s2s_ft.data.reading import load_tokenizer
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.hf import S2sFtForConditionalGeneration
from s2s_ft.hf.options import CallOptions

# 24 words: longer than the checkpoints' source budget (max_source_seq_length 16: [CLS], 14 pieces, [SEP])
LONG_SOURCE = ("the big red dog sat on the small blue mat where the cat ran on a tree who is the bird ? "
               "house fish")
BUDGET = 16


@pytest.fixture(scope="module", params=[(m, c) for m in METHODS for c in (False, True)],
                ids=[f"{m}{'-copy' if c else ''}" for m in METHODS for c in (False, True)])
def loaded(request, tmp_path_factory):
    method, copy = request.param
    path = make_checkpoint(tmp_path_factory.mktemp("hf41"), method, copy, seed=11 + METHODS.index(method) + 3 * copy)
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    return path, S2sFtForConditionalGeneration.from_pretrained(path), tokenizer, load_decoder(path, device="cpu")


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """One checkpoint (pseudo-masked with copy) for the tests of settings and errors, which do not depend on it."""
    path = make_checkpoint(tmp_path_factory.mktemp("hf41-one"), "pseudo_masked", True, seed=5)
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    return path, S2sFtForConditionalGeneration.from_pretrained(path), tokenizer


def new_tokens(model, out, width: int) -> list[list[int]]:
    """Each row's generated tokens up to (without) the closing [SEP]."""
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(model.special.sep)] if model.special.sep in row else
                    [t for t in row if t != model.special.pad])
    return rows


# ---------------------------------------------------------------------------------------- 1. one source budget
@pytest.mark.parametrize("beams", [1, 5])
def test_a_long_source_is_read_as_the_project_decoder_reads_it(loaded, beams, single_thread):
    _, model, tokenizer, decoder = loaded
    sources = [LONG_SOURCE, SOURCES[0], SOURCES[1], LONG_SOURCE + " big"]
    assert len(tokenizer(LONG_SOURCE)["input_ids"]) > BUDGET
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    expected = reference(decoder, sources, beam_size=beams)
    out = model.generate(**batch, num_beams=beams, max_new_tokens=10, return_dict_in_generate=True,
                         output_scores=True)
    width = batch["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :width], batch["input_ids"])  # the prompt's columns come back as given
    assert new_tokens(model, out.sequences, width) == [hyps[0].tokens for hyps in expected]
    if beams > 1:
        assert out.sequences_scores.tolist() == pytest.approx([hyps[0].log_prob for hyps in expected], abs=1e-4)


def test_forward_reads_a_long_prompt_as_the_prompt_cut_by_hand(loaded, single_thread):
    _, model, tokenizer, _ = loaded
    ids = tokenizer([LONG_SOURCE], return_tensors="pt")["input_ids"]
    cut = torch.cat([ids[:, :BUDGET - 1], ids[:, -1:]], 1)  # [CLS], the first 14 pieces, [SEP]
    assert cut.shape[1] == BUDGET and ids.shape[1] > BUDGET
    torch.testing.assert_close(model(ids).logits, model(cut).logits, atol=1e-5, rtol=0)


def test_the_pipeline_cuts_a_long_source_alike(loaded, single_thread):
    from transformers import pipeline

    _, model, tokenizer, decoder = loaded
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    expected = decoder.decode_texts([LONG_SOURCE], beam_size=3, max_tgt_length=10)
    got = pipe(LONG_SOURCE, num_beams=3, do_sample=False, max_new_tokens=10, return_full_text=False)
    assert [got[0]["generated_text"].strip()] == expected


# --------------------------------------------------------------------------- 2.-4. settings: save, reload, lengths
def test_the_default_generation_config_saves_and_reloads(one, tmp_path):
    _, model, _ = one
    model.generation_config.validate(strict=True)
    model.generation_config.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).to_diff_dict() == model.generation_config.to_diff_dict()


def test_customised_generation_settings_survive_save_pretrained(one, tmp_path, single_thread):
    path, _, tokenizer = one
    model = S2sFtForConditionalGeneration.from_pretrained(path)
    model.generation_config.num_beams, model.generation_config.max_new_tokens = 3, 5
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    again = S2sFtForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert (again.generation_config.num_beams, again.generation_config.max_new_tokens) == (3, 5)
    batch = tokenizer(SOURCES[:3], return_tensors="pt", padding=True)
    explicit = S2sFtForConditionalGeneration.from_pretrained(path).generate(**batch, num_beams=3, max_new_tokens=5)
    assert torch.equal(again.generate(**batch), explicit)


def test_an_invalid_generation_config_is_refused_before_anything_is_written(one, tmp_path):
    path, _, _ = one
    model = S2sFtForConditionalGeneration.from_pretrained(path)
    model.generation_config.early_stopping = True  # a beam-only flag without beams: transformers refuses to save it
    with pytest.raises(ValueError, match="early_stopping"):
        model.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_max_length_counts_the_prompt_and_is_honoured(one, single_thread):
    _, model, tokenizer = one
    batch = tokenizer(SOURCES[:4], return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    three_new = model.generate(**batch, max_new_tokens=3, min_new_tokens=3)
    assert three_new.shape[1] == width + 3
    assert torch.equal(model.generate(**batch, max_length=width + 3, min_new_tokens=3), three_new)
    passed = GenerationConfig(max_length=width + 3, min_new_tokens=3)
    assert torch.equal(model.generate(**batch, generation_config=passed), three_new)
    # a longer min_length than the default min_new_tokens: [SEP] is banned until the 4th new token
    assert torch.equal(model.generate(**batch, min_length=width + 4, max_new_tokens=6),
                       model.generate(**batch, min_new_tokens=4, max_new_tokens=6))
    # both at the same level: max_new_tokens wins, as transformers has it
    assert model.generate(**batch, max_length=width + 9, max_new_tokens=3, min_new_tokens=3).shape[1] == width + 3
    with pytest.raises(ValueError, match="max_length"):
        model.generate(**batch, max_length=width)


def test_beam_search_defaults_to_the_project_rules_unless_told(one, single_thread):
    _, model, tokenizer = one
    batch = tokenizer(SOURCES[:4], return_tensors="pt", padding=True)
    implicit = model.generate(**batch, num_beams=4, output_scores=True, return_dict_in_generate=True)
    explicit = model.generate(**batch, num_beams=4, length_penalty=0.0, early_stopping=True, output_scores=True,
                              return_dict_in_generate=True)
    assert torch.equal(implicit.sequences, explicit.sequences)
    assert torch.equal(implicit.sequences_scores, explicit.sequences_scores)
    width, defaults = batch["input_ids"].shape[1], model.generation_config
    assert CallOptions({"num_beams": 4}, None, defaults, width).kwargs["length_penalty"] == 0.0
    assert CallOptions({"num_beams": 4}, None, defaults, width).kwargs["early_stopping"] is True
    assert CallOptions({"num_beams": 4, "length_penalty": 1.0}, None, defaults, width).kwargs["length_penalty"] == 1.0
    passed = CallOptions({}, GenerationConfig(num_beams=4, early_stopping="never"), defaults, width).config
    assert (passed.early_stopping, passed.length_penalty) == ("never", 0.0)
    assert "length_penalty" not in CallOptions({}, None, defaults, width).kwargs  # greedy: no beam-only flag


# ------------------------------------------------------------------------ 5., 7. features that cannot apply here
REFUSED = [
    (dict(prompt_lookup_num_tokens=3), "prompt lookup"),
    (dict(assistant_early_exit=1), "assisted"),
    (dict(guidance_scale=1.5), "classifier-free guidance"),
    (dict(output_attentions=True, return_dict_in_generate=True), "attention weights"),
    (dict(cache_implementation="static"), "cache_implementation"),
    (dict(token_healing=True), "token_healing"),
]


@pytest.mark.parametrize("kwargs,match", REFUSED, ids=[next(iter(k)) for k, _ in REFUSED])
def test_features_a_one_stack_model_cannot_serve_are_refused_in_one_line(one, kwargs, match):
    _, model, tokenizer = one
    batch = tokenizer(SOURCES[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match=match) as error:
        model.generate(**batch, **kwargs)
    assert "\n" not in str(error.value)


def test_model_inputs_that_cannot_apply_are_refused_in_one_line(one):
    path, model, tokenizer = one
    batch = tokenizer(SOURCES[:1], return_tensors="pt")
    embeds = model.get_input_embeddings()(batch["input_ids"])
    for kwargs, match in ((dict(assistant_model=model), "assisted"), (dict(inputs_embeds=embeds), "token ids"),
                          (dict(decoder_input_ids=batch["input_ids"]), "no separate decoder"),
                          (dict(negative_prompt_ids=batch["input_ids"]), "guidance")):
        with pytest.raises(ValueError, match=match) as error:
            model.generate(**batch, **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="attention weights"):
        model(batch["input_ids"], output_attentions=True)
    with pytest.raises(ValueError, match="sdpa"):
        S2sFtForConditionalGeneration.from_pretrained(path, attn_implementation="eager")
    assert S2sFtForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa") is not None


def test_generate_reads_the_inputs_keyword_as_transformers_does(one, single_thread):
    _, model, tokenizer = one
    ids = tokenizer(SOURCES[:1], return_tensors="pt")["input_ids"]
    assert torch.equal(model.generate(inputs=ids), model.generate(ids))


# ------------------------------------------------------------------------------------ 6. empty and bad inputs
def bad_prompts(tokenizer):
    ids = tokenizer(SOURCES[:1], return_tensors="pt")["input_ids"]
    return [
        (dict(input_ids=ids[:, :0]), "empty"),
        (dict(input_ids=ids[:0]), "batch size 0"),
        (dict(input_ids=torch.cat([ids[:, :1], torch.tensor([[9999]]), ids[:, -1:]], 1)), "outside the vocabulary"),
        (dict(input_ids=torch.cat([ids[:, :1], torch.tensor([[-3]]), ids[:, -1:]], 1)), "outside the vocabulary"),
        (dict(input_ids=ids[0]), "2-D"),
        (dict(input_ids=ids, attention_mask=torch.ones(1, ids.shape[1] + 1, dtype=torch.long)), "must match"),
        (dict(input_ids=ids[:, 1:-1]), r"\[CLS\] source \[SEP\]"),
    ]


@pytest.mark.parametrize("case", range(7), ids=["no-columns", "no-rows", "id-too-large", "negative-id", "1-D",
                                                "mask-shape", "no-specials"])
def test_bad_prompts_are_refused_in_one_line(one, case):
    _, model, tokenizer = one
    kwargs, match = bad_prompts(tokenizer)[case]
    for call in (model.generate, model):  # generate, and forward on its own
        with pytest.raises(ValueError, match=match) as error:
            call(**kwargs)
        assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------- 7. hidden states
def test_hidden_states_are_those_of_the_position_that_predicts(loaded, single_thread):
    _, model, tokenizer, _ = loaded
    batch = tokenizer(SOURCES[:3], return_tensors="pt", padding=True)
    runs = [model.generate(**batch, max_new_tokens=5, min_new_tokens=5, output_hidden_states=True, output_logits=True,
                           return_dict_in_generate=True, use_cache=cache) for cache in (True, False)]
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    for out in runs:
        assert len(out.hidden_states) == 5
        assert all(len(step) == layers + 1 and all(s.shape == (3, 1, hidden) for s in step)
                   for step in out.hidden_states)
    for with_cache, without in zip(runs[0].hidden_states, runs[1].hidden_states):
        for a, b in zip(with_cache, without):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    if model.transformer.copy is None:  # the last layer's state gives the step's log-probabilities through the head
        for state, logits in zip(runs[0].hidden_states, runs[0].logits):
            torch.testing.assert_close(model.transformer.log_probs(state[-1][:, 0]), logits, atol=1e-4, rtol=0)
    beams = model.generate(**batch, num_beams=3, max_new_tokens=4, output_hidden_states=True,
                           return_dict_in_generate=True)
    assert beams.hidden_states[0][-1].shape == (9, 1, hidden)


# -------------------------------------------------------------------------------------- 8. repetition penalty
def penalised(logits: torch.Tensor, history: list[list[int]], penalty: float) -> torch.Tensor:
    """CTRL's penalty, written out: each token already generated in the row is scaled once (negative scores times
    the penalty, positive ones divided by it)."""
    out = logits.clone()
    for row, seen in enumerate(history):
        for token in set(seen):
            value = out[row, token]
            out[row, token] = value * penalty if value < 0 else value / penalty
    return out


def test_repetition_penalty_counts_the_generated_tokens_only(loaded, single_thread):
    _, model, tokenizer, _ = loaded
    batch = tokenizer(SOURCES[:4], return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=8, repetition_penalty=3.0, output_scores=True, output_logits=True,
                         return_dict_in_generate=True)
    generated = out.sequences[:, width:].tolist()
    for step, (logits, scores) in enumerate(zip(out.logits, out.scores)):
        expected = penalised(logits, [row[:step] for row in generated], 3.0)
        finite = torch.isfinite(scores)  # suppressed layout tokens, [SEP] before min_new_tokens
        torch.testing.assert_close(scores[finite], expected[finite], atol=1e-5, rtol=0)
        alive = torch.tensor([model.special.sep not in row[:step] for row in generated])  # finished rows get padding
        assert torch.equal(scores.argmax(-1)[alive], out.sequences[alive, width + step])
    # the source's tokens are not penalised at the first step: it equals the unpenalised first step
    plain = model.generate(**batch, max_new_tokens=1, output_scores=True, return_dict_in_generate=True)
    torch.testing.assert_close(out.scores[0], plain.scores[0])


# ------------------------------------------------------------------------------------------------ 9. pipeline
def test_the_pipeline_adds_special_tokens_by_default_and_refuses_a_prompt_without(loaded, single_thread):
    from transformers import pipeline

    _, model, tokenizer, decoder = loaded
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    expected = decoder.decode_texts(SOURCES[:2], beam_size=1, max_tgt_length=10)
    got = [out[0]["generated_text"].strip()
           for out in pipe(SOURCES[:2], do_sample=False, max_new_tokens=10, return_full_text=False)]
    assert got == expected
    with pytest.raises(ValueError, match="add_special_tokens=True") as error:
        pipe(SOURCES[0], do_sample=False, add_special_tokens=False)
    assert "\n" not in str(error.value)
