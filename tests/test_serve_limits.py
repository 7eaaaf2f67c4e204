"""s2s-ft-serve under overload and faults (issue 24): limits refuse before work is done, a full queue answers 429 at
once, time limits answer 503 / 504 and stop the decoding, a client that leaves is never decoded, /health tells the
truth when the decoding thread dies, /metrics counts outcomes, fuzzed bodies never get a 5xx, and SIGTERM drains.
Against a tiny random checkpoint (conftest.random_weights_checkpoint); a real uvicorn where HTTP itself matters."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")
from conftest import load_script, random_weights_checkpoint  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from s2s_ft.cli import serve as serve_cli  # noqa: E402
from s2s_ft.decoding.inference import load_decoder  # noqa: E402
from s2s_ft.decoding.search import DecodingStopped, SearchConfig  # noqa: E402
from s2s_ft.serving import app as serve_app, engine as serve  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return random_weights_checkpoint(tmp_path_factory, 10, WORDS)


@pytest.fixture(scope="module")
def loaded(checkpoint_dir):
    return load_decoder(checkpoint_dir, "cpu")


def app_for(loaded, *flags, window_ms: float = 1.0, test_hooks: bool = False):
    parser = serve_cli.build_parser()
    args = parser.parse_args(["--model_path", "ckpt", *flags])
    return serve_app.build_app(serve_cli.server_from_args(loaded, args, parser), window_ms / 1000, test_hooks)


class Held:
    """Wraps ``loaded.decode_ids``: every call waits for ``gate``; records each call's sources, batch size and
    ``should_stop``."""

    def __init__(self, loaded, monkeypatch):
        self.calls, self.inner, self.gate = [], loaded.decode_ids, threading.Event()
        monkeypatch.setattr(loaded, "decode_ids", self)

    def __call__(self, sources, config, batch_size=32, **kwargs):
        self.calls.append({"sources": [list(s) for s in sources], "batch_size": batch_size,
                           "should_stop": kwargs.get("should_stop")})
        assert self.gate.wait(30)
        return self.inner(sources, config, batch_size, **kwargs)

    def wait_for_calls(self, n: int) -> None:
        deadline = time.monotonic() + 30
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.calls) >= n


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_cache_estimate_is_what_the_decoder_allocates(loaded, monkeypatch):
    """The admission estimate against the tensors the decoder really builds: twice the first cache (beam search:
    one row per sentence), twice m times it for sampling (the rows are spread to the samples)."""
    from s2s_ft.decoding import search as decoding

    made = []

    class Recording(decoding.KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(sum(t.nbytes for t in (self.keys, self.values, self.key_rank, self.positions)))

    monkeypatch.setattr(decoding, "KVCache", Recording)
    sources = [[5, 6, 7], [5, 6, 7, 8, 9], [6]]
    for config, rows_per_source in ((SearchConfig(beam_size=3, max_tgt_length=6), 1),
                                    (SearchConfig(do_sample=True, num_return_sequences=4, max_tgt_length=5), 4)):
        made.clear()
        loaded.decoder.generate(sources, config)
        assert loaded.decoder.cache_bytes([len(s) for s in sources], config) == 2 * rows_per_source * made[0]
    assert loaded.decoder.cache_bytes([3], SearchConfig(use_cache=False)) == 0


def test_should_stop_ends_a_decoding_call_at_its_next_step(loaded):
    asked = []

    def stop_on_third():
        asked.append(1)
        return len(asked) >= 3

    for config in (SearchConfig(beam_size=2, max_tgt_length=8, min_len=8),
                   SearchConfig(do_sample=True, max_tgt_length=8, min_len=8)):
        asked.clear()
        with pytest.raises(DecodingStopped):
            loaded.decode_ids([[5, 6, 7]], config, should_stop=stop_on_third)
        assert len(asked) == 3  # asked before every step, and nothing after it said stop


def test_limits_refuse_before_decoding(loaded, monkeypatch):
    held = Held(loaded, monkeypatch)
    held.gate.set()
    with TestClient(app_for(loaded, "--max_body_bytes", "300", "--max_source_chars", "50",
                            "--max_kv_cache_mb", "0.001")) as client:
        big = {"src": "the cat " * 40}
        answer = client.post("/generate", json=big)
        assert answer.status_code == 413 and "--max_body_bytes" in answer.json()["error"]
        assert answer.json()["error_type"] == "too_large"

        def chunks():  # no Content-Length: refused as it arrives
            for _ in range(50):
                yield b" " * 20
        answer = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert answer.status_code == 413 and "passed 300 bytes" in answer.json()["error"]
        answer = client.post("/generate", json={"src": "a " * 30})
        assert answer.status_code == 413 and "60 characters" in answer.json()["error"]
        answer = client.post("/generate", json={"src": "the cat", "beam_size": 4})
        assert answer.status_code == 422 and "--max_kv_cache_mb" in answer.json()["error"]
    assert held.calls == []


def test_a_batch_over_the_cache_budget_is_decoded_in_smaller_batches(loaded, monkeypatch):
    sources = ["the cat sat on the mat", "a dog", "the big red house", "fish", "who ran", "the blue bird"]
    expected = loaded.decode_texts(sources, beam_size=3)
    held = Held(loaded, monkeypatch)
    held.gate.set()
    parser = serve_cli.build_parser()
    server = serve_cli.server_from_args(loaded, parser.parse_args(["--model_path", "x"]), parser)
    per_source = server.cache_bytes(loaded.max_source_length - 2, SearchConfig(beam_size=3, max_tgt_length=8))
    budget_mb = 2.5 * per_source / serve.MB  # two of the longest sources fit, three do not
    with TestClient(app_for(loaded, "--max_kv_cache_mb", str(budget_mb))) as client:
        answer = client.post("/generate", json={"src": sources, "beam_size": 3})
    assert answer.status_code == 200 and answer.json()["output"] == expected
    assert held.calls[0]["batch_size"] <= 2


def test_a_full_queue_answers_429_at_once_and_time_limits_answer_503_and_504(loaded, monkeypatch):
    held = Held(loaded, monkeypatch)
    with TestClient(app_for(loaded, "--max_queue", "4", "--max_sources_per_request", "4",
                            "--queue_timeout_s", "0.5", "--request_timeout_s", "1.5")) as client, \
            ThreadPoolExecutor(4) as pool:
        batcher = client.app.state.batcher
        first = pool.submit(client.post, "/generate", json={"src": "a dog"})
        held.wait_for_calls(1)  # decoding, held
        queued = pool.submit(client.post, "/generate", json={"src": ["the cat"] * 4})
        wait_until(lambda: batcher.queued_sources() == 4)
        refused = client.post("/generate", json={"src": "fish"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "overloaded" and "--max_queue 4" in refused.json()["error"]
        waited = queued.result(timeout=30)  # never started: the queue limit
        assert waited.status_code == 503 and waited.json()["error_type"] == "queue_timeout"
        assert waited.headers["retry-after"] == "1"
        late = first.result(timeout=30)  # started, then past its deadline: 504, and its decoding is told to stop
        assert late.status_code == 504 and late.json()["error_type"] == "timeout"
        assert held.calls[0]["should_stop"]()
        held.gate.set()
        assert client.post("/generate", json={"src": "fish"}).status_code == 200
    assert len(held.calls) == 2  # the request that waited too long was never decoded


@contextmanager
def real_server(app):
    """``app`` under a real uvicorn on a free loopback port (in a thread); yields the port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def post(port: int, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/generate", json.dumps(body), {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_clients_that_leave_are_never_decoded_and_a_fresh_request_is_answered(loaded, monkeypatch):
    expected = loaded.decode_texts(["fish"])[0]
    held = Held(loaded, monkeypatch)
    app = app_for(loaded, "--max_queue", "256")
    with real_server(app) as port, ThreadPoolExecutor(21) as pool:
        first = pool.submit(post, port, {"src": "a dog"})
        held.wait_for_calls(1)
        impatient = [pool.submit(post, port, {"src": f"the cat {i % 5}"}, 0.5) for i in range(20)]
        for future in impatient:
            with pytest.raises(TimeoutError):
                future.result(timeout=30)
        wait_until(lambda: app.state.batcher.queued_sources() == 0)  # each dropped when its client left
        held.gate.set()
        assert first.result(timeout=30)[0] == 200
        assert post(port, {"src": "fish"}) == (200, {"output": expected})
    assert len(held.calls) == 2  # the first request and the fresh one: none of the 20 that left


def test_a_running_decode_is_told_to_stop_when_its_client_leaves(loaded, monkeypatch):
    held = Held(loaded, monkeypatch)
    with real_server(app_for(loaded)) as port, ThreadPoolExecutor(1) as pool:
        leaving = pool.submit(post, port, {"src": "a dog"}, 0.5)
        held.wait_for_calls(1)
        with pytest.raises(TimeoutError):
            leaving.result(timeout=30)
        wait_until(held.calls[0]["should_stop"])
        held.gate.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the hook ends the thread
def test_health_is_503_once_the_decoding_thread_dies(loaded):
    with TestClient(app_for(loaded, test_hooks=True)) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/_test/kill_decoder").status_code == 200
        wait_until(lambda: client.get("/health").status_code == 503, timeout=1.0)
        assert "decoding thread has stopped" in client.get("/health").json()["error"]
        answer = client.post("/generate", json={"src": "a dog"})
        assert answer.status_code == 503 and answer.json()["error_type"] == "unavailable"
    with TestClient(app_for(loaded)) as client:  # the hook exists only when asked for
        assert client.post("/_test/kill_decoder").status_code == 404


def test_draining_refuses_new_requests(loaded):
    with TestClient(app_for(loaded)) as client:
        client.app.state.batcher.draining = True
        assert client.get("/health").status_code == 503
        answer = client.post("/generate", json={"src": "a dog"})
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]
        assert answer.headers["retry-after"] == "1"


def test_metrics_count_outcomes_in_prometheus_text(loaded):
    with TestClient(app_for(loaded)) as client:
        assert client.post("/generate", json={"src": ["a dog", "fish"]}).status_code == 200
        assert client.post("/generate", json={"src": "a dog", "beam_size": 0}).status_code == 422
        assert client.post("/generate", content=b"{").status_code == 400
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, s.labels.get("outcome", s.labels.get("le"))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert samples[("s2s_ft_requests_total", "ok")] == 1
    assert samples[("s2s_ft_requests_total", "invalid_request")] == 1
    assert samples[("s2s_ft_requests_total", "invalid_json")] == 1
    assert samples[("s2s_ft_requests_total", "overloaded")] == 0
    assert samples[("s2s_ft_queue_sources", None)] == 0 and samples[("s2s_ft_ready", None)] == 1
    assert samples[("s2s_ft_batch_sources_count", None)] == 1 and samples[("s2s_ft_batch_sources_sum", None)] == 2
    assert samples[("s2s_ft_request_seconds_count", None)] == 3


def test_fuzzed_bodies_never_get_a_5xx_and_always_json(loaded):
    with TestClient(app_for(loaded, "--max_source_chars", "4000"), raise_server_exceptions=False) as client:
        for body in load_script("benchmarks", "serve_faults").fuzzed_bodies(300):
            response = client.post("/generate", content=body, headers={"content-type": "application/json"})
            assert response.status_code < 500, (body[:80], response.text)
            answer = response.json()
            assert ("output" in answer) if response.status_code == 200 else answer["error"], body[:80]
        assert client.get("/health").status_code == 200


def test_sampling_without_a_seed_differs_and_with_one_repeats(loaded):
    with TestClient(app_for(loaded)) as client:
        body = {"src": "the cat", "do_sample": True, "max_tgt_length": 8, "min_len": 8}
        outputs = [client.post("/generate", json=body).json()["output"] for _ in range(20)]
        assert len(set(outputs)) >= 19
        seeded = [client.post("/generate", json={**body, "seed": 5}).json()["output"] for _ in range(3)]
        assert len(set(seeded)) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(checkpoint_dir, tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "s2s_ft.cli.serve", "--model_path", checkpoint_dir,
                                    "--port", str(port), "--batch_window_ms", "300", "--log_level", "INFO"],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    outcomes, stop = [], threading.Event()  # (when the request was sent, what came back)

    def client():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                outcomes.append((sent, post(port, {"src": "the cat sat"}, 30)[0]))
            except ConnectionRefusedError:
                outcomes.append((sent, "refused"))
                time.sleep(0.05)
            except (ConnectionError, http.client.HTTPException) as error:
                outcomes.append((sent, type(error).__name__))
                time.sleep(0.05)

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        threads = [threading.Thread(target=client) for _ in range(10)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(status == 200 for _, status in outcomes) >= 10, timeout=60)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()
        time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
    # Taken in before the signal: answered (the server says none was left; answers arrived after the signal).
    # Arriving later: refused (closed socket, a connection reset from the kernel's backlog, or 503 "shutting down").
    assert "every request taken in was answered" in log_path.read_text()
    after = [status for sent, status in outcomes if sent >= signalled - 1.0]
    assert set(status for _, status in outcomes) <= {200, 503, "refused", "ConnectionResetError"}, outcomes
    assert 200 in after and "refused" in after, after
