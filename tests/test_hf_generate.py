"""The Hugging Face wrapper (s2s_ft/hf/, issue 26): ``generate()`` on a checkpoint gives what the project's own
decoder gives, for every fine-tuning method, with and without the copy mechanism, at batch 1 and in a left-padded
batch; n-gram blocking through the provided processor; sampling, streaming, the pipeline; loading safety.

The reference is ``Seq2SeqDecoder`` (s2s-ft-decode's search), itself checked against a recomputation without the
cache and against HF ``BertModel`` elsewhere; the wrapper shares only the model and the methods' step feeds with it
(its layout bookkeeping, cache and search are transformers'), so agreement is not agreement with itself.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict

import pytest
import torch
from conftest import WORDS, write_tiny_bert

from s2s_ft.data.reading import load_tokenizer, special_ids
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.decoding.search import SearchConfig
from s2s_ft.hf import S2sFtForConditionalGeneration, TargetNoRepeatNGramLogitsProcessor
from s2s_ft.model import checkpoint

METHODS = ("causal", "masked", "pseudo_masked")
# 16 sources of different lengths: a left-padded batch
SOURCES = ["the cat sat on the mat", "a dog ran", "the big red bird", "a small fish", "the tree is blue",
           "a house", "who sat on the big mat ?", "the fish is red", "where is the dog", "a bird sat on a tree",
           "the small house is blue", "what ran on the mat ?", "the red dog sat", "a cat", "big blue fish ran",
           "the house on the tree is small"]


def make_checkpoint(directory, method: str, copy: bool, seed: int) -> str:
    """Random weights (std 0.3, so that outputs differ between sources and end at different lengths) saved as a
    fine-tuned checkpoint of ``method``; [SEP]'s bias raised so that hypotheses finish."""
    (directory / "base").mkdir()
    base = write_tiny_bert(directory / "base", WORDS)
    model, info = checkpoint.load_pretrained("bert", base, copy_mechanism=copy)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    tokenizer = load_tokenizer(base)
    special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
    with torch.no_grad():
        model.head.bias[special.sep] += 2.0
    out = directory / f"ckpt-{method}-{int(copy)}"
    checkpoint.save_checkpoint(model, str(out), "bert", info["hf_config"], tokenizer, {
        "fine_tune": method, "max_source_seq_length": 16, "max_target_seq_length": 10,
        "special_ids": asdict(special)})
    return str(out)


@pytest.fixture(scope="module", params=[(m, c) for m in METHODS for c in (False, True)],
                ids=[f"{m}{'-copy' if c else ''}" for m in METHODS for c in (False, True)])
def loaded(request, tmp_path_factory):
    method, copy = request.param
    path = make_checkpoint(tmp_path_factory.mktemp("hf"), method, copy, seed=METHODS.index(method) + 3 * copy)
    model = S2sFtForConditionalGeneration.from_pretrained(path)
    return path, model, load_tokenizer(path), load_decoder(path, device="cpu")


def reference(decoder, sources, **search):
    ids, _ = decoder.source_ids(sources)
    config = SearchConfig(max_tgt_length=10, **search)
    return decoder.decode_ids(ids, config, batch_size=len(sources))


def hf_generate(model, tokenizer, sources, **kwargs):
    tokenizer.padding_side = "left"
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=10, return_dict_in_generate=True, output_scores=True,
                         output_logits=True, **kwargs)
    width = batch["input_ids"].shape[1]
    rows = []
    for row in out.sequences[:, width:].tolist():
        ended = model.special.sep in row
        rows.append((row[:row.index(model.special.sep)] if ended else [t for t in row if t != model.special.pad],
                     ended))
    return rows, out


@pytest.mark.parametrize("batch", [1, 16])
def test_greedy_equals_the_project_decoder(loaded, batch, single_thread):
    _, model, tokenizer, decoder = loaded
    sources = SOURCES[:batch] if batch > 1 else SOURCES[:1]
    expected = reference(decoder, sources, beam_size=1)
    got, out = hf_generate(model, tokenizer, sources, num_beams=1, do_sample=False)
    assert [tokens for tokens, _ in got] == [hyps[0].tokens for hyps in expected]
    # the model's log-probabilities (``logits``: before the processors) of the chosen tokens, summed
    steps = torch.stack(out.logits, 1)
    chosen = steps.gather(2, out.sequences[:, -steps.shape[1]:, None])[..., 0]
    for row, (hyps, (tokens, ended)) in enumerate(zip(expected, got)):
        n = len(tokens) + int(ended)
        assert float(chosen[row, :n].sum()) == pytest.approx(hyps[0].log_prob, abs=1e-4)


@pytest.mark.parametrize("batch", [1, 16])
def test_beam_search_equals_the_project_decoder(loaded, batch, single_thread):
    _, model, tokenizer, decoder = loaded
    sources = SOURCES[:batch]
    expected = reference(decoder, sources, beam_size=5, min_len=2)
    got, out = hf_generate(model, tokenizer, sources, num_beams=5, min_new_tokens=2)
    assert [tokens for tokens, _ in got] == [hyps[0].tokens for hyps in expected]
    assert out.sequences_scores.tolist() == pytest.approx([hyps[0].log_prob for hyps in expected], abs=1e-4)


def test_ngram_blocking_equals_the_project_decoder(loaded, single_thread):
    _, model, tokenizer, decoder = loaded
    ignore = tokenizer.convert_tokens_to_ids(["the"])
    expected = reference(decoder, SOURCES, beam_size=3, forbid_duplicate_ngrams=True, ngram_size=1,
                         forbid_ignore_ids=ignore)
    got, _ = hf_generate(model, tokenizer, SOURCES, num_beams=3, no_repeat_ngram_size=1, ngram_ignore_ids=ignore)
    assert [tokens for tokens, _ in got] == [hyps[0].tokens for hyps in expected]


def test_target_ngram_processor_ignores_the_prompt():
    scores = torch.zeros(1, 8)
    prompt = [1, 5, 6, 2]  # [CLS] 5 6 [SEP]: the bigram 5 6 is in the source only
    processor = TargetNoRepeatNGramLogitsProcessor(2, prompt_width=len(prompt))
    assert torch.isfinite(processor(torch.tensor([prompt + [5]]), scores)).all()  # 5 -> 6 stays allowed
    banned = processor(torch.tensor([prompt + [5, 6, 5]]), scores)  # generated 5 6 5: 6 would repeat "5 6"
    assert torch.isinf(banned[0, 6]) and torch.isfinite(banned[0, 5])
    ignored = TargetNoRepeatNGramLogitsProcessor(2, len(prompt), ignore_ids=[6])(torch.tensor([prompt + [5, 6, 5]]),
                                                                                  scores)
    assert torch.isfinite(ignored).all()


def test_sampling_with_a_seed_is_reproducible(loaded, single_thread):
    _, model, tokenizer, _ = loaded
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(hf_generate(model, tokenizer, SOURCES[:4], do_sample=True, top_p=0.9, temperature=1.5)[0])
    assert runs[0] == runs[1]
    torch.manual_seed(8)
    others = [hf_generate(model, tokenizer, SOURCES[:4], do_sample=True, temperature=1.5)[0] for _ in range(3)]
    assert any(run != runs[0] for run in others)  # the seed matters: not a greedy search in disguise


def test_streamer_joined_equals_the_plain_output(loaded, single_thread):
    from transformers import TextIteratorStreamer

    _, model, tokenizer, _ = loaded
    batch = tokenizer(SOURCES[:1], return_tensors="pt")
    plain = model.generate(**batch, max_new_tokens=10)
    expected = tokenizer.decode(plain[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.generate, kwargs=dict(**batch, max_new_tokens=10, streamer=streamer))
    thread.start()
    joined = "".join(streamer)
    thread.join()
    assert joined.strip() == expected.strip()


def test_pipeline_equals_the_project_decoder(loaded, single_thread):
    from transformers import pipeline

    _, model, tokenizer, decoder = loaded
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, add_special_tokens=True)
    expected = decoder.decode_texts(SOURCES[:3], beam_size=3, max_tgt_length=10)
    got = [out[0]["generated_text"].strip()
           # the text-generation pipeline samples (temperature 0.7) unless told not to
           for out in pipe(SOURCES[:3], num_beams=3, do_sample=False, max_new_tokens=10, return_full_text=False)]
    assert got == expected


def test_the_directory_still_loads_in_auto_model_for_masked_lm(loaded):
    from transformers import AutoModelForMaskedLM

    path, model, _, _ = loaded
    masked_lm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    # same weights: BERT's word embeddings are ours
    assert torch.equal(masked_lm.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_save_pretrained_round_trip(loaded, tmp_path, single_thread):
    _, model, tokenizer, _ = loaded
    model.save_pretrained(tmp_path / "again", tokenizer=tokenizer)
    again = S2sFtForConditionalGeneration.from_pretrained(tmp_path / "again")
    batch = tokenizer(SOURCES[:2], return_tensors="pt", padding=True)
    assert torch.equal(model.generate(**batch, num_beams=2), again.generate(**batch, num_beams=2))


def test_causal_lm_auto_class_refuses_an_s2s_ft_directory(loaded, tmp_path):
    from transformers import AutoModelForCausalLM

    from s2s_ft.hf import S2sFtCheckpointError

    path = loaded[0]
    with pytest.raises(S2sFtCheckpointError, match="S2sFtForConditionalGeneration"):
        AutoModelForCausalLM.from_pretrained(path)
    # a plain BERT directory still loads as before
    plain = write_tiny_bert(tmp_path, WORDS)
    assert type(AutoModelForCausalLM.from_pretrained(plain)).__name__ == "BertLMHeadModel"


def test_bad_inputs_are_refused(loaded, tmp_path):
    path, model, tokenizer, _ = loaded
    with pytest.raises(ValueError, match="add_special_tokens=True"):
        model.generate(**tokenizer(SOURCES[:1], return_tensors="pt", add_special_tokens=False))
    with pytest.raises(Exception, match="s2s_ft_settings.json|settings"):
        S2sFtForConditionalGeneration.from_pretrained(write_tiny_bert(tmp_path, WORDS))
    batch = tokenizer(SOURCES[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="position_ids"):
        model(batch["input_ids"], position_ids=batch["input_ids"] * 0 + 5)


@pytest.mark.parametrize("method", METHODS)
def test_a_trained_checkpoint_decodes_alike(method, tiny_bert, train_file, tmp_path, single_thread):
    """A checkpoint trained by the project's trainer (not random weights): beam 5 on the training sources."""
    from conftest import train_args

    from s2s_ft.cli import train

    assert train.main(train_args(tiny_bert, train_file, tmp_path, "--fine_tune", method, "--num_training_steps",
                                 "40", "--save_steps", "40")) == 0
    path = str(tmp_path / "ckpt-40")
    model, tokenizer = S2sFtForConditionalGeneration.from_pretrained(path), load_tokenizer(path)
    sources = [json.loads(line)["src"] for line in open(train_file)][:6]
    sources = [s if isinstance(s, str) else " ".join(s) for s in sources]
    expected = reference(load_decoder(path, device="cpu"), sources, beam_size=5, min_len=1)
    got, out = hf_generate(model, tokenizer, sources, num_beams=5)
    assert [tokens for tokens, _ in got] == [hyps[0].tokens for hyps in expected]
    assert out.sequences_scores.tolist() == pytest.approx([hyps[0].log_prob for hyps in expected], abs=1e-4)
