"""The project's own request, as before the other APIs came: ``POST /generate`` with ``{"src": ...}``.

``{"src": "one source"}`` -> ``{"output": "one line"}``; ``{"src": ["a", "b"]}`` -> ``{"output": ["..", ".."]}`` in
order. The search options of ``s2s-ft-decode`` (``SEARCH_OPTIONS``: beam_size, max_tgt_length, min_len,
length_penalty, forbid_duplicate_ngrams, ngram_size, forbid_ignore_word, nbest, do_sample, top_k, top_p, temperature,
num_return_sequences, seed, source_words_only) ride along; those not given take the server's flags. With nbest or
num_return_sequences > 1 a source's output is a list of strings. A sampling request without a ``seed`` gets a random
one, and every sampling answer says its seed. For a checkpoint trained with answers, ``"answer"`` gives each
source's answer (a string, or a list as long as ``src``), or the text says it: ``"sentence [SEP] answer"``.
"""
import secrets

from s2s_ft.serving.admission import Parsed
from s2s_ft.serving.engine import Engine, Output, answer_source
from s2s_ft.serving.errors import RequestError, check_type, invalid, parse_json_object

SHAPE = '{"src": "..." or ["...", ...], options}'


def translate(engine: Engine, body: bytes) -> Parsed:
    """The Job of a ``{"src": ...}`` request (RequestError 400 / 413 / 422 if it is not one)."""
    return parse(engine, parse_json_object(body, SHAPE))


def parse(engine: Engine, request: dict) -> Parsed:
    if "src" not in request:
        raise invalid('missing "src": a string or a list of strings (or TGI\'s "inputs")')
    unknown = sorted(set(request) - {"src", "answer"} - set(engine.types))
    if unknown:
        raise invalid(f"unknown option {unknown[0][:40]!r}; the options are answer, {', '.join(engine.types)}")
    options = {name: check_type(name, value, engine.types[name]) for name, value in request.items()
               if name not in ("src", "answer")}
    if options.get("do_sample", engine.defaults["do_sample"]) and "seed" not in options:
        # a request that names no seed gets a fresh one (returned with the answer, so the sample can be drawn
        # again); the server's --seed would give every such request the same samples
        options["seed"] = secrets.randbits(31)
    single = isinstance(request["src"], str)
    texts = [request["src"]] if single else request["src"]
    engine.check_texts(texts)
    answers = request.get("answer")
    if answers is not None and not single and not (isinstance(answers, list) and len(answers) == len(texts)):
        raise invalid(f'"answer" must be a list of {len(texts)} answers, one per source')
    answers = [answers] if single else (answers or [None] * len(texts))
    for i, answer in enumerate(answers):
        if answer is not None and not isinstance(answer, str):
            raise invalid(f'"answer" must be a string{"" if single else " per source"}, got {repr(answer)[:40]}')
    sources = [answer_source(engine.answer_encoding, engine.separator, text, answer,
                             "src" if single else f"src[{i}]") for i, (text, answer) in enumerate(zip(texts, answers))]
    return Parsed(engine.job(sources, options, single))


def answer(parsed: Parsed, outputs: list[list[Output]]) -> dict:
    job = parsed.job
    as_list = job.config.nbest > 1 or job.config.num_return_sequences > 1
    texts = [[o.text for o in hyps] if as_list else (hyps[0].text if hyps else "") for hyps in outputs]
    output = texts[0] if job.single else texts
    return {"output": output, "seed": job.config.seed} if job.config.do_sample else {"output": output}


def error_body(error: RequestError) -> dict:
    return {"error": str(error), "error_type": error.error_type}
