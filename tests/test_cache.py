"""Tokenised-feature cache (--cache_dir): reused without tokenising, keyed on data/tokenizer/lengths, rebuilt when
unreadable."""
from __future__ import annotations

import glob
import logging
import os

import pytest
from conftest import train_args

import s2s_ft.data.reading
import s2s_ft.training.mass_sentences
from s2s_ft.cli import train
from s2s_ft.data.cache import cache_key, key_hash


def refuse_to_tokenize(*args, **kwargs):
    raise AssertionError("tokenised although a cache exists")


def test_second_run_reads_the_cache(tiny_bert, train_file, tmp_path, monkeypatch):
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "a", "--num_training_steps", "1")) == 0
    [cached] = glob.glob(str(tmp_path / "a" / "cache" / "features-*.pt"))  # default: <output_dir>/cache
    monkeypatch.setattr(s2s_ft.data.reading, "tokenize_sides", refuse_to_tokenize)
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "b", "--num_training_steps", "1",
                                 "--cache_dir", str(tmp_path / "a" / "cache"))) == 0
    with pytest.raises(AssertionError, match="tokenised although"):  # another key: it must tokenise
        train.main(train_args(tiny_bert, train_file, tmp_path / "c", "--num_training_steps", "1",
                              "--cache_dir", str(tmp_path / "a" / "cache"), "--max_target_seq_length", "7"))


def test_mass_sentences_are_cached(tiny_bert, tmp_path, monkeypatch):
    mono = tmp_path / "mono.txt"
    mono.write_text("the cat sat on the mat\na dog ran\nthe big red bird\n")
    args = ["--objective", "mass", "--fine_tune", "causal", "--max_source_seq_length", "12",
            "--max_target_seq_length", "8", "--num_training_steps", "1", "--cache_dir", str(tmp_path / "cache")]
    base = ["--model_type", "bert", "--model_name_or_path", tiny_bert, "--train_file", str(mono)]
    assert train.main(base + ["--output_dir", str(tmp_path / "a")] + args) == 0
    monkeypatch.setattr(s2s_ft.training.mass_sentences, "tokenize_sides", refuse_to_tokenize)
    assert train.main(base + ["--output_dir", str(tmp_path / "b")] + args) == 0


def test_corrupt_cache_is_ignored_and_rebuilt(tiny_bert, train_file, tmp_path, caplog):
    args = train_args(tiny_bert, train_file, tmp_path / "a", "--num_training_steps", "1")
    assert train.main(args) == 0
    [cached] = glob.glob(str(tmp_path / "a" / "cache" / "features-*.pt"))
    with open(cached, "r+b") as handle:
        handle.truncate(100)
    with caplog.at_level(logging.WARNING, logger="s2s_ft"):
        assert train.main(train_args(tiny_bert, train_file, tmp_path / "b", "--num_training_steps", "1",
                                     "--cache_dir", str(tmp_path / "a" / "cache"))) == 0
    assert "ignoring tokenised-feature cache" in caplog.text
    assert os.path.getsize(cached) > 100  # rewritten


def test_key_changes_with_data_lengths_and_tokenizer(tiny_bert, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"src": "a", "tgt": "b"}\n')
    settings = dict(objective="seq2seq", max_source_seq_length=12, max_target_seq_length=8, skip_bad_lines=False)
    first = key_hash(cache_key(str(data), tiny_bert, **settings))
    assert key_hash(cache_key(str(data), tiny_bert, **settings)) == first
    assert key_hash(cache_key(str(data), tiny_bert, **{**settings, "max_source_seq_length": 13})) != first
    assert key_hash(cache_key(str(data), tiny_bert, **{**settings, "objective": "mass"})) != first
    data.write_text('{"src": "a", "tgt": "c"}\n{"src": "a", "tgt": "b"}\n')
    assert key_hash(cache_key(str(data), tiny_bert, **settings)) != first
    other_tokenizer = tmp_path / "tok"
    other_tokenizer.mkdir()
    (other_tokenizer / "vocab.txt").write_text("[PAD]\n[UNK]\nx\n")
    assert cache_key(str(data), str(other_tokenizer), **settings)["tokenizer"] != \
        cache_key(str(data), tiny_bert, **settings)["tokenizer"]
