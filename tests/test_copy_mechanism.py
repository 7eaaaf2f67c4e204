"""The opt-in copy mechanism, checked against a brute-force recompute of its definition

    P(w) = g * softmax(head(h))[w] + (1 - g) * sum_{j in copyable source columns, id_j = w} a_j,
    a = softmax_j(query(h) . key(s_j) / sqrt(hidden)),  g = sigmoid(gate(h)),

written here with Python loops over the source columns, never with the model's own mixture code."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ROOT,
    WORDS,
    assert_cache_matches_recomputation,
    train_args,
    write_tiny_bert,
)

from s2s_ft.cli import train
from s2s_ft.data.packing import Packer, Pair, SpecialIds
from s2s_ft.decoding.search import SearchConfig, Seq2SeqDecoder
from s2s_ft.model import checkpoint
from s2s_ft.model.quantize import Int8Linear, quantize_int8
from s2s_ft.model.transformer import (
    COPY_GATE_START,
    NEVER_VISIBLE,
    ModelConfig,
    UnifiedTransformer,
)
from s2s_ft.training.loss import LogSoftmaxPicks, seq2seq_loss

METHODS = ("causal", "masked", "pseudo_masked")
SP = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=40, source_type=0, target_type=1)
# A repeated id (7) checks that copy mass is summed over the columns that hold it; a [MASK] (3) in a source (as in
# MASS) must never be copied.
SOURCES = [[5, 7, 6, 7, 9, 10], [11, 12], [13, 3, 15, 16], [17]]


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, copy_mechanism=True, **overrides)
    model = UnifiedTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        model.copy.gate.bias.fill_(0.0)  # an even mixture: both parts matter in every check
    return model


@torch.no_grad()
def brute_force_probs(model, hidden_row, source_hidden, source_ids):
    """[V] mixture probabilities for one predicting state, by the definition (double precision, loops)."""
    c = model.copy
    h = hidden_row.double()
    vocab = torch.softmax(F.linear(model.head.norm(model.head.act(model.head.transform(hidden_row))).double(),
                                   model.head.word_embeddings.weight.double(), model.head.bias.double()), -1)
    gate = torch.sigmoid(F.linear(h, c.gate.weight.double(), c.gate.bias.double()))[0]
    q = F.linear(h, c.query.weight.double(), c.query.bias.double())
    columns = [j for j, token in enumerate(source_ids) if token not in (SP.cls, SP.sep, SP.mask, SP.pad)]
    if not columns:
        return vocab
    logits = [float(q @ F.linear(source_hidden[j].double(), c.key.weight.double(), c.key.bias.double()))
              / math.sqrt(h.shape[0]) for j in columns]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    probs = gate * vocab
    for j, w in zip(columns, weights):
        probs[source_ids[j]] += (1 - gate) * w / sum(weights)
    return probs


def reference_log_probs(model, method, source, prefix):
    """log P(. | source, prefix): one full forward over the hand-built sequence, then the brute-force mixture."""
    ids = [SP.cls, *source, SP.sep]
    n_src = len(ids)
    positions, key, query = list(range(n_src)), [0] * n_src, [0] * n_src
    fed = [SP.start, *prefix] if method == "causal" else list(prefix)
    for i, token in enumerate(fed):
        ids.append(token), positions.append(n_src + i), key.append(i + 1), query.append(i + 1)
    if method != "causal":
        ids.append(SP.mask), positions.append(n_src + len(prefix)), key.append(NEVER_VISIBLE)
        query.append(len(prefix))
    t = lambda x: torch.tensor([x])
    segments = [0] * n_src + [1] * (len(ids) - n_src)
    with torch.no_grad():
        hidden = model(t(ids), t(positions), t(segments), t(key), t(query))[0]
    return brute_force_probs(model, hidden[-1], hidden[:n_src], ids[:n_src]).log()


def test_a_fresh_copy_attention_starts_with_the_vocabulary_dominant():
    torch.manual_seed(0)
    model = UnifiedTransformer(ModelConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                           intermediate_size=64, copy_mechanism=True))
    assert model.copy.gate.bias.item() == pytest.approx(COPY_GATE_START)
    assert torch.sigmoid(model.copy.gate.bias).item() == pytest.approx(0.9)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("method", METHODS)
def test_training_loss_is_the_mixture_likelihood(method, eps):
    model = make()
    pairs = [Pair(source=s, target=[20 + i, 7, 21]) for i, s in enumerate(SOURCES)]
    batch = Packer(method, SP, target_mask_prob=0.5)(pairs, torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model(**batch.model_inputs())
        got = seq2seq_loss(model, hidden, batch.labels, eps, input_ids=batch.input_ids, copyable=batch.copyable)
    losses = []
    for b in range(len(pairs)):
        n_src = len(pairs[b].source) + 2
        source_ids = batch.input_ids[b, :n_src].tolist()
        for t in (batch.labels[b] != -100).nonzero()[:, 0].tolist():
            log_p = brute_force_probs(model, hidden[b, t], hidden[b, :n_src], source_ids).log()
            label = int(batch.labels[b, t])
            losses.append(-(1 - eps) * log_p[label] - eps * log_p.mean())
    assert float(got) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5, abs=1e-6)


def test_log_softmax_picks_gradient_is_exact():
    """The closed-form backward against finite differences (double precision), with repeated columns."""
    torch.manual_seed(0)
    logits = torch.randn(3, 11, dtype=torch.double, requires_grad=True)
    columns = torch.tensor([[0, 4, 4], [10, 1, 2], [5, 5, 5]])
    assert torch.autograd.gradcheck(lambda z: LogSoftmaxPicks.apply(z, columns), (logits,))
    assert torch.autograd.gradcheck(lambda z: LogSoftmaxPicks.apply(z, columns)[1], (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_softmax_picks_matches_autograd_composition(dtype):
    """Values and gradients equal those of log_softmax + gather + mean in fp32 (bf16 logits: same fp32 math)."""
    torch.manual_seed(1)
    logits = (torch.randn(5, 300) * 4).to(dtype).requires_grad_()
    columns = torch.randint(0, 300, (5, 7))
    weights, mean_weights = torch.randn(5, 7), torch.randn(5)
    picked, mean = LogSoftmaxPicks.apply(logits, columns)
    (picked * weights).sum().add((mean * mean_weights).sum()).backward()
    got = logits.grad.clone()
    logits.grad = None
    log_probs = torch.log_softmax(logits.float(), -1)
    ref_picked, ref_mean = log_probs.gather(1, columns), log_probs.mean(-1)
    (ref_picked * weights).sum().add((ref_mean * mean_weights).sum()).backward()
    assert got.dtype == dtype
    torch.testing.assert_close(picked, ref_picked, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got, logits.grad, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_mass_sources_never_copy_a_mask():
    batch = Packer("pseudo_masked", SP)([Pair(source=[13, 3, 15], target=[3, 15])], torch.Generator())
    assert batch.copyable[0].tolist()[:5] == [False, True, False, True, False]  # [CLS] 13 [MASK] 15 [SEP]
    assert not batch.copyable[0, 5:].any()  # target columns


@pytest.mark.parametrize("method", METHODS)
def test_decoder_scores_are_the_mixture_log_probs(method):
    model = make()
    decoder = Seq2SeqDecoder(model, SP, method)
    hyps = decoder.generate(SOURCES, SearchConfig(beam_size=1, max_tgt_length=6))
    for source, (hyp,) in zip(SOURCES, hyps):
        tokens = hyp.tokens + ([SP.sep] if hyp.finished else [])
        expected = sum(float(reference_log_probs(model, method, source, tokens[:i])[token])
                       for i, token in enumerate(tokens))
        assert hyp.log_prob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_equals_recomputation(method):
    decoder = Seq2SeqDecoder(make(seed=1), SP, method)
    for config in (SearchConfig(beam_size=1, max_tgt_length=8), SearchConfig(beam_size=4, max_tgt_length=8, nbest=4,
                                                                              length_penalty=0.6),
                   SearchConfig(do_sample=True, num_return_sequences=3, max_tgt_length=8, seed=5)):
        assert_cache_matches_recomputation(decoder, SOURCES, config)


def test_copying_reaches_source_words_the_vocabulary_head_cannot():
    """With the vocabulary head forced to put ~0 mass on the source's words, only copying can produce them."""
    model = make()
    with torch.no_grad():
        model.head.bias[5:20] = -50.0
        model.copy.gate.bias.fill_(-5.0)  # mostly copy
    (hyp,), = Seq2SeqDecoder(model, SP, "pseudo_masked").generate([[5, 7, 6]], SearchConfig(max_tgt_length=3,
                                                                                             min_len=3))
    assert set(hyp.tokens) <= {5, 6, 7}


def test_int8_keeps_the_copy_path_in_fp32():
    model = quantize_int8(make())
    assert all(type(m) is torch.nn.Linear for m in (model.copy.query, model.copy.key, model.copy.gate))
    assert not any(isinstance(m, Int8Linear) for m in model.copy.modules())


def test_checkpoint_round_trip_and_hf_loading(tmp_path):
    (tmp_path / "base").mkdir()
    base = write_tiny_bert(tmp_path / "base", WORDS)
    model, info = checkpoint.load_pretrained("bert", base, copy_mechanism=True)
    assert {n for n in info["fresh"]} >= {"copy.query.weight", "copy.key.weight", "copy.gate.bias"}
    assert not any(n.startswith("head.") for n in info["fresh"])  # the tiny BERT has its MLM head
    out = tmp_path / "ckpt"
    checkpoint.save_checkpoint(model, str(out), "bert", info["hf_config"], settings={"fine_tune": "pseudo_masked"})
    assert json.loads((out / "config.json").read_text())["copy_mechanism"] is True
    loaded, _ = checkpoint.load_finetuned(str(out))
    assert loaded.copy is not None
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    from transformers import AutoModelForMaskedLM
    _, loading = AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert loading["missing_keys"] in ([], set())
    assert {k.split(".")[0] for k in loading["unexpected_keys"]} == {"copy_attention"}


def test_a_copy_checkpoint_without_its_copy_weights_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    base = write_tiny_bert(tmp_path / "base", WORDS)
    model, info = checkpoint.load_pretrained("bert", base)
    out = tmp_path / "ckpt"
    checkpoint.save_checkpoint(model, str(out), "bert", info["hf_config"], settings={"fine_tune": "pseudo_masked"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "copy_mechanism": True}))
    with pytest.raises(checkpoint.CheckpointError, match="copy"):
        checkpoint.load_finetuned(str(out))


@pytest.mark.slow
def test_train_with_copy_then_decode_without_flags(tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "3", "--save_steps", "3",
                                 "--copy_mechanism")) == 0
    source = tmp_path / "test.jsonl"
    source.write_text(json.dumps({"src": "the cat sat"}) + "\n")
    subprocess.run([sys.executable, str(ROOT / "decode_seq2seq.py"), "--model_path", str(out / "ckpt-3"),
                    "--input_file", str(source), "--output_file", str(tmp_path / "pred.txt"), "--beam_size", "2"],
                   check=True, capture_output=True)
    assert len((tmp_path / "pred.txt").read_text().splitlines()) == 1
    # the flag defines the run: resuming without it is refused
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "4", "--save_steps", "4")) == 2


def test_python_api_and_int8_decode_a_copy_checkpoint_without_flags(tmp_path):
    from s2s_ft.data.reading import load_tokenizer, special_ids
    from s2s_ft.decoding.inference import load_decoder

    (tmp_path / "base").mkdir()
    base = write_tiny_bert(tmp_path / "base", WORDS)
    model, info = checkpoint.load_pretrained("bert", base, copy_mechanism=True)
    with torch.no_grad():
        model.copy.gate.bias.fill_(-4.0)  # mostly copying: the source's words must come out
        model.copy.query.weight.normal_(0, 0.3)
    tokenizer = load_tokenizer(base)
    special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
    out = tmp_path / "ckpt"
    from dataclasses import asdict
    checkpoint.save_checkpoint(model, str(out), "bert", info["hf_config"], tokenizer, {
        "fine_tune": "pseudo_masked", "max_source_seq_length": 12, "max_target_seq_length": 6,
        "special_ids": asdict(special)})
    for quantize in ("none", "int8"):
        decoder = load_decoder(str(out), device="cpu", quantize=quantize)
        assert decoder.decoder.model.copy is not None
        (text,) = decoder.decode_texts(["big red bird"], beam_size=2, max_tgt_length=4, min_len=3)
        assert set(text.split()) & {"big", "red", "bird"}, text


def test_training_trims_the_heap_every_period_and_around_checkpoints(tiny_bert, train_file, tmp_path, monkeypatch):
    from s2s_ft.training import memory
    calls = []
    monkeypatch.setenv("S2S_FT_TRIM_EVERY", "2")
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "run", "--num_training_steps", "5",
                                 "--save_steps", "5")) == 0
    if memory._glibc() is not None:
        assert len(calls) == 4  # after steps 2 and 4, and before and after writing the checkpoint of step 5
    import platform
    # glibc systems (the Linux CI) really trim; elsewhere the call is a no-op that says so
    assert memory.release_free_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_heap_trim_is_triggered_by_growth_of_the_resident_set(monkeypatch):
    from s2s_ft.training import memory
    if memory._glibc() is None:
        return
    resident = [1000.0]
    calls = []
    monkeypatch.delenv("S2S_FT_TRIM_EVERY", raising=False)
    monkeypatch.setattr(memory, "resident_mb", lambda: resident[0])

    def release():  # what the trim hands back
        calls.append(resident[0])
        resident[0] = 1050.0
        return True
    monkeypatch.setattr(memory, "release_free_memory", release)
    trimmer = memory.HeapTrimmer(margin_mb=256)
    trims = []
    for step, mb in enumerate([1100, 1250, 1257, 1900, 1200, 1300, 1457], start=1):
        resident[0] = mb
        trims.append(trimmer.after_step(step))
    # 1257 > 1000 + 256; 1900 > 1050 + 256; 1300 is within 1050 + 256, 1457 is not
    assert trims == [False, False, True, True, False, False, True]
    assert calls == [1257, 1900, 1457] and trimmer.trims == 3 and trimmer.floor_mb == 1050.0
    assert memory.resident_mb() == 1050.0
    monkeypatch.undo()
    assert memory.resident_mb() > 10  # the real /proc reading of this process
    assert not memory.HeapTrimmer(every=0).after_step(1)
