"""s2s-ft-serve (s2s_ft/serving/server.py) through FastAPI's TestClient, against a tiny random checkpoint: answers equal the
Python API's decoding of each source alone, bad requests get a 4xx with one line, a decoding exception a 500 for its
request only, and concurrent requests are decoded together (by settings) with each its own answer."""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from conftest import random_weights_checkpoint  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from s2s_ft.cli import serve as serve_cli  # noqa: E402
from s2s_ft.decoding.inference import load_decoder  # noqa: E402
from s2s_ft.serving import app as serve_app, engine as serve, native as serve_native  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()
SOURCES = ["the cat sat on the mat", "a dog", "the big red house is on the small tree", "fish", "who ran",
           "the blue bird"]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A fine-tuned-style checkpoint with random weights (large, so that outputs differ between sources and end
    at different lengths)."""
    return random_weights_checkpoint(tmp_path_factory, 10, WORDS)


@pytest.fixture(scope="module")
def loaded(checkpoint_dir):
    """That checkpoint, loaded once."""
    return load_decoder(checkpoint_dir, "cpu")


def client_for(loaded, *flags, window_ms: float = 1.0, max_batch_size: int = 32) -> TestClient:
    """A TestClient of the app that ``s2s-ft-serve --model_path ... FLAGS`` builds, around the loaded model."""
    parser = serve_cli.build_parser()
    args = parser.parse_args(["--model_path", "ckpt", "--max_batch_size", str(max_batch_size), *flags])
    server = serve_cli.server_from_args(loaded, args, parser)
    return TestClient(serve_app.build_app(server, window_ms / 1000))


class Recorder:
    """Wraps ``loaded.decode_ids``: records each call's sources; ``fail_on`` (a token id) makes a call whose
    sources contain it raise."""

    def __init__(self, loaded, monkeypatch, fail_on=None, gate: threading.Event = None):
        self.calls, self.inner, self.fail_on, self.gate = [], loaded.decode_ids, fail_on, gate
        monkeypatch.setattr(loaded, "decode_ids", self)

    def __call__(self, sources, config, *args, **kwargs):
        self.calls.append(([list(s) for s in sources], config))
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail_on is not None and any(self.fail_on in s for s in sources):
            raise RuntimeError("injected failure")
        return self.inner(sources, config, *args, **kwargs)


def alone(loaded, source, **search):
    return loaded.decode_texts([source], **search)[0]


def concurrently(client, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post("/generate", json=body), bodies))


def test_health_one_source_and_a_list(loaded):
    with client_for(loaded) as client:
        assert client.get("/health").status_code == 200
        answer = client.post("/generate", json={"src": SOURCES[0]})
        assert answer.status_code == 200 and answer.json() == {"output": alone(loaded, SOURCES[0])}
        answer = client.post("/generate", json={"src": SOURCES})
        assert answer.json() == {"output": [alone(loaded, s) for s in SOURCES]}
        assert len(set(answer.json()["output"])) > 2  # the outputs differ: a swap would show
        assert client.get("/generate").json() == {"error": "Method Not Allowed", "error_type": "invalid_request"}
        assert client.get("/nothing").status_code == 404


def test_options_ride_along_and_flags_are_the_defaults(loaded):
    with client_for(loaded) as client:
        beam = {"beam_size": 3, "length_penalty": 0.6, "min_len": 2, "max_tgt_length": 5,
                "forbid_duplicate_ngrams": True, "ngram_size": 2}
        answer = client.post("/generate", json={"src": SOURCES[:3], **beam})
        assert answer.json()["output"] == [alone(loaded, s, **beam) for s in SOURCES[:3]]
        nbest = client.post("/generate", json={"src": SOURCES[0], "beam_size": 3, "nbest": 2}).json()["output"]
        assert isinstance(nbest, list) and len(nbest) == 2
        sample = {"do_sample": True, "top_k": 5, "top_p": 0.9, "temperature": 0.8, "seed": 7}
        first = client.post("/generate", json={"src": SOURCES[:2], **sample, "num_return_sequences": 3}).json()
        again = client.post("/generate", json={"src": SOURCES[:2], **sample, "num_return_sequences": 3}).json()
        assert first == again and all(len(samples) == 3 for samples in first["output"])
        one = client.post("/generate", json={"src": SOURCES[1], **sample}).json()["output"]
        assert one == alone(loaded, SOURCES[1], **sample)  # sample keys: the position in the request
    with client_for(loaded, "--beam_size", "3", "--max_tgt_length", "5") as client:  # server flags: defaults
        assert client.post("/generate", json={"src": SOURCES[2]}).json()["output"] == alone(
            loaded, SOURCES[2], beam_size=3, max_tgt_length=5)
        assert client.post("/generate", json={"src": SOURCES[2], "beam_size": 1}).json()["output"] == alone(
            loaded, SOURCES[2], max_tgt_length=5)


BAD_REQUESTS = [
    ("not-json", b"{src: 1", 400, "the body is not JSON"),
    ("not-an-object", b'["the cat"]', 400, "must be a JSON object"),
    ("no-src", {"beam_size": 2}, 422, 'missing "src"'),
    ("empty-src", {"src": "  "}, 422, "src is empty"),
    ("empty-in-list", {"src": ["a dog", ""]}, 422, "src[1] is empty"),
    ("empty-list", {"src": []}, 422, "non-empty"),
    ("number-src", {"src": 3}, 422, "non-empty string or a non-empty list"),
    ("number-in-list", {"src": ["a dog", 3]}, 422, "src[1] must be a string"),
    ("too-many", {"src": ["a dog"] * 5}, 413, "at most 4"),
    ("unknown-option", {"src": "a dog", "beams": 2}, 422, "unknown option 'beams'"),
    ("string-for-int", {"src": "a dog", "beam_size": "2"}, 422, "beam_size must be an integer"),
    ("bool-for-int", {"src": "a dog", "beam_size": True}, 422, "beam_size must be an integer"),
    ("int-for-bool", {"src": "a dog", "do_sample": 1}, 422, "do_sample must be true or false"),
    ("beam-0", {"src": "a dog", "beam_size": 0}, 422, "beam_size must be >= 1, got 0"),
    ("top-p-2", {"src": "a dog", "do_sample": True, "top_p": 2}, 422, "top_p must be in (0, 1]"),
    ("top-k-no-sampling", {"src": "a dog", "top_k": 3}, 422, "top_k needs do_sample"),
    ("sample-with-beam", {"src": "a dog", "do_sample": True, "beam_size": 2}, 422, "cannot be combined"),
    ("nbest-over-beam", {"src": "a dog", "nbest": 2}, 422, "nbest 2 exceeds beam_size 1"),
    ("min-len-over-max", {"src": "a dog", "min_len": 9}, 422, "min_len 9 exceeds max_tgt_length 8"),
    ("beam-over-max-beams", {"src": "a dog", "beam_size": 5}, 422, "beam_size 5 exceeds max_beams 4"),
    ("samples-over-max-beams", {"src": "a dog", "do_sample": True, "num_return_sequences": 5}, 422,
     "num_return_sequences 5 exceeds max_beams 4"),
    ("over-the-target-limit", {"src": "a dog", "max_tgt_length": 9}, 422,
     "max_tgt_length 9 exceeds the server's limit of 8 target tokens (max_target_tokens)"),
    ("ignore-word-oov", {"src": "a dog", "forbid_ignore_word": "zebra"}, 422, "zebra is not a token"),
]


@pytest.mark.parametrize("body, status, reason", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_with_a_one_line_reason(loaded, body, status, reason):
    with client_for(loaded, "--max_sources_per_request", "4", "--max_beams", "4") as client:
        if isinstance(body, bytes):
            answer = client.post("/generate", content=body, headers={"content-type": "application/json"})
        else:
            answer = client.post("/generate", json=body)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert reason in error and "\n" not in error, error
        assert client.post("/generate", json={"src": "a dog"}).status_code == 200


def test_too_long_sources_are_truncated_or_refused(loaded):
    long = " ".join(["the cat sat on the mat"] * 4)  # 24 tokens; the checkpoint takes 8
    with client_for(loaded) as client:  # default: truncated, as s2s-ft-decode does
        assert client.post("/generate", json={"src": long}).json()["output"] == alone(loaded, long)
    with client_for(loaded, "--too_long", "reject") as client:
        answer = client.post("/generate", json={"src": ["a dog", long]})
        assert answer.status_code == 422 and "src[1] has 24 tokens; the checkpoint takes at most 8" in \
            answer.json()["error"]


def test_a_decoding_exception_fails_only_its_request(loaded, monkeypatch):
    bad_id = loaded.tokenizer.convert_tokens_to_ids("fish")
    recorder = Recorder(loaded, monkeypatch, fail_on=bad_id)
    with client_for(loaded, window_ms=60_000, max_batch_size=3) as client:
        answers = concurrently(client, [{"src": "a dog"}, {"src": "fish"}, {"src": "who ran"}])
        assert [a.status_code for a in answers] == [200, 500, 200]
        assert answers[1].json()["error"] == "decoding failed: RuntimeError: injected failure"
        assert answers[0].json()["output"] == alone(loaded, "a dog")
        assert answers[2].json()["output"] == alone(loaded, "who ran")
        assert len(recorder.calls[0][0]) == 3  # decoded together first, then one by one
        after = ["a cat", "the dog", "a bird"]  # three sources: decoded at once, without waiting for the window
        assert client.post("/generate", json={"src": after}).json()["output"] == [alone(loaded, s) for s in after]
        assert client.get("/health").status_code == 200


def test_concurrent_requests_are_decoded_together_each_with_its_own_answer(loaded, monkeypatch):
    recorder = Recorder(loaded, monkeypatch)
    bodies = [{"src": SOURCES[0]}, {"src": SOURCES[1:3]}, {"src": SOURCES[3]}, {"src": SOURCES[4]}]
    with client_for(loaded, window_ms=60_000, max_batch_size=5) as client:  # flushed when 5 sources wait
        answers = concurrently(client, bodies)
    assert len(recorder.calls) == 1 and sorted(map(tuple, recorder.calls[0][0])) == sorted(
        tuple(ids) for ids in loaded.source_ids(SOURCES[:5])[0])
    assert [a.json()["output"] for a in answers] == [
        alone(loaded, SOURCES[0]), [alone(loaded, SOURCES[1]), alone(loaded, SOURCES[2])],
        alone(loaded, SOURCES[3]), alone(loaded, SOURCES[4])]


def test_requests_with_other_settings_are_decoded_in_other_groups(loaded, monkeypatch):
    recorder = Recorder(loaded, monkeypatch)
    bodies = [{"src": SOURCES[0]}, {"src": SOURCES[1], "beam_size": 2}, {"src": SOURCES[2]},
              {"src": SOURCES[3], "beam_size": 2}]
    with client_for(loaded, window_ms=60_000, max_batch_size=4) as client:
        answers = concurrently(client, bodies)
    assert sorted((len(sources), config.beam_size) for sources, config in recorder.calls) == [(2, 1), (2, 2)]
    assert [a.json()["output"] for a in answers] == [
        alone(loaded, SOURCES[0]), alone(loaded, SOURCES[1], beam_size=2), alone(loaded, SOURCES[2]),
        alone(loaded, SOURCES[3], beam_size=2)]


def test_a_request_larger_than_the_batch_is_decoded_alone_in_batches(loaded, monkeypatch):
    recorder = Recorder(loaded, monkeypatch)
    with client_for(loaded, max_batch_size=2) as client:
        answer = client.post("/generate", json={"src": SOURCES})
    assert len(recorder.calls) == 1 and len(recorder.calls[0][0]) == len(SOURCES)  # decode_ids cuts batches of 2
    assert answer.json()["output"] == [alone(loaded, s) for s in SOURCES]


def test_health_answers_while_a_batch_decodes(loaded, monkeypatch):
    gate = threading.Event()
    recorder = Recorder(loaded, monkeypatch, gate=gate)
    with client_for(loaded) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/generate", json={"src": "a dog"})
        deadline = time.monotonic() + 30
        while not recorder.calls and time.monotonic() < deadline:  # the decoding thread holds the batch
            time.sleep(0.01)
        assert recorder.calls and client.get("/health").status_code == 200 and not pending.done()
        gate.set()
        assert pending.result(timeout=30).json()["output"] == alone(loaded, "a dog")


def test_bad_server_flags_stop_with_one_line(checkpoint_dir, tmp_path, capsys):
    from conftest import one_error_line

    for flags, expected in ((["--max_batch_size", "0"], "--max_batch_size must be >= 1"),
                            (["--batch_window_ms", "-1"], "--batch_window_ms must be >= 0"),
                            (["--top_k", "3"], "--top_k needs --do_sample"),
                            (["--beam_size", "40"], "--beam_size 40 exceeds --max_beams 16"),
                            (["--max_queue", "8"], "--max_queue 8 is below --max_sources_per_request 64"),
                            (["--max_kv_cache_mb", "0"], "--max_kv_cache_mb must be > 0"),
                            (["--quantize", "int8", "--precision", "bf16"], "--quantize int8 takes fp32"),
                            (["--model_path", str(tmp_path / "missing")], "checkpoint directory not found")):
        assert serve_cli.main(["--model_path", str(tmp_path), *flags]) == 2
        assert expected in one_error_line(capsys)
    # Checked against the checkpoint, once it is loaded.
    assert serve_cli.main(["--model_path", checkpoint_dir, "--max_target_tokens", "8", "--max_tgt_length", "9"]) == 2
    assert "max_tgt_length 9 exceeds the server's limit of 8" in one_error_line(capsys)


def test_without_the_serve_extra_the_server_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from conftest import one_error_line

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    assert serve_cli.main(["--model_path", str(tmp_path)]) == 2
    assert "pip install -e '.[serve]'" in one_error_line(capsys)


def test_sampling_without_a_seed_draws_one_and_returns_it(loaded):
    with client_for(loaded) as client:
        answers = [client.post("/generate", json={"src": "the cat", "do_sample": True, "max_tgt_length": 6}).json()
                   for _ in range(8)]
        seeds = [a["seed"] for a in answers]
        assert len(set(seeds)) == len(seeds)  # fresh seeds (8 draws of 31 bits)
        again = client.post("/generate", json={"src": "the cat", "do_sample": True, "max_tgt_length": 6,
                                               "seed": seeds[0]}).json()
        assert again == answers[0]  # the returned seed reproduces the sample
        assert "seed" not in client.post("/generate", json={"src": "the cat"}).json()  # not sampling: no seed


def test_deeply_nested_and_unexpected_failures_answer_json(loaded, monkeypatch):
    with client_for(loaded) as client:
        response = client.post("/generate", content=b'{"src": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert response.status_code == 400 and "nests too deeply" in response.json()["error"]
        monkeypatch.setattr(serve_native, "parse", lambda engine, fields: 1 / 0)
    with TestClient(client.app, raise_server_exceptions=False) as client:
        response = client.post("/generate", json={"src": "the cat"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: ZeroDivisionError", "error_type": "internal"}
