"""The decoding server: ``s2s-ft-serve``, ``python -m s2s_ft.serve``. Loads a fine-tuned checkpoint once and answers
JSON over HTTP (FastAPI + uvicorn, the ``serve`` extra: ``pip install -e .[serve]``).

    s2s-ft-serve --model_path out/ckpt-1000 --port 8000
    curl -s localhost:8000/generate -d '{"src": "the source", "beam_size": 5}'     # {"output": "..."}

* ``POST /generate``: ``{"src": "one source"}`` -> ``{"output": "one line"}``; ``{"src": ["a", "b"]}`` ->
  ``{"output": ["..", ".."]}`` in order. The search options of ``s2s-ft-decode`` (``SEARCH_FLAGS`` of
  s2s_ft/cli.py: beam_size, max_tgt_length, min_len, length_penalty, forbid_duplicate_ngrams, ngram_size,
  forbid_ignore_word, nbest, do_sample, top_k, top_p, temperature, num_return_sequences, seed) ride along in the same
  object; those not given take the server's flags. With nbest or num_return_sequences > 1 a source's output is a
  list of strings. Sampling seeds from (seed, the source's position in its request, sample index), so a request's
  samples do not depend on what it was batched with; a sampling request without a ``seed`` gets a random one, and
  every sampling answer says its seed (``{"output": ..., "seed": N}``) so the samples can be drawn again.
* ``GET /health``: 200 once the model is loaded (it is loaded before the server listens).
* Dynamic batching (``Batcher``): requests are collected on the event loop until the oldest has waited
  ``--batch_window_ms`` or ``--max_batch_size`` sources are waiting; the collected requests are grouped by their
  search settings and each group is decoded as one call in the one decoding thread, while the event loop keeps
  answering. A request with more sources than ``--max_batch_size`` is decoded on its own, in batches of that size.
* Errors: a bad request gets 400 (not JSON, not an object), 413 (more than ``--max_sources_per_request`` sources)
  or 422 (anything else, e.g. beam_size or num_return_sequences over ``--max_beams``), with
  ``{"error": "one line"}``. An exception while decoding a group is retried request by
  request, so only the request that fails gets a 500; the server goes on.
"""
# No ``from __future__ import annotations``: FastAPI reads the route's ``request: Request`` annotation at runtime, and
# Request is imported inside build_app (FastAPI is an optional extra).
import argparse
import asyncio
import dataclasses
import json
import logging
import math
import re
import secrets
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, Optional

from .cli import (SEARCH_FLAGS, add_detokenize_flag, add_device_flags, add_log_level_flag, add_precision_flags,
                  add_quantize_flag, add_search_flags, check_device, check_quantize_flag, check_search_args, run_cli,
                  search_config)
from .data import tokenize_sides
from .decoding import SearchConfig
from .detokenize import DETOKENIZE_HELP
from .errors import UsageError
from .inference import LoadedDecoder, forbid_ignore_ids, load_decoder
from .precision import resolve_precision

log = logging.getLogger("s2s_ft.serve")
TOO_LONG = ("truncate", "reject")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def option_message(message: str) -> str:
    """A flag check's message in the words of the JSON request (``--top_k`` -> ``top_k``)."""
    return one_line(re.sub(r"--(\w+)", r"\1", str(message)))


@dataclasses.dataclass
class Job:
    """One request: its sources (token ids), its search settings and where its answer goes."""
    ids: list[list[int]]
    config: SearchConfig
    single: bool  # src was one string: answer one output, not a list
    key: tuple = ()  # requests with equal keys are decoded together
    future: Optional[asyncio.Future] = None
    arrived: float = 0.0

    def __post_init__(self):
        self.key = dataclasses.astuple(self.config)


def option_types(parser: argparse.ArgumentParser) -> dict[str, type]:
    """Each search option's JSON type, read from its flag (store_true: bool, type=int / float, else str)."""
    types = {}
    for action in parser._actions:
        if action.dest in SEARCH_FLAGS:
            types[action.dest] = bool if action.const is True else (action.type or str)
    return types


def check_type(name: str, value, wanted: type):
    """``value`` if it is a JSON value of type ``wanted`` (an int where a float is wanted); else RequestError."""
    if wanted is bool:
        ok = isinstance(value, bool)
    elif wanted is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif wanted is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
        raise RequestError(422, f"{name} must be {names[wanted]}, got {json.dumps(value)[:40]}")
    return float(value) if wanted is float else value


def check_settings(args: argparse.Namespace, max_beams: int) -> None:
    """UsageError for impossible search settings: decode's checks, and the server's --max_beams."""
    check_search_args(args)
    for name in ("beam_size", "num_return_sequences"):
        if getattr(args, name) > max_beams:
            raise UsageError(f"--{name} {getattr(args, name)} exceeds --max_beams {max_beams}")


class Server:
    """What the HTTP routes do, without HTTP: parse and check a request into a ``Job`` (on the event loop), and
    decode a group of jobs that share their settings (in the decoding thread)."""

    def __init__(self, loaded: LoadedDecoder, args: argparse.Namespace, types: dict[str, type]):
        """``args``: the flags of ``build_parser`` (the search flags are the requests' defaults); ``types``: each
        option's JSON type (``option_types``)."""
        self.loaded, self.types = loaded, types
        self.defaults = argparse.Namespace(**{name: getattr(args, name) for name in SEARCH_FLAGS})
        self.max_batch_size, self.max_sources_per_request = args.max_batch_size, args.max_sources_per_request
        self.max_beams, self.too_long, self.model_path = args.max_beams, args.too_long, args.model_path
        # HF fast tokenizers must not be used from two threads at once ("Already borrowed").
        self.tokenizer_lock = threading.Lock()
        self.default_ignore = self.ignore_ids(args.forbid_ignore_word)

    def ignore_ids(self, words: Optional[str]) -> tuple[int, ...]:
        with self.tokenizer_lock:
            return tuple(forbid_ignore_ids(self.loaded.tokenizer, words, self.model_path or "the checkpoint"))

    # -- parsing (event loop) --------------------------------------------------------------------------------------
    def parse(self, body: bytes) -> Job:
        """The request ``body`` as a Job; RequestError (400 / 413 / 422) with the reason if it is not one."""
        try:
            request = json.loads(body)
        except ValueError as error:
            raise RequestError(400, f"the body is not JSON: {one_line(error)}") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise RequestError(400, "the body nests too deeply to be a request") from None
        if not isinstance(request, dict):
            raise RequestError(400, 'the body must be a JSON object: {"src": "..." or ["...", ...], options}')
        if "src" not in request:
            raise RequestError(422, 'missing "src": a string or a list of strings')
        unknown = sorted(set(request) - {"src"} - set(self.types))
        if unknown:
            raise RequestError(422, f"unknown option {unknown[0]!r}; the options are {', '.join(self.types)}")
        options = {name: check_type(name, value, self.types[name]) for name, value in request.items() if name != "src"}
        if options.get("do_sample", self.defaults.do_sample) and "seed" not in options:
            # a request that names no seed gets a fresh one (returned with the answer, so the sample can be drawn
            # again); the server's --seed would give every such request the same samples
            options["seed"] = secrets.randbits(31)
        config = self.config(options)
        single = isinstance(request["src"], str)
        ids = self.source_ids([request["src"]] if single else request["src"])
        try:
            self.loaded.check_position_budget(ids, config.max_tgt_length, remedy="lower max_tgt_length")
        except UsageError as error:
            raise RequestError(422, option_message(error)) from None
        return Job(ids, config, single)

    def settings(self, options: dict) -> argparse.Namespace:
        """The server's search flags overridden by a request's ``options`` (max_tgt_length resolved)."""
        args = argparse.Namespace(**{**vars(self.defaults), **options})
        if args.max_tgt_length is None:
            args.max_tgt_length = int(self.loaded.settings["max_target_seq_length"])
        return args

    def config(self, options: dict) -> SearchConfig:
        """A request's search settings (RequestError 422 if they are impossible)."""
        args = self.settings(options)
        try:
            check_settings(args, self.max_beams)
            ignore = self.default_ignore if "forbid_ignore_word" not in options else self.ignore_ids(
                args.forbid_ignore_word)
        except UsageError as error:
            raise RequestError(422, option_message(error)) from None
        return search_config(args, args.max_tgt_length, ignore)

    def source_ids(self, sources) -> list[list[int]]:
        """Token ids of ``sources`` (a non-empty list of non-empty strings), truncated to the checkpoint's source
        length (``--too_long truncate``, as s2s-ft-decode does) or refused (``reject``)."""
        if not isinstance(sources, list) or not sources:
            raise RequestError(422, '"src" must be a non-empty string or a non-empty list of strings')
        if len(sources) > self.max_sources_per_request:
            raise RequestError(413, f"{len(sources)} sources in one request; the server takes at most "
                                    f"{self.max_sources_per_request} (--max_sources_per_request)")
        for i, source in enumerate(sources):
            if not isinstance(source, str):
                raise RequestError(422, f"src[{i}] must be a string, got {json.dumps(source)[:40]}")
            if not source.strip():
                raise RequestError(422, f"src[{i}] is empty" if len(sources) > 1 else "src is empty")
        with self.tokenizer_lock:
            ids = tokenize_sides(self.loaded.tokenizer, sources)
        limit = self.loaded.max_source_length - 2  # [CLS] src [SEP]
        for i, ids_i in enumerate(ids):
            if not ids_i:
                raise RequestError(422, f"src[{i}] tokenises to nothing")
            if len(ids_i) > limit and self.too_long == "reject":
                raise RequestError(422, f"src[{i}] has {len(ids_i)} tokens; the checkpoint takes at most {limit} "
                                        f"(max_source_seq_length {limit + 2} less [CLS] and [SEP])")
        truncated = sum(len(x) > limit for x in ids)
        if truncated:
            log.info("%d of %d sources truncated to %d tokens", truncated, len(ids), limit)
        return [x[:limit] for x in ids]

    # -- decoding (the decoding thread) ----------------------------------------------------------------------------
    def decode_group(self, config: SearchConfig, jobs: list[Job]) -> list:
        """Each job's output, or the exception that decoding it raised. The jobs are decoded in one call; if that
        fails, each job is decoded alone, so that only a job that fails by itself gets the exception."""
        try:
            return self.decode_jobs(config, jobs)
        except Exception as error:  # noqa: BLE001 (any failure is answered, never raised into the server)
            if len(jobs) == 1:
                log.error("decoding failed", exc_info=True)
                return [error]
            log.warning("decoding a group of %d requests failed (%s); decoding them one by one", len(jobs),
                        one_line(error))
            return [outcome for job in jobs for outcome in self.decode_group(config, [job])]

    def decode_jobs(self, config: SearchConfig, jobs: list[Job]) -> list:
        sources = [ids for job in jobs for ids in job.ids]
        keys = [key for job in jobs for key in range(len(job.ids))]  # sampling seeds: position in the request
        hyps = self.loaded.decode_ids(sources, config, self.max_batch_size, keys=keys)
        as_list = config.nbest > 1 or config.num_return_sequences > 1
        with self.tokenizer_lock:
            texts = [[self.loaded.text(h.tokens) for h in hyps_i or []] for hyps_i in hyps]
        outputs = [t if as_list else (t[0] if t else "") for t in texts]
        answers, start = [], 0
        for job in jobs:
            mine = outputs[start:start + len(job.ids)]
            start += len(job.ids)
            answers.append(mine[0] if job.single else mine)
        return answers


class Batcher:
    """Dynamic batching. ``submit`` (on the event loop) queues a job and waits for its output; one task collects
    the waiting jobs until the oldest has waited ``window_s`` or ``max_batch_size`` sources wait, groups them by
    their settings and hands each group to ``decode(config, jobs) -> [output or exception]`` in the one decoding
    thread. Jobs that arrive while a group decodes wait for the next collection."""

    def __init__(self, decode: Callable, window_s: float, max_batch_size: int):
        self.decode, self.window_s, self.max_batch_size = decode, window_s, max_batch_size
        self.pending: deque[Job] = deque()
        self.decoding: list[Job] = []  # the jobs of the group in the decoding thread
        self.executor: Optional[ThreadPoolExecutor] = None
        self.wake: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="s2s-ft-decode")
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        for job in [*self.pending, *self.decoding]:
            job.future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job):
        loop = asyncio.get_running_loop()
        job.future, job.arrived = loop.create_future(), loop.time()
        self.pending.append(job)
        self.wake.set()
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            groups: dict[tuple, list[Job]] = {}
            for job in await self.collect():
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                self.decoding = jobs
                try:
                    outcomes = await loop.run_in_executor(self.executor, self.decode, jobs[0].config, jobs)
                except Exception as error:  # noqa: BLE001 (decode answers its errors; this is a last resort)
                    outcomes = [error] * len(jobs)
                self.decoding = []
                for job, outcome in zip(jobs, outcomes):
                    if job.future.done():  # the client went away
                        continue
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)

    async def collect(self) -> list[Job]:
        """Wait until the oldest waiting job has waited the window or enough sources wait; take them (up to
        ``max_batch_size`` sources; one larger job alone)."""
        loop = asyncio.get_running_loop()
        while True:
            while self.pending and self.pending[0].future.done():  # cancelled while waiting
                self.pending.popleft()
            waiting = sum(len(job.ids) for job in self.pending if not job.future.done())
            if self.pending and (waiting >= self.max_batch_size
                                 or loop.time() >= self.pending[0].arrived + self.window_s):
                break
            self.wake.clear()
            timeout = self.pending[0].arrived + self.window_s - loop.time() if self.pending else None
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        batch, size = [], 0
        while self.pending and (not batch or size + len(self.pending[0].ids) <= self.max_batch_size):
            job = self.pending.popleft()
            if not job.future.done():
                batch.append(job)
                size += len(job.ids)
        return batch


def require_serving_packages() -> None:
    """UsageError (one line, with the fix) unless FastAPI and uvicorn are installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"serving needs FastAPI and uvicorn ({error}): pip install -e '.[serve]' (or pip install "
                         f"fastapi uvicorn)") from None


def build_app(server: Server, window_s: float = 0.005):
    """The FastAPI application around ``server`` (its routes, and the batcher started with the application)."""
    require_serving_packages()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    batcher = Batcher(server.decode_group, window_s, server.max_batch_size)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="s2s-ft", lifespan=lifespan)
    app.state.server, app.state.batcher = server, batcher

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": one_line(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):  # never a text/plain 500
        log.error("unexpected error answering %s", request.url.path, exc_info=error)
        return JSONResponse({"error": one_line(f"internal error: {type(error).__name__}")}, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model_path": server.model_path}

    @app.post("/generate")
    async def generate(request: Request):
        try:
            job = server.parse(await request.body())
        except RequestError as error:
            return JSONResponse({"error": one_line(error)}, status_code=error.status)
        started = time.perf_counter()
        try:
            output = await batcher.submit(job)
        except UsageError as error:
            return JSONResponse({"error": option_message(error)}, status_code=422)
        except Exception as error:  # noqa: BLE001 (this request fails; the server does not)
            return JSONResponse({"error": one_line(f"decoding failed: {type(error).__name__}: {error}")},
                                status_code=500)
        log.debug("%d sources in %.1f ms", len(job.ids), 1000 * (time.perf_counter() - started))
        return {"output": output, "seed": job.config.seed} if job.config.do_sample else {"output": output}

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve a fine-tuned checkpoint over HTTP: POST /generate {\"src\": ..., options} -> "
                    "{\"output\": ...}; GET /health. The search flags are the defaults of the requests' options.")
    add = p.add_argument
    add("--model_path", required=True, help="a fine-tuned checkpoint dir")
    add("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    add("--port", type=int, default=8000)
    add("--batch_window_ms", type=float, default=5.0,
        help="a request waits at most this long for others to be decoded with it")
    add("--max_batch_size", type=int, default=32, help="sources decoded together at most")
    add("--max_sources_per_request", type=int, default=256, help="a request with more sources gets 413")
    add("--max_beams", type=int, default=32, help="a request with a larger beam_size or num_return_sequences gets 422")
    add("--too_long", default="truncate", choices=TOO_LONG,
        help="a source longer than the checkpoint's max_source_seq_length: truncate it (as s2s-ft-decode does) "
             "or refuse the request (422)")
    add_search_flags(add, " (> 1: each source's output is a list)")
    add_precision_flags(add)
    add_quantize_flag(add)
    add_detokenize_flag(add, DETOKENIZE_HELP)
    add_device_flags(add)
    add_log_level_flag(add)
    return p


def check_serve_args(args: argparse.Namespace) -> None:
    for name in ("max_batch_size", "max_sources_per_request", "max_beams"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.batch_window_ms >= 0:
        raise UsageError(f"--batch_window_ms must be >= 0, got {args.batch_window_ms}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    check_settings(args, args.max_beams)
    check_device(args.device)
    args.precision = resolve_precision(args.precision, args.fp16, args.device)
    check_quantize_flag(args)


def make_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Server:
    """Check the flags, load the checkpoint; the Server with the search flags as the requests' defaults."""
    check_serve_args(args)
    loaded = load_decoder(args.model_path, args.device, args.precision, args.detokenize, args.quantize)
    server = Server(loaded, args, option_types(parser))
    check_settings(server.settings({}), args.max_beams)  # e.g. --min_len against the checkpoint's target length
    return server


def serve(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
    require_serving_packages()  # before the checkpoint is loaded
    import uvicorn

    server = make_server(args, parser or build_parser())
    app = build_app(server, args.batch_window_ms / 1000)
    log.info("serving %s on http://%s:%d (window %g ms, batches of up to %d sources)", args.model_path, args.host,
             args.port, args.batch_window_ms, args.max_batch_size)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)


def main(argv=None) -> int:
    parser = build_parser()
    return run_cli(parser, lambda args: serve(args, parser), argv)


if __name__ == "__main__":
    sys.exit(main())
