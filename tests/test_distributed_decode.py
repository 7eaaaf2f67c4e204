"""decode_seq2seq.py under torchrun (2 gloo ranks) writes the same output file, byte for byte, as one process: greedy,
beam with n-best JSONL, and a --resume run that a single process started and two ranks finish; and the decoder's
up-front check of the position budget."""
from __future__ import annotations

import json

import pytest
from conftest import launch, random_weights_checkpoint

from s2s_ft.cli import decode
from s2s_ft.decoding import inference

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()

# Mixed lengths; 9 decodable lines in batches of 2 make 5 batches: rank 0 decodes 3 of them, rank 1 two. The
# malformed line (skipped, empty output) and the blank line (no output) check that the output stays aligned.
SOURCES = ["the cat sat on the mat", "a dog", "the big red house is on the small tree and the bird sat on it",
           "fish", "who ran", "the blue bird", "a small red fish is in the big blue house", "tree",
           "what is the cat"]


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> str:
    """A fine-tuned-style checkpoint with random weights, larger than BERT's init so that hypotheses end early
    and at different lengths (finished sentences leave the batch)."""
    return random_weights_checkpoint(tmp_path_factory, 24, WORDS)


@pytest.fixture(scope="module")
def input_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "in.jsonl"
    records = [json.dumps({"src": s}) for s in SOURCES]
    path.write_text("\n".join(records[:4] + ["{bad", ""] + records[4:]) + "\n")
    return str(path)


def decode_args(checkpoint_dir, input_file, output, *extra):
    return ["--model_path", checkpoint_dir, "--input_file", input_file, "--output_file", str(output),
            "--batch_size", "2", "--skip_bad_lines", "--device", "cpu", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("search", [
    ["--beam_size", "1"],
    ["--beam_size", "3", "--nbest", "3", "--output_format", "jsonl", "--length_penalty", "0.6",
     "--forbid_duplicate_ngrams", "--ngram_size", "2"],
], ids=["greedy", "beam-nbest-jsonl"])
def test_two_ranks_write_the_single_process_file(random_checkpoint, input_file, tmp_path, single_thread, search):
    single, ddp = tmp_path / "single" / "out", tmp_path / "ddp" / "out"
    single.parent.mkdir(), ddp.parent.mkdir()
    assert decode.main(decode_args(random_checkpoint, input_file, single, *search)) == 0
    done = launch("decode_seq2seq.py", decode_args(random_checkpoint, input_file, ddp, *search))
    expected = single.read_bytes()
    assert len(expected.splitlines()) == len(SOURCES) + 1
    assert ddp.read_bytes() == expected
    assert sorted(p.name for p in ddp.parent.iterdir()) == ["out"]  # one file, no temporaries
    assert done.stderr.count("wrote 10 lines") == 1  # rank 0 alone logs


@pytest.mark.slow
def test_two_ranks_finish_a_single_process_resume(random_checkpoint, input_file, tmp_path, single_thread,
                                                   monkeypatch):
    search = ["--beam_size", "2", "--resume", "--resume_chunk", "4"]
    straight, out = tmp_path / "straight", tmp_path / "out"
    assert decode.main(decode_args(random_checkpoint, input_file, straight, *search)) == 0

    real, calls = inference.LoadedDecoder.decode_ids, []

    def die_after_one_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(inference.LoadedDecoder, "decode_ids", die_after_one_chunk)
    assert decode.main(decode_args(random_checkpoint, input_file, out, *search)) == 130
    assert json.loads((tmp_path / "out.partial.json").read_text())["lines_done"] == 4

    launch("decode_seq2seq.py", decode_args(random_checkpoint, input_file, out, *search))
    assert out.read_bytes() == straight.read_bytes()
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "out.partial.json").exists()


def test_positions_beyond_the_table_are_a_usage_error(random_checkpoint, input_file, tmp_path, capsys):
    """Checked by the decoder up front (the model itself checks positions only on CPU, where it costs no sync)."""
    out = tmp_path / "out"
    assert decode.main(decode_args(random_checkpoint, input_file, out, "--max_tgt_length", "60")) == 2
    err = capsys.readouterr().err
    assert "plus 60 target tokens needs 77 positions; the checkpoint has 64" in err and not out.exists(), err
