"""The FastAPI application: each API's routes as a thin translation onto the one engine and batcher.

* ours (``native``): ``POST /generate`` with ``{"src": ...}``;
* TGI's (``tgi``): ``POST /generate`` with ``{"inputs": ...}``, ``POST /generate_stream``, ``POST /``, ``GET /info``;
* OpenAI's (``openai_api``): ``POST /v1/completions``, ``GET /v1/models``, ``POST /v1/chat/completions`` (refused);
* ``GET /``: a page to try the model in a browser (``page.html``, self-contained);
* ``GET /health``, ``GET /metrics``.

A route reads its request through ``Admission`` (capacity first, the body capped, parsing in a worker thread) into a
Job, waits for the outputs or follows the stream, and shapes the answer or the error in its API's own way.
"""
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Callable, Optional

from s2s_ft.serving import native, openai_api, tgi
from s2s_ft.serving.admission import Admission
from s2s_ft.serving.batching import Batcher
from s2s_ft.serving.engine import Engine
from s2s_ft.serving.errors import RequestError, one_line, parse_json_object
from s2s_ft.serving.metrics import Metrics, require_serving_packages

log = logging.getLogger("s2s_ft.serve")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


class Api:
    """How one API shapes errors: ``body(error)`` and ``status(error)``."""

    def __init__(self, body: Callable[[RequestError], dict], status: Callable[[RequestError], int] = lambda e: e.status):
        self.body, self.status = body, status


NATIVE, TGI, OPENAI = Api(native.error_body), Api(tgi.error_body, tgi.status_of), Api(openai_api.error_body,
                                                                                       openai_api.status_of)


class Routes:
    """What the generation routes share: the batcher, the metrics, admission, and the flow of one request (its
    answer or its stream, its error in its API's shape, its count in the metrics)."""

    def __init__(self, engine: Engine, window_s: float):
        self.engine = engine
        self.batcher = Batcher(engine.decode_group, window_s, engine.max_batch_size)
        self.metrics = Metrics(self.batcher, engine.max_batch_size)
        self.batcher.on_batch = self.metrics.batch_sources.observe
        self.admission = Admission(engine, self.batcher, self.metrics)

    @staticmethod
    def error_response(api: Api, error: RequestError):
        from fastapi.responses import JSONResponse
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        return JSONResponse(api.body(error), status_code=api.status(error), headers=headers)

    def counted(self, outcome: str, started: float, stream: bool = False) -> None:
        self.metrics.requests.labels(outcome).inc()
        if stream:
            self.metrics.streams.labels(outcome).inc()
        self.metrics.latency.observe(time.perf_counter() - started)

    async def generation(self, request, api: Api, translate: Callable, shape: Optional[Callable],
                         events: Optional[Callable] = None, errors_as_events: bool = False):
        """A generation request of ``api``: the answer (``shape(parsed, outputs)``), or the stream (``events(parsed,
        items)``: bytes of Server-Sent Events). An error is answered in ``api``'s shape (``error.api``, set by a
        translate that serves two APIs, wins), or with ``errors_as_events`` as one event with status 200 (TGI's
        stream route)."""
        from sse_starlette import EventSourceResponse
        started, parsed = time.perf_counter(), None
        try:
            parsed = await self.admission.parse(request, translate)
            if parsed.stream:
                return EventSourceResponse(self.follow(parsed, events, started), ping=15)
            answer = shape(parsed, await self.admission.run(parsed, request))
        except RequestError as error:
            self.counted(error.error_type, started, errors_as_events)
            if errors_as_events:
                return EventSourceResponse(one_event(tgi.error_body(error)), ping=15)
            return self.error_response(getattr(error, "api", None) or (parsed.context.get("api") if parsed else None)
                                       or api, error)
        self.counted("ok", started)
        return answer

    async def follow(self, parsed, events: Callable, started: float):
        outcome = "client_gone"
        try:
            async for piece in events(parsed, self.admission.stream(parsed)):
                if piece.startswith((b'data:{"error"', b'data: {"error"')):
                    outcome = "decoding_failed"
                yield piece
            outcome = "ok" if outcome == "client_gone" else outcome
        finally:
            self.counted(outcome, started, stream=True)

    def generate_translate(self, body: bytes):
        """POST /generate: ours ({"src": ...}) or TGI's ({"inputs": ...}), told apart by the body."""
        fields = parse_json_object(body, native.SHAPE)
        if "inputs" not in fields:
            return native.parse(self.engine, fields)
        try:
            parsed = tgi.translate(self.engine, body, stream=False)
        except RequestError as error:
            error.api = TGI
            raise
        parsed.context["api"] = TGI
        return parsed

    def generate_answer(self, parsed, outputs):
        if parsed.context.get("api") is TGI:
            return tgi.answer(self.engine, parsed, outputs)
        return native.answer(parsed, outputs)


async def one_event(payload: dict):
    yield tgi.event(payload)


def build_app(engine: Engine, window_s: float = 0.005, test_hooks: bool = False):
    """The FastAPI application around ``engine`` (its routes, and the batcher started with the application).
    ``test_hooks``: also ``POST /_test/kill_decoder`` (ends the decoding thread) and ``POST /_test/step_delay/S``
    (every decoding step waits S seconds), for fault tests."""
    require_serving_packages()
    from fastapi import FastAPI

    routes = Routes(engine, window_s)

    @asynccontextmanager
    async def lifespan(app):
        routes.admission.start()
        yield
        await routes.admission.stop()

    app = FastAPI(title="s2s-ft", lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.metrics = engine, routes.batcher, routes.metrics
    add_error_handlers(app)
    add_status_routes(app, routes)
    add_generation_routes(app, routes)
    if test_hooks:
        @app.post("/_test/kill_decoder")
        async def kill_decoder():
            routes.batcher.thread.kill()
            return {"status": "killing the decoding thread"}

        @app.post("/_test/step_delay/{seconds}")
        async def step_delay(seconds: float):  # slow decoding down, to act in the middle of a stream
            engine.step_delay_s = seconds
            return {"step_delay_s": seconds}
    return app


def add_error_handlers(app) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": one_line(error.detail), "error_type": "invalid_request"},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):  # never a text/plain 500
        log.error("unexpected error answering %s", request.url.path, exc_info=error)
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "error_type": "internal"},
                            status_code=500)


def add_status_routes(app, routes: Routes) -> None:
    """Health, metrics, the page, and what the model is (TGI's /info, OpenAI's model list)."""
    from fastapi.responses import HTMLResponse, Response
    engine = routes.engine

    @app.get("/health")
    async def health():
        if routes.batcher.ready():
            return {"status": "ok", "model_path": engine.model_path, "queue_sources": routes.batcher.queued_sources()}
        return routes.error_response(NATIVE, routes.admission.unavailable())

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = routes.metrics.text()
        return Response(body, media_type=content_type)

    @app.get("/")
    async def page():
        with open(PAGE, encoding="utf-8") as handle:
            return HTMLResponse(handle.read())

    @app.get("/info")
    async def info():
        return tgi.info(engine)

    @app.get("/v1/models")
    async def models():
        return openai_api.models(engine)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != engine.model_id:
            return routes.error_response(OPENAI, RequestError(404, f"The model `{model_id}` does not exist",
                                                              "model_not_found", param="model"))
        return openai_api.model_card(engine)


def add_generation_routes(app, routes: Routes) -> None:
    from fastapi import Request
    engine = routes.engine

    def tgi_events(parsed, items):
        return tgi.stream_events(engine, parsed, items)

    @app.post("/generate")
    async def generate(request: Request):
        return await routes.generation(request, NATIVE, routes.generate_translate, routes.generate_answer)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        return await routes.generation(request, TGI, lambda body: tgi.translate(engine, body, stream=True), None,
                                       tgi_events, errors_as_events=True)

    @app.post("/")
    async def compat_generate(request: Request):
        """TGI's compatibility route, where InferenceClient(base_url=...) posts: "stream" in the body decides."""
        return await routes.generation(request, TGI, lambda body: tgi.translate(engine, body),
                                       lambda parsed, outputs: tgi.answer(engine, parsed, outputs), tgi_events)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await routes.generation(request, OPENAI, lambda body: openai_api.translate(engine, body),
                                       openai_api.answer, openai_api.stream_events)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return routes.error_response(OPENAI, openai_api.refuse_chat())
