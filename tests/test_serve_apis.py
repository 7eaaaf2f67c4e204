"""The server's TGI and OpenAI APIs through FastAPI's TestClient, against tiny random checkpoints: every answer's text
equals the project's decoder's for the same source and settings (``LoadedDecoder.decode_texts``, which s2s-ft-decode
runs), streams send exactly that text in pieces and in each API's own event format, parameters are honoured or
refused by name, errors come in each API's own shape, and answers reach an answer-aware checkpoint through all
three APIs. The real clients (huggingface_hub, openai) and a browser drive a real server in
tests/test_serve_clients.py."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
from conftest import make_answer_checkpoint, random_weights_checkpoint  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from s2s_ft.cli import serve as serve_cli  # noqa: E402
from s2s_ft.decoding.inference import load_decoder  # noqa: E402
from s2s_ft.serving import app as serve_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = "the a cat dog sat ran on mat big small red blue who what where is was house tree bird fish".split()
SOURCES = ["the cat sat on the mat", "a dog", "the big red house is on the small tree", "fish", "who ran"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_decoder(random_weights_checkpoint(tmp_path_factory, 12, WORDS), "cpu", detokenize="spaced")


def client_for(loaded, *flags) -> TestClient:
    parser = serve_cli.build_parser()
    args = parser.parse_args(["--model_path", "ckpt", "--served_model_name", "tiny", "--detokenize",
                              loaded.detokenize, *flags])
    return TestClient(serve_app.build_app(serve_cli.server_from_args(loaded, args, parser), 0.001))


def expected(loaded, source, **search):
    return loaded.decode_texts([source], **search)[0]


def sse_events(response, prefix: bytes = b"data:") -> list:
    """The JSON payloads of a Server-Sent Events body, checking each line's exact prefix."""
    events = []
    for block in response.content.split(b"\n\n"):
        block = block.strip(b"\r\n")
        if not block or block.startswith(b":"):
            continue
        assert block.startswith(prefix) and not block.startswith(prefix + b" " if prefix == b"data:" else b"x"), block
        payload = block[len(prefix):]
        events.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    return events


# ------------------------------------------------------------------------------------------------------------ TGI
@pytest.mark.parametrize("parameters, search", [
    ({}, {}), ({"max_new_tokens": 4}, {"max_tgt_length": 4}),
    ({"num_beams": 3, "length_penalty": 0.6}, {"beam_size": 3, "length_penalty": 0.6}),
    ({"do_sample": True, "seed": 11, "top_k": 5, "temperature": 0.7},
     {"do_sample": True, "seed": 11, "top_k": 5, "temperature": 0.7}),
], ids=["greedy", "max-new-tokens", "beam", "sampling"])
def test_tgi_generate_and_stream_give_the_decoders_text(loaded, parameters, search):
    with client_for(loaded) as client:
        for source in SOURCES[:3]:
            want = expected(loaded, source, **search)
            plain = client.post("/generate", json={"inputs": source, "parameters": {**parameters, "details": True}})
            assert plain.status_code == 200, plain.text
            body = plain.json()
            assert body["generated_text"] == want
            details = body["details"]
            assert "".join(t["text"] for t in details["tokens"]) == want
            assert details["generated_tokens"] == len(details["tokens"])
            assert details["finish_reason"] in ("eos_token", "length")
            assert (details["tokens"][-1]["special"]) == (details["finish_reason"] == "eos_token")
            assert details["seed"] == parameters.get("seed")
            stream = client.post("/generate_stream", json={"inputs": source, "parameters": {**parameters,
                                                                                            "details": True}})
            events = sse_events(stream)
            assert stream.status_code == 200 and "[DONE]" not in events
            assert "".join(e["token"]["text"] for e in events) == want
            assert [e["generated_text"] for e in events[:-1]] == [None] * (len(events) - 1)
            assert events[-1]["generated_text"] == want
            assert events[-1]["details"]["finish_reason"] == details["finish_reason"]
            assert [e["token"]["id"] for e in events] == [t["id"] for t in details["tokens"]]
            assert [e["index"] for e in events] == list(range(1, len(events) + 1))


def test_tgi_compat_route_details_and_parameters(loaded):
    with client_for(loaded) as client:
        source = SOURCES[0]
        listed = client.post("/", json={"inputs": source, "parameters": {}, "stream": False}).json()
        assert listed == [{"generated_text": expected(loaded, source)}]
        streamed = sse_events(client.post("/", json={"inputs": source, "stream": True}))
        assert streamed[-1]["generated_text"] == expected(loaded, source) and streamed[-1]["details"] is None
        # what huggingface_hub sends: every parameter, most of them null
        everything = {"adapter_id": None, "best_of": None, "decoder_input_details": True, "details": True,
                      "do_sample": False, "frequency_penalty": None, "grammar": None, "max_new_tokens": 6,
                      "repetition_penalty": None, "return_full_text": True, "seed": None, "stop": [],
                      "temperature": None, "top_k": None, "top_n_tokens": None, "top_p": None, "truncate": 3,
                      "typical_p": None, "watermark": False}
        body = client.post("/generate", json={"inputs": source, "parameters": everything}).json()
        cut = " ".join(source.split()[:3])  # truncate: the first three word pieces
        assert body["generated_text"] == source + expected(loaded, cut, max_tgt_length=6)
        assert [t["text"] for t in body["details"]["prefill"]] == ["[CLS]", *cut.split(), "[SEP]"]
        assert all(t["logprob"] is None for t in body["details"]["prefill"])
        best = client.post("/generate", json={"inputs": source, "parameters": {
            "best_of": 3, "do_sample": True, "seed": 2, "details": True}}).json()
        others = best["details"]["best_of_sequences"]
        assert len(others) == 2 and all(o["seed"] == 2 for o in others)
        assert sum(t["logprob"] for t in best["details"]["tokens"]) >= max(
            sum(t["logprob"] for t in o["tokens"]) for o in others) - 1e-5
        info = client.get("/info").json()
        assert info["model_id"] == "tiny" and info["max_input_tokens"] == 10 and info["max_best_of"] == 16
        assert {"max_total_tokens", "max_concurrent_requests", "max_stop_sequences", "max_client_batch_size",
                "validation_workers", "router", "version"} <= set(info)


TGI_REFUSALS = [
    ({"repetition_penalty": 1.3}, "`repetition_penalty` is not supported"),
    ({"typical_p": 0.5}, "`typical_p` is not supported"),
    ({"grammar": {"type": "regex", "value": "a+"}}, "`grammar` is not supported"),
    ({"watermark": True}, "`watermark` is not supported"),
    ({"top_n_tokens": 2}, "`top_n_tokens` is not supported"),
    ({"beams": 2}, "unknown parameter `beams`"),
    ({"temperature": 0}, "`temperature` must be strictly positive"),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"best_of": 2}, "`best_of` > 1 needs sampling"),
    ({"max_new_tokens": "4"}, "max_new_tokens must be an integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "5 stop sequences; the server takes at most 4"),
    ({"answer": "cat"}, "trained without answers"),
]


@pytest.mark.parametrize("parameters, message", TGI_REFUSALS, ids=[str(p) for p, _ in TGI_REFUSALS])
def test_tgi_refuses_by_name_in_its_shape_and_streams_errors_as_events(loaded, parameters, message):
    with client_for(loaded) as client:
        response = client.post("/generate", json={"inputs": SOURCES[0], "parameters": parameters})
        assert response.status_code == 422
        assert response.json()["error_type"] == "validation" and message in response.json()["error"]
        assert response.json()["error"].startswith("Input validation error: ")
        stream = client.post("/generate_stream", json={"inputs": SOURCES[0], "parameters": parameters})
        assert stream.status_code == 200
        (event,) = sse_events(stream)
        assert event["error_type"] == "validation" and message in event["error"]
    # never the message that makes huggingface_hub drop parameters silently and retry
    assert "model_kwargs" not in message


def test_tgi_best_of_cannot_stream_and_beam_search_streams_at_the_end(loaded):
    with client_for(loaded) as client:
        (event,) = sse_events(client.post("/generate_stream", json={"inputs": "a dog", "parameters": {
            "best_of": 2, "do_sample": True}}))
        assert "`best_of` != 1 is not supported when streaming tokens" in event["error"]
        events = sse_events(client.post("/generate_stream", json={"inputs": "a dog", "parameters": {
            "num_beams": 3}}))
        assert "".join(e["token"]["text"] for e in events) == expected(loaded, "a dog", beam_size=3)


@pytest.mark.parametrize("stop_at", [1, 2])
def test_stop_sequences_tgi_keeps_them_openai_drops_them(loaded, stop_at):
    with client_for(loaded) as client:
        source = SOURCES[2]
        full = expected(loaded, source)
        words = full.split()
        assert len(words) > stop_at
        stop = words[stop_at]
        text = full[:full.index(" " + stop) + 1 + len(stop)] if stop_at else full[:len(stop)]
        body = client.post("/generate", json={"inputs": source, "parameters": {"stop": [stop], "details": True}}).json()
        assert body["generated_text"] == text[:text.index(stop) + len(stop)]
        assert body["details"]["finish_reason"] == "stop_sequence"
        events = sse_events(client.post("/generate_stream", json={"inputs": source, "parameters": {"stop": [stop]}}))
        assert "".join(e["token"]["text"] for e in events) == body["generated_text"]
        openai = client.post("/v1/completions", json={"model": "tiny", "prompt": source, "stop": stop}).json()
        assert openai["choices"][0]["text"] == body["generated_text"][:-len(stop)]
        assert openai["choices"][0]["finish_reason"] == "stop"
        chunks = sse_events(client.post("/v1/completions", json={"model": "tiny", "prompt": source, "stop": [stop],
                                                                  "stream": True}), b"data: ")
        assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == openai["choices"][0]["text"]


# --------------------------------------------------------------------------------------------------------- OpenAI
def test_openai_completions_plain_and_streamed(loaded):
    with client_for(loaded) as client:
        assert client.get("/v1/models").json() == {"object": "list", "data": [
            {"id": "tiny", "object": "model", "created": client.get("/v1/models").json()["data"][0]["created"],
             "owned_by": "s2s-ft"}]}
        body = client.post("/v1/completions", json={"model": "tiny", "prompt": SOURCES[:2], "max_tokens": 6,
                                                    "temperature": 0}).json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert [c["text"] for c in body["choices"]] == [expected(loaded, s, max_tgt_length=6) for s in SOURCES[:2]]
        assert [c["index"] for c in body["choices"]] == [0, 1]
        assert body["usage"]["prompt_tokens"] == sum(len(s.split()) + 2 for s in SOURCES[:2])
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        chunks = sse_events(client.post("/v1/completions", json={
            "model": "tiny", "prompt": SOURCES[:2], "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}), b"data: ")
        assert chunks[-1] == "[DONE]" and chunks[-2]["usage"] == body["usage"] and chunks[-2]["choices"] == []
        for index in (0, 1):
            mine = [c["choices"][0] for c in chunks[:-2] if c["choices"][0]["index"] == index]
            assert "".join(c["text"] for c in mine) == body["choices"][index]["text"]
            assert [c["finish_reason"] for c in mine][-1] == body["choices"][index]["finish_reason"]
        beams = client.post("/v1/completions", json={"model": "tiny", "prompt": SOURCES[0], "n": 2,
                                                     "num_beams": 3}).json()
        nbest = loaded.decode_ids(loaded.source_ids([SOURCES[0]])[0],
                                  __import__("s2s_ft.decoding.search", fromlist=["SearchConfig"]).SearchConfig(
                                      beam_size=3, nbest=2, max_tgt_length=8))[0]
        assert [c["text"] for c in beams["choices"]] == [loaded.text(h.tokens) for h in nbest]
        sampled = client.post("/v1/completions", json={"model": "tiny", "prompt": SOURCES[0], "temperature": 0.7,
                                                       "seed": 4, "max_tokens": 5}).json()
        assert sampled["choices"][0]["text"] == expected(loaded, SOURCES[0], do_sample=True, temperature=0.7,
                                                         seed=4, max_tgt_length=5)


OPENAI_ERRORS = [
    ({"model": "other", "prompt": "a dog"}, 404, "model_not_found", "model"),
    ({"model": "tiny"}, 400, "invalid_request", "prompt"),
    ({"model": "tiny", "prompt": [1, 2]}, 400, "invalid_request", "prompt"),
    ({"model": "tiny", "prompt": "a dog", "logprobs": 2}, 400, "invalid_request", "logprobs"),
    ({"model": "tiny", "prompt": "a dog", "n": 2}, 400, "invalid_request", "n"),
    ({"model": "tiny", "prompt": "a dog", "temperature": 3}, 400, "invalid_request", "temperature"),
    ({"model": "tiny", "prompt": "a dog", "best_of": 3, "n": 2, "temperature": 1, "stream": True}, 400,
     "invalid_request", "stream"),
]


@pytest.mark.parametrize("body, status, code, param", OPENAI_ERRORS, ids=[str(b) for b, *_ in OPENAI_ERRORS])
def test_openai_errors_in_openai_shape(loaded, body, status, code, param):
    with client_for(loaded) as client:
        response = client.post("/v1/completions", json=body)
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
        assert error["param"] == param and error["type"] == "invalid_request_error"
        chat = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
        assert chat.status_code == 400 and "/v1/completions" in chat.json()["error"]["message"]


# -------------------------------------------------------------------------------------------------- answers
@pytest.fixture(scope="module")
def answer_loaded(tmp_path_factory):
    path = make_answer_checkpoint(tmp_path_factory.mktemp("answers"), "span+segment", "pseudo_masked", True)
    return load_decoder(path, "cpu", detokenize="spaced")


def test_answers_reach_the_model_through_every_api(answer_loaded):
    sentence, answers = "the cat sat on the mat", ["the mat", "cat"]
    want = answer_loaded.decode_texts([sentence, sentence], answers=answers)
    assert want[0] != want[1]
    with client_for(answer_loaded) as client:
        for answer, text in zip(answers, want):
            assert client.post("/generate", json={"src": sentence, "answer": answer}).json()["output"] == text
            assert client.post("/generate", json={"src": f"{sentence} [SEP] {answer}"}).json()["output"] == text
            tgi = client.post("/generate", json={"inputs": sentence, "parameters": {"answer": answer}}).json()
            assert tgi["generated_text"] == text
            events = sse_events(client.post("/generate_stream", json={"inputs": f"{sentence} [SEP] {answer}"}))
            assert events[-1]["generated_text"] == text
            openai = client.post("/v1/completions", json={"model": "tiny", "prompt": sentence, "answer": answer})
            assert openai.json()["choices"][0]["text"] == text
        both = client.post("/generate", json={"src": [sentence, sentence], "answer": answers}).json()
        assert both["output"] == want
        missing = client.post("/generate", json={"inputs": sentence})
        assert missing.status_code == 422 and "about a given answer" in missing.json()["error"]
        assert client.get("/info").json()["answer_encoding"] == "span+segment"
