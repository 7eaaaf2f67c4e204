"""Bad-input battery for both CLIs (and the evaluator): every user error is one line ``error: ...`` naming the file
(and line) and what was expected, with a non-zero exit status and no traceback; ``--skip_bad_lines`` counts and
skips instead. A few cases run the real scripts in a subprocess to check that no 'Traceback' reaches stderr."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from conftest import one_error_line, train_args, trained_checkpoint

from s2s_ft.cli import decode, evaluate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = '{"src": "the cat sat", "tgt": "who sat ?"}\n'


@pytest.fixture(scope="module")
def trained(tiny_bert, train_file, tmp_path_factory):
    return trained_checkpoint(tiny_bert, train_file, tmp_path_factory, 2)


# ---------------------------------------------------------------------------------------------------- training
TRAIN_DATA_CASES = [
    ("malformed-json", GOOD + '{"src": "a" "tgt"}\n', ":2: malformed JSON"),
    ("missing-tgt", '{"src": "a"}\n', ':1: missing "tgt"'),
    ("missing-src", '{"tgt": "a"}\n', ':1: missing "src"'),
    ("src-number", '{"src": 3, "tgt": "b"}\n', ':1: "src" must be a non-empty string or a list of word-piece'),
    ("tgt-list-of-ints", '{"src": "a", "tgt": [1, 2]}\n', ':1: "tgt" must be a non-empty string'),
    ("empty-src", '{"src": "", "tgt": "b"}\n', ':1: "src" is empty'),
    ("blank-tgt", GOOD + '{"src": "a", "tgt": "   "}\n', ':2: "tgt" is empty'),
    ("tokenises-to-nothing", GOOD + '{"src": "\\u0000\\u0001", "tgt": "a"}\n', ':2: "src" tokenises to nothing'),
    ("not-an-object", "[1, 2]\n", ":1: expected a JSON object, got list"),
    ("empty-file", "", "empty file"),
    ("blank-lines-only", "\n  \n\n", "empty file"),
]


@pytest.mark.parametrize("content, expected", [c[1:] for c in TRAIN_DATA_CASES], ids=[c[0] for c in TRAIN_DATA_CASES])
def test_train_bad_data(tiny_bert, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1")) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and expected in line, line


def test_train_non_utf8(tiny_bert, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD.encode() + b'{"src": "\xff\xfe", "tgt": "b"}\n')
    assert train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1")) == 2
    assert f"{bad}:2: not valid UTF-8" in one_error_line(capsys)


def test_train_missing_file(tiny_bert, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert train.main(train_args(tiny_bert, str(missing), tmp_path / "out", "--num_training_steps", "1")) == 2
    assert f"{missing}: file not found" in one_error_line(capsys)


def test_train_skip_bad_lines_counts_and_reports(tiny_bert, tmp_path, caplog):
    bad = tmp_path / "mixed.jsonl"
    bad.write_bytes(GOOD.encode() + b'{"src": "a" "tgt"}\n' + b'{"src": "\xff"}\n' + b'{"src": "a"}\n'
                    + b'[1]\n' + GOOD.encode())
    with caplog.at_level(logging.WARNING):
        assert train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1",
                                     "--skip_bad_lines")) == 0
    message = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "skipped 4 bad lines" in message and f"{bad}:2: malformed JSON" in message
    assert f"{bad}:3: not valid UTF-8" in message


def test_train_skip_bad_lines_with_nothing_left(tiny_bert, tmp_path, capsys):
    bad = tmp_path / "allbad.jsonl"
    bad.write_text('{"src": "a"}\n{oops\n')
    assert train.main(train_args(tiny_bert, str(bad), tmp_path / "out", "--num_training_steps", "1",
                                 "--skip_bad_lines")) == 2
    assert f"{bad}: no usable examples" in one_error_line(capsys)


def test_train_truncation_is_counted(tiny_bert, tmp_path, caplog):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"src": " ".join(["the cat"] * 20), "tgt": " ".join(["a dog"] * 10)}) + "\n" + GOOD)
    with caplog.at_level(logging.WARNING):
        assert train.main(train_args(tiny_bert, str(data), tmp_path / "out", "--num_training_steps", "1")) == 0
    assert any("truncated 1 sources to 12 tokens and 1 targets to 8 tokens" in r.getMessage() for r in caplog.records)


def test_mass_text_bad_lines(tiny_bert, tmp_path, capsys, caplog):
    mono = tmp_path / "mono.txt"
    mono.write_bytes(b"the cat sat\n\xff\xfe\nthe dog ran\n")
    common = ["--objective", "mass", "--fine_tune", "causal", "--num_training_steps", "1"]
    assert train.main(train_args(tiny_bert, str(mono), tmp_path / "o1", *common)) == 2
    assert f"{mono}:2: not valid UTF-8" in one_error_line(capsys)
    with caplog.at_level(logging.WARNING):
        assert train.main(train_args(tiny_bert, str(mono), tmp_path / "o2", *common, "--skip_bad_lines")) == 0
    assert any("skipped 1 bad lines" in r.getMessage() for r in caplog.records)


TRAIN_FLAG_CASES = [
    ("fp16-on-cpu", ["--fp16"], "--precision fp16 needs a GPU"),
    ("fp16-vs-bf16", ["--fp16", "--precision", "bf16"], "--fp16 contradicts --precision bf16"),
    ("mask-way-contradiction", ["--mask_way", "v1", "--fine_tune", "causal"], "--mask_way v1 means masked"),
    ("save-steps-0", ["--save_steps", "0"], "--save_steps must be >= 1"),
    ("logging-steps-0", ["--logging_steps", "0"], "--logging_steps must be >= 1"),
    ("save-total-limit-0", ["--save_total_limit", "0"], "--save_total_limit must be >= 1"),
    ("max-bad-steps-0", ["--max_bad_steps", "0"], "--max_bad_steps must be >= 1"),
    ("batch-0", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1"),
    ("negative-lr", ["--learning_rate", "-1"], "--learning_rate must be >= 0"),
    ("zero-steps", ["--num_training_steps", "0"], "nothing to train"),
    ("short-source", ["--max_source_seq_length", "2"], "--max_source_seq_length must be >= 3"),
    ("bad-mass-probs", ["--objective", "mass", "--mass_mask_keep_rand", "0.5,0.5,0.5"], "--mass_*"),
]


@pytest.mark.parametrize("extra, expected", [c[1:] for c in TRAIN_FLAG_CASES], ids=[c[0] for c in TRAIN_FLAG_CASES])
def test_train_contradictory_flags(tiny_bert, train_file, tmp_path, capsys, extra, expected):
    code = train.main(train_args(tiny_bert, train_file, tmp_path / "out", "--num_training_steps", "1", *extra))
    line = one_error_line(capsys)
    assert code == 2 and expected in line, line


def broken_copy(source: str, target, drop=(), corrupt=(), settings=None) -> str:
    shutil.copytree(source, target)
    for name in drop:
        os.remove(os.path.join(target, name))
    for name in corrupt:
        with open(os.path.join(target, name), "wb") as handle:
            handle.write(b"not what it should be")
    if settings:
        path = os.path.join(target, "s2s_ft_settings.json")
        with open(path) as handle:
            value = json.load(handle)
        with open(path, "w") as handle:
            json.dump({**value, **settings}, handle)
    return str(target)


def test_train_checkpoint_dirs(tiny_bert, train_file, tmp_path, capsys):
    def run(model_dir, *extra, model_type="bert"):
        args = train_args(model_dir, train_file, tmp_path / "out", "--num_training_steps", "1", *extra)
        args[args.index("--model_type") + 1] = model_type
        code = train.main(args)
        return code, one_error_line(capsys)

    code, line = run(str(tmp_path / "missing"))
    assert code == 2 and "checkpoint directory not found" in line
    code, line = run(tiny_bert, model_type="roberta")
    assert code == 2 and tiny_bert in line and "roberta" in line.lower()
    no_weights = broken_copy(tiny_bert, tmp_path / "noweights", drop=["model.safetensors"])
    code, line = run(no_weights)
    assert code == 2 and f"{no_weights}: no weights file" in line
    corrupt = broken_copy(tiny_bert, tmp_path / "corrupt", corrupt=["model.safetensors"])
    code, line = run(corrupt)
    assert code == 2 and "cannot load as safetensors" in line
    code, line = run(tiny_bert, "--tokenizer_name", str(tmp_path / "notok"))
    assert code == 2 and "tokenizer directory not found" in line


def test_train_output_dir_is_a_file(tiny_bert, train_file, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "out", "--num_training_steps", "1")) == 2
    assert str(tmp_path / "out") in one_error_line(capsys)


def test_train_resume_from_corrupted_state(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    base = train_args(tiny_bert, train_file, out, "--num_training_steps", "2", "--save_steps", "1")
    assert train.main(base) == 0
    (out / "ckpt-2" / "training_state.pt").write_bytes(b"\x00" * 10)
    assert train.main(base[:-4] + ["--num_training_steps", "3", "--save_steps", "1"]) == 2
    line = one_error_line(capsys)
    assert f"{out / 'ckpt-2'}: cannot resume from it" in line and "move it out" in line


# ---------------------------------------------------------------------------------------------------- decoding
def run_decode(trained, input_file, output_file, *extra):
    return decode.main(["--model_path", trained, "--input_file", str(input_file), "--output_file",
                        str(output_file), "--max_tgt_length", "4", *extra])


DECODE_DATA_CASES = [
    ("malformed-json", '{"src": "a"}\n{"src": \n', ":2: malformed JSON"),
    ("missing-src", '{"src": "a"}\n{"text": "a"}\n', ':2: missing "src"'),
    ("src-number", '{"src": 7}\n', ':1: "src" must be a non-empty string'),
    ("empty-src", '{"src": ""}\n', ':1: "src" is empty'),  # the same message as training's
    ("tokenises-to-nothing", '{"src": "a"}\n{"src": "\\u0000"}\n', ':2: "src" tokenises to nothing'),
    ("not-an-object", '"a"\n', ":1: expected a JSON object, got str"),
    ("empty-file", "", 'empty file (expected JSON lines with a "src" field)'),  # decoding needs no "tgt"
    ("blank-lines-only", "\n \n", 'empty file (expected JSON lines with a "src" field)'),
]


@pytest.mark.parametrize("content, expected", [c[1:] for c in DECODE_DATA_CASES], ids=[c[0] for c in DECODE_DATA_CASES])
def test_decode_bad_data(trained, tmp_path, capsys, content, expected):
    bad = tmp_path / "in.jsonl"
    bad.write_text(content)
    assert run_decode(trained, bad, tmp_path / "out.txt") == 2
    line = one_error_line(capsys)
    assert str(bad) in line and expected in line, line
    assert not (tmp_path / "out.txt").exists()


def test_decode_non_utf8_and_missing_input(trained, tmp_path, capsys):
    bad = tmp_path / "in.jsonl"
    bad.write_bytes(b'{"src": "a"}\n{"src": "\xff"}\n')
    assert run_decode(trained, bad, tmp_path / "out.txt") == 2
    assert f"{bad}:2: not valid UTF-8" in one_error_line(capsys)
    assert run_decode(trained, tmp_path / "nope.jsonl", tmp_path / "out.txt") == 2
    assert "nope.jsonl: file not found" in one_error_line(capsys)


def test_decode_skip_bad_lines_keeps_output_aligned(trained, tmp_path, caplog):
    good = ["the cat sat", "a dog ran", "the big red bird"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b'{"src": "the cat sat"}\n{"src": 3}\n{"src": "a dog ran"}\n{broken\n\xff\n'
                      b'{"src": "\\u0000"}\n{"src": "the big red bird"}\n')
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"src": s}) + "\n" for s in good))
    with caplog.at_level(logging.WARNING):
        assert run_decode(trained, mixed, tmp_path / "mixed.txt", "--skip_bad_lines") == 0
    assert run_decode(trained, clean, tmp_path / "clean.txt") == 0
    lines = (tmp_path / "mixed.txt").read_text().split("\n")[:-1]
    expected = (tmp_path / "clean.txt").read_text().split("\n")[:-1]
    assert len(lines) == 7
    assert [lines[0], lines[2], lines[6]] == expected and lines[1] == lines[3] == lines[4] == lines[5] == ""
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 bad lines" in messages and f"{mixed}:2:" in messages  # while reading
    assert "skipped 1 bad lines" in messages and f"{mixed}:6: \"src\" tokenises to nothing" in messages


DECODE_FLAG_CASES = [
    ("nbest-over-beam", ["--nbest", "3", "--beam_size", "2", "--output_format", "jsonl"], "--nbest 3 exceeds"),
    ("nbest-text", ["--nbest", "2", "--beam_size", "2"], "--nbest > 1 needs --output_format jsonl"),
    ("fp16-on-cpu", ["--fp16"], "--precision fp16 needs a GPU"),
    ("cuda-on-cpu", ["--device", "cuda"], "no GPU is available"),
    ("bad-device", ["--device", "tpu9"], "not a device"),
    ("beam-0", ["--beam_size", "0"], "--beam_size must be >= 1"),
    ("batch-0", ["--batch_size", "0"], "--batch_size must be >= 1"),
    ("min-len-over-max", ["--min_len", "9"], "--min_len 9 exceeds --max_tgt_length 4"),
    ("max-seq-too-small", ["--max_seq_length", "5"], "--max_seq_length 5 leaves 1 source positions"),
    ("resume-chunk-0", ["--resume", "--resume_chunk", "0"], "--resume_chunk must be >= 1"),
    ("forbid-ignore-word-oov", ["--forbid_ignore_word", ".|zebra|[UNK]"],  # it would silently become [UNK]
     "--forbid_ignore_word: zebra is not a token of"),
]


@pytest.mark.parametrize("extra, expected", [c[1:] for c in DECODE_FLAG_CASES], ids=[c[0] for c in DECODE_FLAG_CASES])
def test_decode_contradictory_flags(trained, tmp_path, capsys, extra, expected):
    source = tmp_path / "in.jsonl"
    source.write_text('{"src": "the cat"}\n')
    if "cuda" in extra and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    assert run_decode(trained, source, tmp_path / "out.txt", *extra) == 2
    line = one_error_line(capsys)
    assert expected in line, line


def test_decode_checkpoint_and_output_paths(trained, tiny_bert, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"src": "the cat"}\n')
    out = tmp_path / "out.txt"
    cases = [
        (str(tmp_path / "missing"), out, "checkpoint directory not found"),
        (str(tmp_path / "nothing-*"), out, "no checkpoint matches"),
        (tiny_bert, out, "s2s-ft settings not found"),  # a pretrained dir, not a fine-tuned checkpoint
        (broken_copy(trained, tmp_path / "noweights", drop=["model.safetensors"]), out, "no weights file"),
        (broken_copy(trained, tmp_path / "family", settings={"model_type": "roberta"}), out, "roberta"),
        (broken_copy(trained, tmp_path / "notok", drop=[n for n in os.listdir(trained) if n.startswith(
            ("tokenizer", "vocab", "special_tokens"))]), out, "no tokenizer files"),
        (trained, tmp_path / "no-such-dir" / "out.txt", "no-such-dir does not exist"),
        (trained, source, "refusing to overwrite the input"),
    ]
    for model_path, output, expected in cases:
        assert decode.main(["--model_path", model_path, "--input_file", str(source), "--output_file",
                            str(output)]) == 2, model_path
        line = one_error_line(capsys)
        assert expected in line, (model_path, line)


# ---------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_bad_inputs(tmp_path, capsys):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.jsonl"
    hyp.write_text("a\nb\n")
    ref.write_text('{"tgt": "a"}\n')
    assert evaluate.main(["--hyp", str(hyp), "--ref", str(ref)]) == 2
    assert f"line counts differ: {hyp} has 2 hypotheses, {ref} has 1" in one_error_line(capsys)
    hyp.write_text("a\n")
    assert evaluate.main(["--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu,foo"]) == 2
    assert "unknown metric(s) foo" in one_error_line(capsys)
    hyp.write_text("a\nb\n")
    ref.write_text('{"tgt": "a"}\n{"tgt": \n')
    assert evaluate.main(["--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu"]) == 2
    assert f"{ref}:2: malformed JSON" in one_error_line(capsys)
    hyp.write_bytes(b"a\n\xff\n")
    assert evaluate.main(["--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu"]) == 2
    assert f"{hyp}: not valid UTF-8" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------- real scripts
@pytest.mark.slow
def test_real_scripts_print_no_traceback(tiny_bert, trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + '{"src": "a" "tgt"}\n')
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD)
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a\nb\n")
    cases = [
        (["run_seq2seq.py", *train_args(tiny_bert, str(bad), tmp_path / "o1", "--num_training_steps", "1")],
         f"{bad}:2: malformed JSON"),
        (["run_seq2seq.py", *train_args(tiny_bert, str(good), tmp_path / "o2", "--fp16")], "needs a GPU"),
        (["run_seq2seq.py", *train_args(str(tmp_path / "nomodel"), str(good), tmp_path / "o3")],
         "checkpoint directory not found"),
        (["decode_seq2seq.py", "--model_path", trained, "--input_file", str(bad), "--output_file",
          str(tmp_path / "p.txt")], f"{bad}:2: malformed JSON"),
        (["decode_seq2seq.py", "--model_path", trained, "--input_file", str(good), "--output_file",
          str(tmp_path / "nodir" / "p.txt")], "does not exist"),
        (["-m", "s2s_ft.cli.evaluate", "--hyp", str(hyp), "--ref", str(good)], "line counts differ"),
    ]
    for argv, expected in cases:
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
