"""MASS pre-training: span statistics, the packed layout of (masked sentence, fragment) pairs, the monolingual
reader, and an end-to-end pre-train -> resume -> fine-tune run on a tiny BERT built on the fly."""
from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from conftest import SPECIAL, write_tiny_bert
from safetensors.torch import load_file

from mass_objective import (
    MassConfig,
    fragment_length,
    mass_pair,
    mass_pairs,
    parse_mask_keep_rand,
    read_sentences,
    split_chunks,
)
from s2s_ft.cli import train
from s2s_ft.data.packing import IGNORE_INDEX, Packer
from s2s_ft.data.reading import DataError
from s2s_ft.model import checkpoint
from s2s_ft.model.transformer import attention_allowed

CLS, SEP, MASK, PAD = SPECIAL.cls, SPECIAL.sep, SPECIAL.mask, SPECIAL.pad
V = SPECIAL.vocab_size
pytestmark = pytest.mark.usefixtures("single_thread")


def sentence_of(m: int) -> list[int]:
    """m distinct ordinary ids (4..49), so a token's identity tells where it came from."""
    assert m <= V - 4
    return list(range(4, 4 + m))


def span_of(pair) -> tuple[int, int]:
    """(u, k) from the pair's positions: fragment token j sits at 1 + u + j."""
    return pair.target_positions[0] - 1, len(pair.target)


# -- spans ---------------------------------------------------------------------------------------------------
def test_pair_structure_over_many_samples():
    generator = torch.Generator().manual_seed(0)
    for m in range(1, 40):
        sentence = sentence_of(m)
        for _ in range(20):
            pair = mass_pair(sentence, SPECIAL, MassConfig(), generator)
            u, k = span_of(pair)
            assert k == fragment_length(m, 0.5) == max(1, round(0.5 * m))
            assert 0 <= u <= m - k
            assert pair.target == sentence[u:u + k]  # the fragment, in order
            assert pair.target_positions == [1 + u + j for j in range(k)]  # original positions behind [CLS]
            assert not pair.close_target and pair.num_target_tokens == k
            assert len(pair.source) == m  # length unchanged
            assert pair.source[:u] == sentence[:u] and pair.source[u + k:] == sentence[u + k:]
            assert not set(pair.target) & (set(sentence[:u]) | set(sentence[u + k:]))  # unmasked never predicted


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_mean_fragment_ratio(ratio):
    generator = torch.Generator().manual_seed(1)
    fractions = []
    for m in range(5, 45):
        pair = mass_pair(sentence_of(m), SPECIAL, MassConfig(ratio=ratio), generator)
        fractions.append(len(pair.target) / m)
    assert abs(sum(fractions) / len(fractions) - ratio) < 0.02


def _start_counts(mode: str, m: int, k: int, n: int) -> collections.Counter:
    ratio = k / m
    assert fragment_length(m, ratio) == k
    generator = torch.Generator().manual_seed(2)
    return collections.Counter(span_of(mass_pair(sentence_of(m), SPECIAL, MassConfig(ratio=ratio, span_position=mode),
                                                 generator))[0] for _ in range(n))


def _check_frequencies(counts, expected, n):
    assert set(counts) <= set(expected)
    for start, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[start] / n - p) < 5 * sd, (start, counts, expected)


def test_uniform_start_distribution():
    m, k, n = 10, 5, 3000
    counts = _start_counts("uniform", m, k, n)
    _check_frequencies(counts, {u: 1 / (m - k + 1) for u in range(m - k + 1)}, n)


def test_mass_start_distribution_pins_20_percent_at_each_end():
    m, k, n = 10, 5, 3000
    counts = _start_counts("mass", m, k, n)
    starts = m - k + 1
    expected = {u: 0.6 / starts for u in range(starts)}
    expected[0] += 0.2
    expected[m - k] += 0.2
    _check_frequencies(counts, expected, n)


@pytest.mark.parametrize("split", [(0.8, 0.1, 0.1), (0.5, 0.3, 0.2)])
def test_source_corruption_split_is_mask_keep_rand(split):
    generator = torch.Generator().manual_seed(3)
    config = MassConfig(mask_keep_rand=split)
    outcomes, n = collections.Counter(), 0
    sentence = sentence_of(30)
    for _ in range(300):
        pair = mass_pair(sentence, SPECIAL, config, generator)
        u, k = span_of(pair)
        for got, original in zip(pair.source[u:u + k], pair.target):
            outcomes["mask" if got == MASK else "kept" if got == original else "random"] += 1
            n += 1
    p_mask, p_keep, p_rand = split
    # a random draw can land on [MASK] or on the original token
    expected = {"mask": p_mask + p_rand / V, "kept": p_keep + p_rand / V, "random": p_rand * (1 - 2 / V)}
    for key, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(outcomes[key] / n - p) < 5 * sd + 1e-3, (key, outcomes, n)


def test_parse_and_validate_config():
    assert parse_mask_keep_rand("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_mask_keep_rand("1,0,0") == (1.0, 0.0, 0.0)
    for bad in ("0.8,0.1", "a,b,c", "0.5,0.5,0.5", "1.2,-0.1,-0.1"):
        with pytest.raises(ValueError):
            parse_mask_keep_rand(bad)
    for kwargs in ({"ratio": 0.0}, {"ratio": 1.5}, {"span_position": "middle"}):
        with pytest.raises(ValueError):
            MassConfig(**kwargs)


def test_single_token_fragment_is_masked_lm_of_one_token():
    sentence = sentence_of(10)
    config = MassConfig(ratio=0.01, mask_keep_rand=(1.0, 0.0, 0.0))
    generator = torch.Generator().manual_seed(4)
    for method in ("causal", "pseudo_masked"):
        for _ in range(10):
            pair = mass_pair(sentence, SPECIAL, config, generator)
            u, k = span_of(pair)
            assert k == 1 and pair.target == [sentence[u]]
            assert pair.source == sentence[:u] + [MASK] + sentence[u + 1:]
            batch = Packer(method, SPECIAL, corrupt=False)([pair])
            n_src = len(sentence) + 2
            predicting = n_src if method == "causal" else n_src + 1
            assert batch.input_ids[0, n_src].item() == (SPECIAL.start if method == "causal" else sentence[u])
            assert batch.input_ids[0, predicting].item() == (SPECIAL.start if method == "causal" else MASK)
            assert batch.labels[0].tolist() == [IGNORE_INDEX] * predicting + [sentence[u]] \
                + [IGNORE_INDEX] * (batch.labels.shape[1] - predicting - 1)
            assert batch.position_ids[0, predicting].item() == 1 + u  # the masked source column's position
            # the predicting token reads the whole (masked) source and nothing else but itself
            allowed = attention_allowed(batch.key_rank, batch.query_rank)[0, 0, predicting]
            assert allowed.nonzero().flatten().tolist() == list(range(n_src)) + [predicting]


def test_whole_sentence_fragment_is_a_left_to_right_lm_on_an_all_mask_source():
    sentence = sentence_of(7)
    pair = mass_pair(sentence, SPECIAL, MassConfig(ratio=1.0, mask_keep_rand=(1.0, 0.0, 0.0)),
                     torch.Generator().manual_seed(5))
    assert pair.source == [MASK] * 7 and pair.target == sentence
    assert pair.target_positions == list(range(1, 8))
    batch = Packer("causal", SPECIAL)([pair])
    assert batch.input_ids[0].tolist() == [CLS, *[MASK] * 7, SEP, SPECIAL.start, *sentence[:-1]]
    assert batch.labels[0, 9:].tolist() == sentence  # no closing [SEP] predicted
    assert batch.position_ids[0].tolist() == list(range(9)) + list(range(1, 8))


@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
def test_labels_exactly_at_the_fragment(method):
    generator = torch.Generator().manual_seed(6)
    sentences = [sentence_of(m) for m in (3, 12, 7, 1, 20)]
    pairs = mass_pairs(sentences, SPECIAL, MassConfig(), generator)
    batch = Packer(method, SPECIAL, target_mask_prob=0.3)(pairs, generator)
    assert batch.num_predicted == sum(len(p.target) for p in pairs)
    for b, (sentence, pair) in enumerate(zip(sentences, pairs)):
        u, k = span_of(pair)
        n_src = len(sentence) + 2
        assert batch.input_ids[b, :n_src].tolist() == [CLS, *pair.source, SEP]
        first = n_src if method == "causal" else n_src + k  # pseudo tokens follow the real fragment
        labels = batch.labels[b].tolist()
        assert labels[first:first + k] == sentence[u:u + k]
        assert all(label == IGNORE_INDEX for i, label in enumerate(labels) if not first <= i < first + k)
        # predictions sit at the fragment's original positions, the same as the source columns they replace
        assert batch.position_ids[b, first:first + k].tolist() == batch.position_ids[b, 1 + u:1 + u + k].tolist()
        used = n_src + k * (1 if method == "causal" else 2)
        assert batch.input_ids[b, used:].eq(PAD).all()  # nothing else was laid out (no closing [SEP])
        if method == "causal":
            assert batch.input_ids[b, n_src:n_src + k].tolist() == [SPECIAL.start, *sentence[u:u + k - 1]]
        # fragment token j reads the whole source and fragment tokens < j (causal: its input <= j)
        allowed = attention_allowed(batch.key_rank, batch.query_rank)[b, 0]
        for j in range(k):
            seen = allowed[first + j].nonzero().flatten().tolist()
            expected = list(range(n_src)) + [n_src + i for i in range(j + (method == "causal"))]
            if method == "pseudo_masked":
                expected.append(first + j)
            assert seen == expected


@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
def test_full_length_target_feeds_masks_and_predicts_only_the_fragment(method):
    """--mass_full_target (the paper's padded decoder): the same draws give the same source and the same labelled
    fragment; the target part additionally holds [MASK] fillers at every other sentence position, unlabelled."""
    sentences = [sentence_of(m) for m in (3, 12, 7, 1, 20)]
    short = mass_pairs(sentences, SPECIAL, MassConfig(), torch.Generator().manual_seed(8))
    full = mass_pairs(sentences, SPECIAL, MassConfig(full_target=True), torch.Generator().manual_seed(8))
    short_batch = Packer(method, SPECIAL, corrupt=False)(short)
    full_batch = Packer(method, SPECIAL, corrupt=False)(full)
    assert full_batch.num_predicted == short_batch.num_predicted == sum(len(p.target) for p in short)
    for b, (sentence, fragment_pair, pair) in enumerate(zip(sentences, short, full)):
        m, (u, k) = len(sentence), span_of(fragment_pair)
        assert pair.source == fragment_pair.source
        assert pair.target == [MASK] * u + sentence[u:u + k] + [MASK] * (m - u - k)
        assert pair.target_positions == list(range(1, m + 1)) and pair.num_predicted_targets == k
        n_src = m + 2
        first = n_src if method == "causal" else n_src + m
        labels = full_batch.labels[b].tolist()
        assert labels[first + u:first + u + k] == sentence[u:u + k]
        assert all(label == IGNORE_INDEX for i, label in enumerate(labels) if not first + u <= i < first + u + k)
        assert full_batch.position_ids[b, first:first + m].tolist() == list(range(1, m + 1))
        if method == "causal":  # fragment token 0 reads the [MASK] before it (or the start token at u = 0)
            assert full_batch.input_ids[b, first + u] == (MASK if u else SPECIAL.start)


def test_closing_token_is_still_appended_by_default():
    from s2s_ft.data.packing import Pair

    pair = Pair([10], [20, 21])
    assert pair.close_target and pair.num_target_tokens == 3
    assert Packer("causal", SPECIAL)([pair]).labels[0, 3:].tolist() == [20, 21, SEP]
    with pytest.raises(ValueError):
        Packer("causal", SPECIAL)([Pair([10], [], close_target=False)])


# -- monolingual reader ----------------------------------------------------------------------------------------
class WhitespaceTokenizer:
    """Every word is one id (its length + 4); enough for the reader, which only calls the tokenizer."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[4 + len(word) for word in text.split()] for text in texts]}

    def convert_tokens_to_ids(self, tokens):
        return [4 + len(token) for token in tokens]


def test_split_chunks_balanced():
    assert split_chunks(list(range(5)), 5) == [list(range(5))]
    assert split_chunks(list(range(11)), 5) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]
    for n in range(1, 40):
        chunks = split_chunks(list(range(n)), 6)
        assert sum(chunks, []) == list(range(n)) and max(map(len, chunks)) <= 6
        assert len(chunks) == -(-n // 6) and max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_read_text_and_jsonl(tmp_path):
    text = tmp_path / "mono.txt"
    text.write_text("a bb ccc\n\n  d  \n" + " ".join(["x"] * 11) + "\n")
    sentences, stats = read_sentences(str(text), WhitespaceTokenizer(), 5)
    assert sentences[:2] == [[5, 6, 7], [5]]
    assert [len(s) for s in sentences[2:]] == [3, 4, 4]
    assert (stats.lines, stats.sentences, stats.split_lines) == (3, 5, 1)
    jsonl = tmp_path / "mono.jsonl"
    jsonl.write_text(json.dumps({"text": "a bb"}) + "\n" + json.dumps({"text": ["ccc", "d"], "lang": "de"}) + "\n")
    sentences, _ = read_sentences(str(jsonl), WhitespaceTokenizer(), 5)
    assert sentences == [[5, 6], [7, 5]]


@pytest.mark.parametrize("name, content, expected", [
    ("m.jsonl", '{"text": "a"}\n{"txt": "b"}\n', ':2: missing "text"'),
    ("m.jsonl", '{"text": "a"}\n{"text": ""}\n', ':2: "text" is empty'),
    ("m.jsonl", '{"text": "a"}\n{"text": 3}\n', ':2: "text" must be a non-empty string'),
    ("m.jsonl", '{"text": "a"}\n{"text" "b"}\n', ":2: malformed JSON"),
    ("m.jsonl", "\n", 'empty file (expected JSON lines with a "text" field)'),
    ("m.txt", "\n \n", "empty file (expected one sentence a line)"),
])
def test_bad_monolingual_lines_are_named(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_sentences(str(path), WhitespaceTokenizer(), 8)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_non_utf8_and_skipped_lines(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(b"a b\n\xff c\n")
    with pytest.raises(DataError, match=r"m\.txt:2: not valid UTF-8"):
        read_sentences(str(path), WhitespaceTokenizer(), 8)
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a"}\n{"nope": 1}\n{"text": "b c"}\n')
    sentences, stats = read_sentences(str(path), WhitespaceTokenizer(), 8, skip_bad_lines=True)
    assert sentences == [[5], [5, 5]] and stats.skipped == 1


# -- end to end ----------------------------------------------------------------------------------------------
WORDS = "the a cat dog sat ran on mat big small red blue der die das hund katze lief auf matte".split()


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory):
    """A BERT config.json + WordPiece tokenizer, no weights: MASS starts from scratch."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-scratch"), WORDS, weights=False)


@pytest.fixture(scope="module")
def mono_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mono") / "en_de.txt"
    lines = ["the cat sat on the mat", "a big dog ran", "der hund lief auf die matte", "die katze",
             "the small red cat sat on a blue mat and the big dog ran on the mat", "das"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def mass_args(config_dir, train_file, output_dir, *extra):
    return ["--model_type", "bert", "--config_name", config_dir, "--tokenizer_name", config_dir,
            "--train_file", train_file, "--output_dir", str(output_dir), "--objective", "mass",
            "--max_source_seq_length", "12", "--max_target_seq_length", "8", "--per_device_train_batch_size", "3",
            "--learning_rate", "3e-3", "--logging_steps", "1", "--mass_span_position", "mass"] + list(extra)


def test_mass_pretraining_resumes_exactly_and_fine_tunes(tiny_config_dir, mono_file, tmp_path, capsys):
    out = tmp_path / "mass"
    base = mass_args(tiny_config_dir, mono_file, out, "--fine_tune", "causal", "--num_training_steps", "4",
                     "--save_steps", "2")
    assert train.main(base) == 0
    ckpt = out / "ckpt-4"
    settings = json.load(open(ckpt / "s2s_ft_settings.json"))
    assert settings["objective"] == "mass" and settings["fine_tune"] == "causal"
    assert settings["mass"] == {"ratio": 0.5, "mask_keep_rand": [0.8, 0.1, 0.1], "span_position": "mass",
                                "full_target": False}
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert len(log) == 4 and all(r["loss"] > 0 for r in log)

    # resume from ckpt-2 after losing ckpt-4: bit-identical weights (spans are drawn from (seed, counter))
    straight = load_file(str(ckpt / "model.safetensors"))
    os.rename(ckpt, tmp_path / "ckpt-4-straight")
    assert train.main(base) == 0
    resumed = load_file(str(ckpt / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    # continuing the same output_dir with another objective is refused
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in
                             [("the cat sat", "die katze"), ("a dog ran", "der hund lief")]))
    capsys.readouterr()
    wrong = base[:base.index("--objective")] + base[base.index("--objective") + 2:]
    wrong[wrong.index("--train_file") + 1] = str(pairs)
    assert train.main(wrong + ["--num_training_steps", "6"]) == 2
    assert "--objective mass" in capsys.readouterr().err

    # the MASS checkpoint is an ordinary HF directory: every weight loads, then seq2seq fine-tuning runs from it
    _, info = checkpoint.load_pretrained("bert", str(ckpt))
    assert info["fresh"] == [] and not info["fresh_head"]
    tuned = tmp_path / "tuned"
    assert train.main(["--model_type", "bert", "--model_name_or_path", str(ckpt), "--train_file", str(pairs),
                       "--output_dir", str(tuned), "--max_source_seq_length", "12", "--max_target_seq_length",
                       "8", "--per_device_train_batch_size", "2", "--num_training_steps", "2",
                       "--logging_steps", "1"]) == 0
    settings = json.load(open(tuned / "ckpt-2" / "s2s_ft_settings.json"))
    assert settings["objective"] == "seq2seq" and "mass" not in settings


def test_mass_pseudo_masked_loss_falls(tiny_config_dir, mono_file, tmp_path):
    out = tmp_path / "pm"
    assert train.main(mass_args(tiny_config_dir, mono_file, out, "--num_training_steps", "30",
                                "--save_steps", "30", "--label_smoothing", "0")) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < first, (first, last)


def test_full_target_pretraining_runs_and_counts_only_fragment_tokens(tiny_config_dir, mono_file, tmp_path):
    runs = {}
    for name, extra in (("short", []), ("full", ["--mass_full_target"])):
        out = tmp_path / name
        assert train.main(mass_args(tiny_config_dir, mono_file, out, "--fine_tune", "causal",
                                    "--num_training_steps", "3", "--save_steps", "3", *extra)) == 0
        runs[name] = [json.loads(line) for line in open(out / "train_log.jsonl")]
        assert json.load(open(out / "ckpt-3" / "s2s_ft_settings.json"))["mass"]["full_target"] == (name == "full")
    for short, full in zip(runs["short"], runs["full"]):
        # same sentences and spans: the same predicted tokens, more tokens laid out with the full-length target
        assert short["target_tokens_per_s"] / short["tokens_per_s"] > full["target_tokens_per_s"] / full["tokens_per_s"]


def test_bad_mass_flags_are_one_line_errors(tiny_config_dir, mono_file, tmp_path, capsys):
    code = train.main(mass_args(tiny_config_dir, mono_file, tmp_path / "x", "--mass_mask_keep_rand", "0.8,0.1"))
    assert code == 2 and "mask,keep,rand" in capsys.readouterr().err
