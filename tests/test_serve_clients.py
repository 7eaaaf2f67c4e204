"""A real ``s2s-ft-serve`` on 127.0.0.1 driven by the clients people use: ``huggingface_hub.InferenceClient``
(TGI's client; streamed or not, with details or not), the ``openai`` client (completions, streamed or not), a raw
socket that leaves in the middle of a stream, and Debian's chromium through playwright on the page. Every text
equals ``s2s-ft-decode``'s output for the same source and settings."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ROOT, free_port, make_answer_checkpoint, random_weights_checkpoint

from s2s_ft.cli import decode

pytestmark = pytest.mark.slow

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()
SOURCES = ["the cat sat on the mat", "a dog", "the big red house is on the small tree"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return random_weights_checkpoint(tmp_path_factory, 12, WORDS)


@pytest.fixture(scope="module")
def server(checkpoint_dir):
    """``s2s-ft-serve`` in a process of its own; yields its base URL."""
    yield from serving(checkpoint_dir)


@pytest.fixture(scope="module")
def answer_checkpoint_dir(tmp_path_factory):
    return make_answer_checkpoint(tmp_path_factory.mktemp("answers"), "span+segment", "pseudo_masked", True)


@pytest.fixture(scope="module")
def answer_server(answer_checkpoint_dir):
    yield from serving(answer_checkpoint_dir)


def serving(checkpoint):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "s2s_ft.cli.serve", "--model_path", checkpoint, "--port",
                                str(port), "--served_model_name", "tiny", "--detokenize", "spaced",
                                "--max_target_tokens", "40", "--test_hooks"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("the server did not start: " + process.stderr.read().decode()[-2000:])
    yield url
    process.terminate()
    process.wait(30)


def decoded(checkpoint_dir, tmp_path, *flags, sources=SOURCES, answers=None) -> list[str]:
    """s2s-ft-decode's outputs for ``sources`` (with ``answers``) with ``flags``."""
    source_file, output = tmp_path / "in.jsonl", tmp_path / "out.txt"
    rows = [{"src": s} if answers is None else {"src": s, "answer": a} for s, a in zip(sources, answers or sources)]
    source_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert decode.main(["--model_path", checkpoint_dir, "--input_file", str(source_file), "--output_file",
                        str(output), "--detokenize", "spaced", *flags]) == 0
    return output.read_text().splitlines()


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub refuses even a loopback URL while offline."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False, raising=False)


def test_huggingface_hub_inference_client(server, checkpoint_dir, tmp_path, hub_online):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server)
    greedy = decoded(checkpoint_dir, tmp_path, "--max_tgt_length", "6")
    # a sample's seed comes from (seed, its position in its request / file): one source a file, as one a request
    sampled = [decoded(checkpoint_dir, tmp_path, "--do_sample", "--seed", "5", "--top_k", "6", "--max_tgt_length", "6",
                       sources=[source])[0] for source in SOURCES]
    for i, source in enumerate(SOURCES):
        assert client.text_generation(source, max_new_tokens=6) == greedy[i]
        details = client.text_generation(source, max_new_tokens=6, details=True)
        assert details.generated_text == greedy[i]
        assert "".join(t.text for t in details.details.tokens) == greedy[i]
        assert details.details.finish_reason in ("eos_token", "length")
        assert "".join(client.text_generation(source, max_new_tokens=6, stream=True)) == greedy[i]
        events = list(client.text_generation(source, max_new_tokens=6, stream=True, details=True))
        assert events[-1].generated_text == greedy[i] and events[-1].details.generated_tokens == len(events)
        assert "".join(e.token.text for e in events) == greedy[i]
        assert client.text_generation(source, max_new_tokens=6, do_sample=True, seed=5, top_k=6) == sampled[i]
    with pytest.raises(Exception, match="repetition_penalty"):
        client.text_generation(SOURCES[0], repetition_penalty=1.5)


def test_openai_client(server, checkpoint_dir, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="any")
    assert [m.id for m in client.models.list()] == ["tiny"]
    greedy = decoded(checkpoint_dir, tmp_path, "--max_tgt_length", "6")
    beam = decoded(checkpoint_dir, tmp_path, "--beam_size", "3", "--max_tgt_length", "6")
    for i, source in enumerate(SOURCES):
        done = client.completions.create(model="tiny", prompt=source, max_tokens=6, temperature=0)
        assert done.choices[0].text == greedy[i] and done.usage.total_tokens > 0
        chunks = list(client.completions.create(model="tiny", prompt=source, max_tokens=6, temperature=0,
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == greedy[i]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert client.completions.create(model="tiny", prompt=source, max_tokens=6, temperature=0,
                                         extra_body={"num_beams": 3}).choices[0].text == beam[i]
    import openai
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="another", prompt="a dog")
    with pytest.raises(openai.BadRequestError, match="/v1/completions"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a dog"}])


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_a_client_that_leaves_mid_stream_stops_its_row_and_not_the_batch(server, checkpoint_dir, tmp_path):
    host, port = server.removeprefix("http://").split(":")
    urllib.request.urlopen(urllib.request.Request(server + "/_test/step_delay/0.05", method="POST")).read()
    try:
        streams_before = metric(server, "s2s_ft_stream_steps_after_cancel_count")
        long = {"inputs": SOURCES[2], "parameters": {"max_new_tokens": 40, "min_new_tokens": 40}}
        other = {}

        def batched_request():  # decoded in the same batch as the stream (same settings)
            request = urllib.request.Request(server + "/generate", json.dumps(long).encode(),
                                             {"Content-Type": "application/json"})
            other["text"] = json.loads(urllib.request.urlopen(request, timeout=60).read())["generated_text"]

        thread = threading.Thread(target=batched_request)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/generate_stream", json.dumps(long), {"Content-Type": "application/json"})
        thread.start()
        response = connection.getresponse()
        assert response.status == 200
        first = response.readline()
        assert first.startswith(b"data:{") and json.loads(first[5:])["token"]["text"] is not None
        connection.sock.close()  # the client goes, mid-stream
        connection.close()
        thread.join(60)
        for _ in range(100):
            if metric(server, "s2s_ft_stream_steps_after_cancel_count") > streams_before:
                break
            time.sleep(0.05)
        steps = metric(server, "s2s_ft_stream_steps_after_cancel_sum")
        assert metric(server, "s2s_ft_stream_steps_after_cancel_count") == streams_before + 1
        assert steps <= 1  # its row left the batch at the next step
    finally:
        urllib.request.urlopen(urllib.request.Request(server + "/_test/step_delay/0", method="POST")).read()
    expected = decoded(checkpoint_dir, tmp_path, "--max_tgt_length", "40", "--min_len", "40")[2]
    assert other["text"] == expected  # the request decoded beside it ran to its end, unchanged


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (scripts/setup.sh "
                                                         "installs it)")
def test_the_page_streams_in_a_real_browser(server, checkpoint_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    greedy = decoded(checkpoint_dir, tmp_path, "--max_tgt_length", "6")
    beam = decoded(checkpoint_dir, tmp_path, "--beam_size", "3", "--max_tgt_length", "6")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            assert page.is_hidden("#answer-box")  # this checkpoint takes no answer
            page.fill("#source", SOURCES[0])
            page.fill("#max-tokens", "6")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').textContent.includes('tokens in')")
            assert page.text_content("#output") == greedy[0]
            page.select_option("#mode", "beam")
            page.fill("#beams", "3")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').textContent.includes('tokens in')")
            assert page.text_content("#output") == beam[0]
            page.select_option("#mode", "sample")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').textContent.includes('tokens in')")
            assert page.text_content("#output").strip() and page.text_content("#error") == ""
            page.fill("#max-tokens", "0")  # refused by the server: shown on the page
            page.click("#go")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "max_new_tokens" in page.text_content("#error")
        finally:
            browser.close()


def test_the_page_takes_an_answer_in_a_real_browser(answer_server, answer_checkpoint_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    sentence, answers = "the cat sat on the mat", ["the mat", "cat"]
    want = decoded(answer_checkpoint_dir, tmp_path, "--max_tgt_length", "6", sources=[sentence] * 2, answers=answers)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(answer_server + "/")
            page.wait_for_function("!document.getElementById('answer-box').classList.contains('hidden')")
            page.fill("#source", sentence)
            page.fill("#max-tokens", "6")
            assert want[0] != want[1]  # the answer changes the question: the page must pass it on
            for answer, text in zip(answers, want):
                page.fill("#answer", answer)
                page.click("#go")
                page.wait_for_function("t => document.getElementById('output').textContent === t", arg=text)
                page.wait_for_function("document.getElementById('status').textContent.includes('tokens in')")
                assert page.text_content("#output") == text
        finally:
            browser.close()
