"""End-to-end: run_seq2seq.py and decode_seq2seq.py on a tiny BERT checkpoint built on the fly."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import train_args
from safetensors.torch import load_file

from s2s_ft.cli import decode, train
from s2s_ft.decoding import inference


@pytest.mark.parametrize("method", ["causal", "masked", "pseudo_masked"])
def test_training_loss_falls_and_checkpoint_is_an_hf_directory(tiny_bert, train_file, tmp_path, method):
    out = tmp_path / method
    assert train.main(train_args(tiny_bert, train_file, out, "--fine_tune", method, "--num_training_steps",
                                 "60", "--save_steps", "60", "--label_smoothing", "0")) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert len(log) == 60
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    # 60 steps on 7 pairs: causal ends near 0.37 x its start, masked (half the target corrupted) near 0.69
    assert last < 0.75 * first, (first, last)
    ckpt = out / "ckpt-60"
    assert {"config.json", "model.safetensors", "s2s_ft_settings.json", "training_state.pt"} <= set(os.listdir(ckpt))
    settings = json.load(open(ckpt / "s2s_ft_settings.json"))
    assert settings["fine_tune"] == method and settings["model_type"] == "bert"


def test_mask_way_alias_and_contradiction(tiny_bert, train_file, tmp_path, capsys):
    args = train.resolve_args(train.build_parser().parse_args(train_args(tiny_bert, train_file, tmp_path,
                                                                               "--mask_way", "v0")))
    assert args.fine_tune == "causal"
    code = train.main(train_args(tiny_bert, train_file, tmp_path, "--mask_way", "v1", "--fine_tune", "causal"))
    assert code == 2 and "--mask_way v1 means masked" in capsys.readouterr().err


def test_resume_after_losing_the_last_checkpoint_is_bit_identical(tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    base = train_args(tiny_bert, train_file, out, "--num_training_steps", "6", "--save_steps", "3")
    assert train.main(base) == 0
    straight = load_file(str(out / "ckpt-6" / "model.safetensors"))
    os.rename(out / "ckpt-6", tmp_path / "ckpt-6-straight")  # as if the run had died after step 3's save
    assert train.main(base) == 0  # resumes from ckpt-3
    resumed = load_file(str(out / "ckpt-6" / "model.safetensors"))
    assert [json.loads(line)["step"] for line in open(out / "train_log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_decode_cli_keeps_input_order_and_writes_nbest(tiny_bert, train_file, tmp_path):
    out = tmp_path / "model"
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "30",
                                 "--save_steps", "30")) == 0
    inputs = ["the cat sat on the big red mat", "a dog", "the tree is blue and the bird is red", "fish"]
    input_file = tmp_path / "in.jsonl"
    input_file.write_text("".join(json.dumps({"src": s}) + "\n" for s in inputs))
    text_out, jsonl_out = tmp_path / "pred.txt", tmp_path / "pred.jsonl"
    common = ["--model_path", str(out / "ckpt-*"), "--input_file", str(input_file), "--batch_size", "3",
              "--max_tgt_length", "6"]
    assert decode.main(common + ["--output_file", str(text_out), "--beam_size", "2"]) == 0
    lines = text_out.read_text().splitlines()
    assert len(lines) == len(inputs)
    decoder = inference.load_decoder(str(out / "ckpt-30"))
    one_by_one = [decoder.decode_texts([s], beam_size=2, max_tgt_length=6)[0] for s in inputs]
    assert lines == one_by_one
    assert decode.main(common + ["--output_file", str(jsonl_out), "--beam_size", "3", "--nbest", "3",
                                 "--output_format", "jsonl"]) == 0
    records = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert len(records) == len(inputs)
    for record in records:
        scores = [h["score"] for h in record["hyps"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("content, expected", [
    ('{"src": "a", "tgt": "b"}\n{"src": "a" "tgt"}\n', ":2: malformed JSON"),
    ('{"src": "a"}\n', ':1: missing "tgt"'),
    ('{"src": "", "tgt": "b"}\n', ':1: "src" is empty'),
    ('{"src": 3, "tgt": "b"}\n', ':1: "src" must be a non-empty string'),
    ('[1, 2]\n', ":1: expected a JSON object"),
    ('', "empty file"),
])
def test_bad_training_data_is_named_with_its_line(tiny_bert, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    code = train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1"))
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and expected in err, err


def test_non_utf8_line_is_named(tiny_bert, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"src": "a", "tgt": "b"}\n{"src": "\xff", "tgt": "b"}\n')
    assert train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1")) == 2
    assert f"{bad}:2: not valid UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["train", "decode", "serve"])
def test_unknown_log_level_is_a_usage_error(module, capsys):
    import importlib
    parser = importlib.import_module(f"s2s_ft.cli.{module}").build_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--log_level", "chatty"])
    assert stop.value.code == 2
    assert "unknown level 'chatty'" in capsys.readouterr().err
    from s2s_ft.cli.common import log_level
    assert log_level("warning") == "WARNING"
