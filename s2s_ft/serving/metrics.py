"""The server's Prometheus metrics (prometheus-client), in a registry of its own (several apps in one process stay
apart): requests by outcome, queue and readiness gauges, sources per decoding call, request latency, and for
streams time to first token, the time between tokens, streams by outcome and the decoding steps spent on a stream
after its client went."""
from s2s_ft.errors import UsageError

OUTCOMES = ("ok", "invalid_json", "invalid_request", "too_large", "overloaded", "queue_timeout", "timeout",
            "unavailable", "client_gone", "decoding_failed", "internal")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def require_serving_packages() -> None:
    """UsageError (one line, with the fix) unless FastAPI, uvicorn, prometheus-client and sse-starlette are
    installed."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"serving needs FastAPI, uvicorn, prometheus-client and sse-starlette ({error}): pip install "
                         f"-e '.[serve]' (or pip install fastapi uvicorn prometheus-client sse-starlette)") from None


class Metrics:
    def __init__(self, batcher, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("s2s_ft_requests", "generation requests (every API, streamed or not) by outcome",
                                ["outcome"], registry=registry)
        self.streams = Counter("s2s_ft_streams", "streamed generation requests by outcome", ["outcome"],
                               registry=registry)
        for outcome in OUTCOMES:  # every outcome listed from the start, at 0
            self.requests.labels(outcome)
            self.streams.labels(outcome)
        queued = Gauge("s2s_ft_queue_sources", "sources waiting to be decoded", registry=registry)
        queued.set_function(batcher.queued_sources)
        ready = Gauge("s2s_ft_ready", "1 while requests can be decoded", registry=registry)
        ready.set_function(lambda: float(batcher.ready()))
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_sources = Histogram("s2s_ft_batch_sources", "sources per decoding call", buckets=buckets,
                                       registry=registry)
        self.latency = Histogram("s2s_ft_request_seconds", "time to answer a generation request (a stream: to its "
                                 "last event), any outcome", buckets=LATENCY_BUCKETS, registry=registry)
        self.time_to_first_token = Histogram("s2s_ft_time_to_first_token_seconds", "a stream's arrival to its first "
                                             "token event", buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token = Histogram("s2s_ft_inter_token_seconds", "time between a stream's consecutive token "
                                     "events", buckets=TOKEN_BUCKETS, registry=registry)
        self.steps_after_cancel = Histogram("s2s_ft_stream_steps_after_cancel", "decoding steps that still "
                                            "computed a stream's row after its client went",
                                            buckets=(0, 1, 2, 4, 8, 16, 32, 64), registry=registry)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
