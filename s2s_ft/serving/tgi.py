"""Hugging Face text-generation-inference's API, so that TGI's clients (``huggingface_hub.InferenceClient``,
``text_generation``, LangChain / LlamaIndex wrappers, curl) work unchanged.

* ``POST /generate`` ``{"inputs": "...", "parameters": {...}}`` -> ``{"generated_text": ..., "details": ...}``;
* ``POST /generate_stream``: Server-Sent Events, ``data:{json}`` per token (``token``: id, text, logprob, special),
  the last one also with ``generated_text`` (and ``details`` when asked); no ``[DONE]``: the stream just closes;
* ``POST /`` (what ``InferenceClient(base_url=...)`` posts to): ``{"inputs", "parameters", "stream"}``, answered as
  a list with one response, or as the stream;
* ``GET /info``: TGI's fields.

Errors are TGI's ``{"error": ..., "error_type": ...}``: 422 ``validation``, 429 ``overloaded``, 424 ``generation``
(decoding failed), and this server's 413 / 503 / 504 where TGI has no such case. A stream always answers 200 and
carries an error as an event ``data:{"error": ..., "error_type": ...}``, as TGI does.

Parameters: every TGI parameter is accepted with the value that means "off" (``null``, ``false``, 1.0 for the
penalties) and the ones that mean something for this model work: ``max_new_tokens`` (the closing [SEP] counts,
as TGI counts the EOS token), ``do_sample``, ``temperature`` / ``top_k`` / ``top_p`` (each turns sampling on, as in
TGI), ``seed``, ``stop``, ``truncate`` (the source's first N word pieces; a sequence-to-sequence source is cut at
its end), ``best_of`` (that many samples, the most likely returned, the others in ``best_of_sequences``),
``details``, ``decoder_input_details`` (the source's tokens as ``prefill``; their ``logprob`` is null: a source is
read, not predicted), ``return_full_text``. Refused by name with 422 when set to anything else:
``repetition_penalty``, ``frequency_penalty``, ``typical_p``, ``top_n_tokens``, ``grammar``, ``watermark``,
``adapter_id``. Added (TGI has no beam search): ``num_beams``, ``length_penalty`` (GNMT's, as s2s-ft-decode),
``min_new_tokens``, ``no_repeat_ngram_size``, and ``answer`` for checkpoints trained with answers (or
``"inputs": "sentence [SEP] answer"``, which every TGI client can send). Beam search streams too: its tokens come
when the search is over (beams are revised until then); ``best_of > 1`` cannot stream (422, as in TGI).
"""
import json
import secrets
from typing import Any, Optional

from s2s_ft import __version__
from s2s_ft.serving.admission import Parsed, api_context
from s2s_ft.serving.engine import Engine, Output, StreamItem, answer_source
from s2s_ft.serving.errors import RequestError, check_type, invalid, parse_json_object

SHAPE = '{"inputs": "...", "parameters": {...}}'
# TGI parameters accepted only with the value that means "off": name -> (JSON type, the values that are off)
OFF_ONLY = {"repetition_penalty": (float, (None, 1.0)), "frequency_penalty": (float, (None, 0.0)),
            "typical_p": (float, (None, 1.0)), "top_n_tokens": (int, (None, 0)), "grammar": (None, (None,)),
            "watermark": (bool, (None, False)), "adapter_id": (str, (None,))}
TYPES = {"best_of": int, "decoder_input_details": bool, "details": bool, "do_sample": bool, "max_new_tokens": int,
         "return_full_text": bool, "seed": int, "temperature": float, "top_k": int, "top_p": float, "truncate": int,
         "num_beams": int, "length_penalty": float, "min_new_tokens": int, "no_repeat_ngram_size": int,
         "answer": str}
FINISH = {"eos": "eos_token", "length": "length", "stop": "stop_sequence", "cancelled": "length", "empty": "length"}
ERROR_TYPES = {422: "validation", 400: "validation", 413: "validation", 429: "overloaded", 500: "generation",
               503: "unavailable", 504: "timeout", 499: "client_gone"}


def status_of(error: RequestError) -> int:
    return 424 if error.error_type == "decoding_failed" else error.status


def error_body(error: RequestError) -> dict:
    kind = ERROR_TYPES.get(status_of(error), "generation" if status_of(error) == 424 else error.error_type)
    message = f"Input validation error: {error}" if kind == "validation" else str(error)
    return {"error": message, "error_type": kind}


def parameters_of(request: dict) -> dict:
    parameters = request.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise invalid('"parameters" must be an object')
    return parameters


def options_of(engine: Engine, parameters: dict) -> tuple[dict, dict]:
    """(the search options, the answer's other settings) of TGI ``parameters``; 422 naming what cannot be."""
    values: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in OFF_ONLY:
            wanted, off = OFF_ONLY[name]
            if value not in off or (value is not None and wanted is not None and not isinstance(value, wanted)):
                raise invalid(f"`{name}` is not supported by this sequence-to-sequence server (send null)", name)
        elif name == "stop":
            if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
                raise invalid("`stop` must be a list of strings", "stop")
            values["stop"] = value or []
        elif name in TYPES:
            values[name] = None if value is None else check_type(name, value, TYPES[name])
        else:
            raise invalid(f"unknown parameter `{name[:40]}`; TGI's parameters and num_beams, length_penalty, "
                          f"min_new_tokens, no_repeat_ngram_size, answer are understood", name)
    present = {k: v for k, v in values.items() if v is not None}
    return search_options(present), present


def search_options(p: dict) -> dict:
    """SEARCH_OPTIONS of the (non-null) TGI parameters ``p``; TGI turns sampling on for any sampling knob."""
    options: dict[str, Any] = {}
    sampling = p.get("do_sample", False) or any(k in p for k in ("temperature", "top_k", "top_p"))
    if p.get("best_of", 1) > 1:
        if not sampling:
            raise invalid("`best_of` > 1 needs sampling (do_sample, or temperature / top_k / top_p), as in TGI",
                          "best_of")
        options["num_return_sequences"] = p["best_of"]
    if sampling:
        options["do_sample"] = True
    if "temperature" in p and p["temperature"] <= 0:
        raise invalid("`temperature` must be strictly positive", "temperature")
    if "top_p" in p and not 0 < p["top_p"] < 1:
        raise invalid("`top_p` must be > 0.0 and < 1.0", "top_p")
    if "top_k" in p and p["top_k"] <= 0:
        raise invalid("`top_k` must be strictly positive", "top_k")
    for name in ("max_new_tokens", "truncate"):
        if name in p and p[name] < 1:
            raise invalid(f"`{name}` must be strictly positive", name)
    names = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed",
             "max_new_tokens": "max_tgt_length", "num_beams": "beam_size", "length_penalty": "length_penalty",
             "min_new_tokens": "min_len"}
    options.update({ours: p[theirs] for theirs, ours in names.items() if theirs in p})
    if p.get("no_repeat_ngram_size"):
        options.update(forbid_duplicate_ngrams=True, ngram_size=p["no_repeat_ngram_size"])
    if options.get("do_sample") and "seed" not in options:
        options["seed"] = secrets.randbits(31)
    return options


def translate(engine: Engine, body: bytes, stream: Optional[bool] = None) -> Parsed:
    """A TGI request (``stream``: the route's; None: the body's ``"stream"``, the compatibility route ``POST /``)."""
    request = parse_json_object(body, SHAPE)
    unknown = sorted(set(request) - {"inputs", "parameters", "stream"})
    if unknown:
        raise invalid(f"unknown field `{unknown[0][:40]}`; a request is {SHAPE}")
    inputs = request.get("inputs")
    if not isinstance(inputs, str):
        raise invalid("`inputs` must be a string")
    options, p = options_of(engine, parameters_of(request))
    streaming = bool(request.get("stream")) if stream is None else stream
    if streaming and p.get("best_of", 1) > 1:
        raise invalid("`best_of` != 1 is not supported when streaming tokens", "best_of")
    engine.check_texts([inputs])
    source = answer_source(engine.answer_encoding, engine.separator, inputs, p.get("answer"), "inputs")
    job = engine.job([source], options, True, p.get("stop", []), include_stop=True, truncate=p.get("truncate"))
    return Parsed(job, streaming, api_context(inputs=inputs, details=p.get("details", False),
                                              prefill=p.get("decoder_input_details", False),
                                              full_text=p.get("return_full_text", False),
                                              compat=stream is None, best_of=p.get("best_of", 1)))


def token_entries(engine: Engine, output: Output) -> list[dict]:
    entries = [{"id": t, "text": text, "logprob": lp, "special": False}
               for t, text, lp in zip(output.tokens, output.token_texts, output.token_log_probs)]
    if output.finish_reason == "eos":
        entries.append({"id": engine.loaded.decoder.special.sep, "text": "", "logprob": output.token_log_probs[-1],
                        "special": True})
    return entries


def prefill(engine: Engine, parsed: Parsed) -> list[dict]:
    special = engine.loaded.decoder.special
    ids = [special.cls, *parsed.job.ids[0], special.sep]
    with engine.tokenizer_lock:
        texts = engine.loaded.tokenizer.convert_ids_to_tokens(ids)
    return [{"id": i, "text": text, "logprob": None} for i, text in zip(ids, texts)]


def sequence(engine: Engine, parsed: Parsed, output: Output) -> dict:
    c = parsed.context
    return {"generated_text": (c["inputs"] if c["full_text"] else "") + output.text,
            "finish_reason": FINISH[output.finish_reason], "generated_tokens": output.generated_tokens,
            "seed": parsed.job.config.seed if parsed.job.config.do_sample else None,
            "prefill": prefill(engine, parsed) if c["prefill"] else [], "tokens": token_entries(engine, output)}


def answer(engine: Engine, parsed: Parsed, outputs: list[list[Output]]):
    hyps = outputs[0] or [Output("", [], [], [], "empty")]
    ranked = sorted(hyps, key=lambda o: o.log_prob, reverse=True) if parsed.context["best_of"] > 1 else hyps
    best = sequence(engine, parsed, ranked[0])
    response = {"generated_text": best.pop("generated_text")}
    if parsed.context["details"]:
        others = [sequence(engine, parsed, o) for o in ranked[1:]] if parsed.context["best_of"] > 1 else None
        response["details"] = {**best, "top_tokens": None, "best_of_sequences": others}
    return [response] if parsed.context["compat"] else response


def event(payload: dict) -> bytes:
    """One Server-Sent Event as TGI writes it: ``data:`` and the JSON, no space."""
    return b"data:" + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def stream_events(engine: Engine, parsed: Parsed, items):
    """TGI's events of a stream's items: each token as it comes; the last one carries the generated text (and the
    details, when asked). An error while streaming is one more event."""
    held, index, sent = None, 0, ""
    try:
        async for item in items:
            if item.output is None:
                if held is not None:
                    yield event(held)
                index += 1
                held = {"index": index, "token": {"id": item.token, "text": item.text, "logprob": item.log_prob,
                                                  "special": item.special},
                        "top_tokens": None, "generated_text": None, "details": None}
                sent += item.text
                continue
            if held is None:  # ended with no token: a last event all the same, as TGI always sends one
                index += 1
                held = {"index": index, "token": {"id": engine.loaded.decoder.special.sep, "text": "",
                                                  "logprob": 0.0, "special": True}, "top_tokens": None}
            held["token"]["text"] += item.text
            c = parsed.context
            held["generated_text"] = (c["inputs"] if c["full_text"] else "") + item.output.text
            held["details"] = None if not c["details"] else {
                "finish_reason": FINISH[item.output.finish_reason], "generated_tokens": item.output.generated_tokens,
                "seed": parsed.job.config.seed if parsed.job.config.do_sample else None,
                "input_length": len(parsed.job.ids[0]) + 2}
            yield event(held)
            held = None
    except RequestError as error:
        yield event(error_body(error))


def info(engine: Engine) -> dict:
    """``GET /info``: TGI's fields, and this server's answer settings."""
    loaded, limits = engine.loaded, engine.limits
    dtype = loaded.decoder.autocast_dtype or next(loaded.decoder.model.parameters()).dtype
    return {"model_id": engine.model_id, "model_sha": None, "model_dtype": str(dtype).replace("torch.", ""),
            "model_device_type": loaded.decoder.device.type, "model_pipeline_tag": "text2text-generation",
            "max_concurrent_requests": limits.max_queue, "max_best_of": limits.max_beams,
            "max_stop_sequences": limits.max_stop_sequences, "max_input_tokens": loaded.max_source_length - 2,
            "max_input_length": loaded.max_source_length - 2,
            "max_total_tokens": loaded.max_source_length + engine.max_target_tokens,
            "max_client_batch_size": limits.max_sources_per_request, "max_batch_size": limits.max_batch_size,
            "validation_workers": 2, "waiting_served_ratio": None, "max_batch_total_tokens": None,
            "max_waiting_tokens": None, "router": "s2s-ft-serve", "version": __version__, "sha": None,
            "docker_label": None, "answer_encoding": engine.answer_encoding,
            "answer_separator": engine.separator if engine.answer_encoding else None,
            "detokenize": loaded.detokenize}
