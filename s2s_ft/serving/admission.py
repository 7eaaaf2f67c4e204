"""Between HTTP and the batcher, the same for every API: capacity before anything is read, the body read with a cap
and parsed off the event loop (by the API's own ``translate``), then either waiting for the answer or following a
stream, with the deadlines and the client's departure in view; each failure is a ``RequestError`` that the API
puts in its own shape."""
import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Optional

from s2s_ft.decoding.search import DecodingStopped
from s2s_ft.errors import UsageError
from s2s_ft.serving.batching import Batcher, DecoderStopped
from s2s_ft.serving.engine import Engine, Job, Output, StreamItem, StreamSink
from s2s_ft.serving.errors import RequestError, option_message


@dataclasses.dataclass
class Parsed:
    """A request as its API read it: the job to decode, whether the answer streams, and what the API needs to
    shape its answer (``context``)."""
    job: Job
    stream: bool = False
    context: dict = dataclasses.field(default_factory=dict)
    arrived: float = 0.0


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, whatever Content-Length claims."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared[:20]!r} is not a number", "invalid_json")
        if int(declared) > limit:
            raise RequestError(413, f"the body has {declared} bytes; the server takes at most {limit} "
                                    f"(--max_body_bytes)", "too_large")
    from starlette.requests import ClientDisconnect
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"the body passed {limit} bytes (--max_body_bytes)", "too_large")
    except ClientDisconnect:
        raise RequestError(499, "the client closed the connection", "client_gone") from None
    return bytes(body)


async def client_gone(request) -> None:
    """Returns when the client disconnects (the ASGI server sends http.disconnect; after the body it is the only
    message left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def failure(future: asyncio.Future, unavailable: Callable[[], RequestError]) -> Optional[RequestError]:
    """The RequestError a settled decoding future stands for, or None if it holds outputs."""
    if future.cancelled():
        return unavailable()
    error = future.exception()
    if error is None:
        return None
    if isinstance(error, UsageError):
        return RequestError(422, option_message(error))
    if isinstance(error, DecoderStopped):
        return unavailable()
    if isinstance(error, DecodingStopped):
        return RequestError(504, "decoding was stopped: the request's time ran out", "timeout")
    return RequestError(500, f"decoding failed: {type(error).__name__}: {error}", "decoding_failed")


class Admission:
    def __init__(self, engine: Engine, batcher: Batcher, metrics):
        self.engine, self.batcher, self.limits, self.metrics = engine, batcher, engine.limits, metrics
        self.parse_pool: Optional[ThreadPoolExecutor] = None  # made per lifespan (an app may be started again)

    def start(self) -> None:
        self.parse_pool = ThreadPoolExecutor(2, thread_name_prefix="s2s-ft-parse")
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.parse_pool.shutdown(wait=False, cancel_futures=True)

    def unavailable(self) -> RequestError:
        if self.batcher.draining:
            return RequestError(503, "the server is shutting down; send the request to another instance",
                                "unavailable", retry_after=1)
        return RequestError(503, "the decoding thread has stopped; the server must be restarted", "unavailable")

    def check_capacity(self, extra_sources: int, arriving: bool) -> None:
        """503 unless the server can decode (a request already taken in is answered while the server drains);
        429 if the queue cannot take ``extra_sources`` more."""
        if not self.batcher.thread.alive() or (arriving and not self.batcher.ready()):
            raise self.unavailable()
        queued = self.batcher.queued_sources()
        if queued and queued + extra_sources > self.limits.max_queue:
            raise RequestError(429, f"the server is overloaded: {queued} sources are waiting (--max_queue "
                                    f"{self.limits.max_queue}); retry later", "overloaded", retry_after=1)

    async def parse(self, request, translate: Callable[[bytes], Parsed]) -> Parsed:
        """Admit ``request`` and read it with its API's ``translate`` (in a worker thread)."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self.check_capacity(1, arriving=True)  # before reading or parsing anything
        body = await read_body(request, self.limits.max_body_bytes)
        parsed = await loop.run_in_executor(self.parse_pool, translate, body)
        self.check_capacity(len(parsed.job.ids), arriving=False)
        parsed.arrived = arrived
        return parsed

    async def run(self, parsed: Parsed, request) -> list[list[Output]]:
        """The outputs of a non-streamed request: per source, its hypotheses (RequestError if none can be given)."""
        job = parsed.job
        future = self.batcher.submit(job)
        watcher = asyncio.ensure_future(client_gone(request))
        try:
            await self.wait(job, future, watcher, parsed.arrived)
        finally:
            watcher.cancel()
        error = failure(future, self.unavailable)
        if error is not None:
            raise error
        return future.result()

    async def wait(self, job: Job, future: asyncio.Future, watcher: Optional[asyncio.Future], arrived: float) -> None:
        """Until ``future`` is done; the job is abandoned (and RequestError raised) if the client goes, the queue
        wait or the deadline passes first."""
        loop, limits = asyncio.get_running_loop(), self.limits
        while not future.done():
            deadline = self.deadline(job, arrived)
            await asyncio.wait({future} | ({watcher} if watcher else set()),
                               timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED)
            if future.done():
                return
            if watcher is not None and watcher.done():
                self.batcher.abandon(job)
                raise RequestError(499, "the client closed the connection", "client_gone")
            self.check_deadline(job, arrived)

    def deadline(self, job: Job, arrived: float) -> float:
        limits = self.limits
        return arrived + (limits.request_timeout_s if job.started
                          else min(limits.queue_timeout_s, limits.request_timeout_s))

    def check_deadline(self, job: Job, arrived: float) -> None:
        """RequestError (and the job abandoned) once its queue wait or its time is over."""
        loop, limits = asyncio.get_running_loop(), self.limits
        if loop.time() >= self.deadline(job, arrived) and not job.started and self.deadline(
                job, arrived) < arrived + limits.request_timeout_s:
            self.batcher.abandon(job)
            raise RequestError(503, f"the request waited {limits.queue_timeout_s:g} s in the queue "
                                    f"(--queue_timeout_s); retry later", "queue_timeout", retry_after=1)
        if loop.time() >= arrived + limits.request_timeout_s:
            self.batcher.abandon(job)
            raise RequestError(504, f"no answer within {limits.request_timeout_s:g} s (--request_timeout_s); send "
                                    f"fewer sources or a smaller beam_size / max_tgt_length", "timeout")

    async def stream(self, parsed: Parsed) -> AsyncIterator[StreamItem]:
        """A streamed request's items as the decoder produces them, until every row has ended (RequestError, raised
        from the iteration, if decoding cannot go on). Leaving the iteration early (the client went: the response
        stops iterating) abandons the job: its rows leave their batch at the next step."""
        loop, job = asyncio.get_running_loop(), parsed.job
        job.stream = StreamSink(loop)
        future = self.batcher.submit(job)
        future.add_done_callback(lambda _: self.observe_cancel(job))
        rows, ended, last = len(job.ids) * job.samples, 0, None
        try:
            while ended < rows:
                item = await self.next_item(job, future, parsed.arrived)
                if item is None:  # decoding ended (an empty row sends no end of its own)
                    break
                now = time.perf_counter()
                if item.token is not None:
                    if last is None:
                        self.metrics.time_to_first_token.observe(now - parsed.context.get("started", now))
                    else:
                        self.metrics.inter_token.observe(now - last)
                    last = now
                ended += item.output is not None
                yield item
        finally:
            if ended < rows and not future.done():
                self.batcher.abandon(job)

    async def next_item(self, job: Job, future: asyncio.Future, arrived: float) -> Optional[StreamItem]:
        """The stream's next item; None once decoding has ended and every item was taken."""
        queue = job.stream.queue
        while True:
            if not queue.empty():
                return queue.get_nowait()
            if future.done():
                error = failure(future, self.unavailable)
                if error is not None:
                    raise error
                return None  # items are put before the future settles: an empty queue now stays empty
            getter = asyncio.ensure_future(queue.get())
            loop = asyncio.get_running_loop()
            await asyncio.wait({getter, future}, timeout=max(0.0, self.deadline(job, arrived) - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
            if not future.done():
                self.check_deadline(job, arrived)

    def observe_cancel(self, job: Job) -> None:
        if job.abandoned.is_set() and job.stream is not None:
            self.metrics.steps_after_cancel.observe(job.steps_after_abandoned)


def api_context(**values: Any) -> dict:
    """An API's context for its answer, with the time the request started (for time to first token)."""
    return {"started": time.perf_counter(), **values}
