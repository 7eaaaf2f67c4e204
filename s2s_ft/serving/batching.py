"""Dynamic batching and the one thread that runs the model.

``Batcher.submit`` (on the event loop) queues a job; one task collects the waiting jobs until the oldest has waited
the batch window or enough sources wait, groups them by their search settings (streams and other requests alike)
and hands each group to the ``DecodingThread``, while the event loop keeps answering.
"""
import asyncio
import logging
import queue
import threading
from collections import deque
from typing import Callable, Optional

from s2s_ft.serving.engine import Job, on_loop

log = logging.getLogger("s2s_ft.serve")


class DecoderStopped(Exception):
    """The decoding thread is not running (it died, or the server is stopping)."""


class DecodingThread:
    """The one thread that runs the model. ``call`` hands it a function and returns an asyncio future for the result;
    if the thread has ended (``alive`` False: an error no request handler catches escaped it, or ``kill`` for fault
    tests) every call fails with ``DecoderStopped`` and the server reports itself unavailable."""

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        # A fresh thread per start: an app may be started again (a second test client, a restarted lifespan).
        self.inbox = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(self.inbox,), name="s2s-ft-decode", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def call(self, function: Callable, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.alive():
            future.set_exception(DecoderStopped("the decoding thread has stopped"))
        else:
            self.inbox.put((function, args, loop, future))
        return future

    def kill(self) -> None:
        """End the thread as a fatal error would (fault tests: ``--test_hooks``)."""
        def die():
            raise SystemExit("decoding thread killed on request")
        self.inbox.put((die, (), None, None))

    def stop(self) -> None:
        self.inbox.put(None)

    def _run(self, inbox: queue.SimpleQueue) -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            function, args, loop, future = item
            try:
                outcome = function(*args)
            except Exception as error:  # noqa: BLE001 (handed to the waiting request)
                outcome = error
            except BaseException:  # the thread ends; its caller must not wait for ever
                if loop is not None:
                    hand_over(loop, future, DecoderStopped("the decoding thread has stopped"))
                self._fail_waiting(inbox)
                raise
            hand_over(loop, future, outcome)

    @staticmethod
    def _fail_waiting(inbox: queue.SimpleQueue) -> None:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[2] is not None:
                hand_over(item[2], item[3], DecoderStopped("the decoding thread has stopped"))


def hand_over(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome) -> None:
    on_loop(loop, _settle, future, outcome)


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Batcher:
    """Dynamic batching. ``submit`` (on the event loop) queues a job and returns the future of its output; one task
    collects the waiting jobs until the oldest has waited ``window_s`` or ``max_batch_size`` sources wait, groups
    them by their settings and hands each group to ``decode(config, jobs, should_stop) -> [output or exception]``
    in the decoding thread. Jobs that arrive while a group decodes wait for the next collection; abandoned jobs
    (``abandon``: the client left, or its time ran out) are skipped, and a group whose jobs are all abandoned stops
    at its next step."""

    def __init__(self, decode: Callable, window_s: float, max_batch_size: int,
                 on_batch: Optional[Callable[[int], None]] = None):
        self.decode, self.window_s, self.max_batch_size = decode, window_s, max_batch_size
        self.on_batch = on_batch or (lambda sources: None)
        self.pending: deque[Job] = deque()
        self.decoding: list[Job] = []  # the jobs of the group in the decoding thread
        self.thread = DecodingThread()
        self.wake: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None
        self.draining = False  # shutting down: answer what is in flight, take nothing new

    def start(self) -> None:
        self.thread.start()
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    def ready(self) -> bool:
        return (self.thread.alive() and self.task is not None and not self.task.done()) and not self.draining

    def queued_sources(self) -> int:
        return sum(len(job.ids) for job in self.pending if not job.abandoned.is_set())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        left = [job for job in [*self.pending, *self.decoding] if not job.abandoned.is_set()]
        for job in left:
            self.abandon(job)
        self.thread.stop()
        if left:
            log.warning("stopped with %d requests unanswered (they get 503)", len(left))
        else:
            log.info("stopped; every request taken in was answered")

    def submit(self, job: Job) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job.future, job.arrived = loop.create_future(), loop.time()
        self.pending.append(job)
        self.wake.set()
        return job.future

    @staticmethod
    def abandon(job: Job) -> None:
        job.abandoned.set()
        if job.future is not None and not job.future.done():
            job.future.cancel()

    async def run(self) -> None:
        while True:
            groups: dict[tuple, list[Job]] = {}
            for job in await self.collect():
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                jobs = [job for job in jobs if not job.abandoned.is_set()]
                if not jobs:
                    continue
                for job in jobs:
                    job.started = True
                self.decoding = jobs
                self.on_batch(sum(len(job.ids) for job in jobs))
                gone = [job.abandoned for job in jobs]
                try:
                    outcomes = await self.thread.call(self.decode, jobs[0].config, jobs,
                                                      lambda: all(event.is_set() for event in gone))
                except Exception as error:  # noqa: BLE001 (DecoderStopped, or a last resort)
                    outcomes = [error] * len(jobs)
                self.decoding = []
                for job, outcome in zip(jobs, outcomes):
                    _settle(job.future, outcome)

    async def collect(self) -> list[Job]:
        """Wait until the oldest waiting job has waited the window or enough sources wait; take them (up to
        ``max_batch_size`` sources; one larger job alone)."""
        loop = asyncio.get_running_loop()
        while True:
            while self.pending and self.pending[0].abandoned.is_set():
                self.pending.popleft()
            waiting = self.queued_sources()
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
            if not job.abandoned.is_set():
                batch.append(job)
                size += len(job.ids)
        return batch


