"""OpenAI's completions API, so that the ``openai`` client (``base_url=".../v1"``, any ``api_key``) and tools built on
it work unchanged.

* ``POST /v1/completions``: ``prompt`` (a string or a list of strings) -> ``choices`` (``text``, ``index``,
  ``finish_reason`` "stop" or "length", ``logprobs`` null) and ``usage``; with ``"stream": true`` chunks
  ``data: {...}`` as tokens come, ``data: [DONE]`` at the end (``stream_options.include_usage``: a last chunk with
  the usage);
* ``GET /v1/models``: the one model this server holds;
* ``POST /v1/chat/completions``: refused with a clear error. A sequence-to-sequence model maps a source to a target;
  reading a conversation as its source would answer something it was never trained to answer.

Settings: ``max_tokens`` (the closing [SEP] counts; absent: the checkpoint's target length), ``temperature`` (0:
greedy or beam search; > 0: sampling at that temperature; absent: the server's default, greedy unless it was
started with --do_sample), ``top_p``, ``n`` (samples per prompt; with beam search the n best), ``best_of`` (that
many samples, the n most likely returned), ``stop`` (up to --max_stop_sequences; not part of the text), ``seed``,
``echo`` (the prompt before the text), ``user`` (accepted, unused). Refused by name: ``logprobs``, ``suffix``,
``logit_bias``, non-zero ``presence_penalty`` / ``frequency_penalty``. Added (send them with the client's
``extra_body``): ``num_beams``, ``length_penalty``, ``min_tokens``, ``top_k``, ``answer`` (or the prompt as
``"sentence [SEP] answer"``).

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (400 for a bad request, 404 for an unknown
model, 429, 500, 503, 504); an error once a stream has begun is a ``data: {"error": ...}`` chunk before
``data: [DONE]``.
"""
import json
import secrets
import time
from typing import Any

from s2s_ft.serving.admission import Parsed, api_context
from s2s_ft.serving.engine import Engine, Output, answer_source
from s2s_ft.serving.errors import RequestError, check_type, invalid, parse_json_object

SHAPE = '{"model": "...", "prompt": "..." or ["...", ...], ...}'
TYPES = {"model": str, "max_tokens": int, "temperature": float, "top_p": float, "n": int, "best_of": int,
         "stream": bool, "seed": int, "echo": bool, "user": str, "num_beams": int, "length_penalty": float,
         "min_tokens": int, "top_k": int, "answer": str}
REFUSED = {"logprobs": (None,), "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
           "frequency_penalty": (None, 0, 0.0)}
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_exceeded", 499: "client_gone", 500: "server_error",
               503: "server_error", 504: "timeout"}


def status_of(error: RequestError) -> int:
    """OpenAI answers a bad request with 400 (this server's 413 / 422 too)."""
    return 400 if error.status in (413, 422) else error.status


def error_body(error: RequestError) -> dict:
    return {"error": {"message": str(error), "type": ERROR_TYPES.get(error.status, "server_error"),
                      "param": error.param, "code": error.error_type}}


def model_card(engine: Engine) -> dict:
    return {"id": engine.model_id, "object": "model", "created": int(engine.created), "owned_by": "s2s-ft"}


def models(engine: Engine) -> dict:
    return {"object": "list", "data": [model_card(engine)]}


def read_settings(request: dict) -> dict:
    values: dict[str, Any] = {}
    for name, value in request.items():
        if name in REFUSED:
            if value not in REFUSED[name]:
                raise invalid(f"{name} is not supported by this sequence-to-sequence server", name)
        elif name in ("prompt", "stop", "stream_options"):
            values[name] = value
        elif name in TYPES:
            if value is not None:
                values[name] = check_type(name, value, TYPES[name])
        else:
            raise invalid(f"unknown field {name[:40]!r}", name)
    return values


def search_options(v: dict) -> dict:
    """SEARCH_OPTIONS of the request's settings ``v``."""
    options: dict[str, Any] = {}
    n, best_of = v.get("n", 1), v.get("best_of", v.get("n", 1))
    if n < 1 or best_of < n:
        raise invalid("n must be >= 1 and best_of >= n", "best_of" if best_of < n else "n")
    if "temperature" in v:
        if not 0 <= v["temperature"] <= 2:
            raise invalid("temperature must lie in [0, 2]", "temperature")
        if v["temperature"] > 0:
            options.update(do_sample=True, temperature=v["temperature"])
        else:
            options["do_sample"] = False
    for theirs, ours in (("top_p", "top_p"), ("top_k", "top_k"), ("seed", "seed"), ("max_tokens", "max_tgt_length"),
                         ("num_beams", "beam_size"), ("length_penalty", "length_penalty"), ("min_tokens", "min_len")):
        if theirs in v:
            options[ours] = v[theirs]
    if ("top_p" in v or "top_k" in v) and "temperature" not in v:
        options["do_sample"] = True  # a nucleus or top-k means sampling
    if best_of > 1:
        if options.get("do_sample"):
            options["num_return_sequences"] = best_of
        elif v.get("num_beams", 1) >= best_of:
            options["nbest"] = best_of
        else:
            raise invalid(f"n / best_of {best_of} needs sampling (temperature > 0) or beam search (num_beams >= "
                          f"{best_of})", "n")
    if options.get("do_sample") and "seed" not in options:
        options["seed"] = secrets.randbits(31)
    return options


def prompts_of(value) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return value
    raise invalid("prompt must be a string or a non-empty list of strings (token ids are not taken)", "prompt")


def stops_of(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise invalid("stop must be a string or a list of strings", "stop")


def translate(engine: Engine, body: bytes) -> Parsed:
    request = parse_json_object(body, SHAPE)
    if "prompt" not in request:
        raise invalid("missing prompt", "prompt")
    v = read_settings(request)
    if "model" in v and v["model"] != engine.model_id:
        raise RequestError(404, f"The model `{v['model']}` does not exist; this server holds `{engine.model_id}`",
                           "model_not_found", param="model")
    prompts = prompts_of(v["prompt"])
    engine.check_texts(prompts)
    sources = [answer_source(engine.answer_encoding, engine.separator, p, v.get("answer"), "prompt")
               for p in prompts]
    options = search_options(v)
    if v.get("stream") and (options.get("num_return_sequences", 1) > v.get("n", 1) or options.get("nbest", 1) > 1):
        raise invalid("stream cannot be combined with best_of > n, nor with n > 1 beam-search results",
                      "stream")
    include_usage = isinstance(v.get("stream_options"), dict) and bool(v["stream_options"].get("include_usage"))
    job = engine.job(sources, options, False, stops_of(v.get("stop")), include_stop=False)
    return Parsed(job, bool(v.get("stream")), api_context(
        prompts=prompts, n=v.get("n", 1), echo=v.get("echo", False), include_usage=include_usage,
        id=f"cmpl-{secrets.token_hex(12)}", created=int(time.time()), model=engine.model_id))


def chosen(parsed: Parsed, hyps: list[Output]) -> list[Output]:
    """The n outputs a prompt answers with: the most likely of its samples (best_of), or its n best beams."""
    if parsed.job.config.do_sample:
        hyps = sorted(hyps, key=lambda o: o.log_prob, reverse=True)
    return hyps[:parsed.context["n"]]


def finish_reason(output: Output) -> str:
    return "stop" if output.finish_reason in ("eos", "stop") else "length"


def usage(parsed: Parsed, completion_tokens: int) -> dict:
    prompt_tokens = sum(len(ids) + 2 for ids in parsed.job.ids)  # [CLS] source [SEP]
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(parsed: Parsed, outputs: list[list[Output]]) -> dict:
    c = parsed.context
    choices, completion = [], 0
    for p, hyps in enumerate(outputs):
        picked = chosen(parsed, hyps) or [Output("", [], [], [], "empty")]
        for j, output in enumerate(picked):
            text = (c["prompts"][p] if c["echo"] else "") + output.text
            choices.append({"text": text, "index": p * c["n"] + j, "logprobs": None,
                            "finish_reason": finish_reason(output)})
        completion += sum(o.generated_tokens for o in hyps)
    return {"id": c["id"], "object": "text_completion", "created": c["created"], "model": c["model"],
            "choices": choices, "usage": usage(parsed, completion)}


def chunk(parsed: Parsed, index: int, text: str, reason=None) -> bytes:
    c = parsed.context
    payload = {"id": c["id"], "object": "text_completion", "created": c["created"], "model": c["model"],
               "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]}
    return sse(payload)


def sse(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()) \
        + b"\n\n"


async def stream_events(parsed: Parsed, items):
    """OpenAI's chunks of a stream's items: text pieces as they come, a chunk with each choice's finish_reason, the
    usage when asked, then ``[DONE]``. Sampled choices stream as they are drawn (index: prompt * n + sample), so
    with best_of > n every sample streams; beam search sends its best hypothesis when the search is over."""
    c, completion = parsed.context, 0
    try:
        if c["echo"]:
            for p, prompt in enumerate(c["prompts"]):
                for j in range(c["n"]):
                    yield chunk(parsed, p * c["n"] + j, prompt)
        async for item in items:
            index = item.source * c["n"] + item.sample
            if item.output is None:
                if item.text:
                    yield chunk(parsed, index, item.text)
                continue
            completion += item.output.generated_tokens
            yield chunk(parsed, index, item.text, finish_reason(item.output))
        if c["include_usage"]:
            yield sse({"id": c["id"], "object": "text_completion", "created": c["created"], "model": c["model"],
                       "choices": [], "usage": usage(parsed, completion)})
    except RequestError as error:
        yield sse(error_body(error))
    yield sse(b"[DONE]")


def refuse_chat() -> RequestError:
    return RequestError(400, "this server holds a sequence-to-sequence model (a source in, a target out), not a chat "
                             "model: send the source as the prompt of POST /v1/completions", "not_a_chat_model",
                        param="messages")
