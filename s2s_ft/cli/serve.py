"""s2s-ft-serve: serve a fine-tuned checkpoint over HTTP (the server itself: s2s_ft/serving/; the APIs, limits and
errors: docs/serving.md).

    s2s-ft-serve --model_path out/ckpt-2800 [--port 8000] [search flags: the requests' defaults] [limit flags]
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Optional

from s2s_ft.cli.common import (
    SEARCH_FLAGS,
    add_detokenize_flag,
    add_device_flags,
    add_log_level_flag,
    add_precision_flags,
    add_quantize_flag,
    add_search_flags,
    check_device,
    check_quantize_flag,
    run_cli,
)
from s2s_ft.decoding.detokenize import DETOKENIZE_HELP
from s2s_ft.decoding.inference import load_decoder
from s2s_ft.errors import UsageError
from s2s_ft.model.precision import resolve_precision
from s2s_ft.serving.app import build_app
from s2s_ft.serving.engine import TOO_LONG, Engine, Limits, check_options
from s2s_ft.serving.errors import RequestError
from s2s_ft.serving.metrics import require_serving_packages

log = logging.getLogger("s2s_ft.serve")


def option_types(parser: argparse.ArgumentParser) -> dict[str, type]:
    """Each search option's JSON type, read from its flag (store_true: bool, type=int / float, else str)."""
    types = {}
    for action in parser._actions:
        if action.dest in SEARCH_FLAGS:
            types[action.dest] = bool if action.const is True else (action.type or str)
    return types


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve a fine-tuned checkpoint over HTTP: this project's POST /generate {\"src\": ...}, "
                    "text-generation-inference's API (POST /generate, /generate_stream, /, GET /info), OpenAI's "
                    "completions (POST /v1/completions, GET /v1/models), a page to try it (GET /), GET /health, "
                    "GET /metrics. The search flags are the defaults of the requests' options; the limit flags bound "
                    "what any request may take.")
    add = p.add_argument
    add("--model_path", required=True, help="a fine-tuned checkpoint dir")
    add("--served_model_name", default=None,
        help="the model's name in the OpenAI and TGI APIs (\"model\", model_id; default: --model_path as given)")
    add("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    add("--port", type=int, default=8000)
    add("--batch_window_ms", type=float, default=5.0,
        help="a request waits at most this long for others to be decoded with it")
    add("--max_batch_size", type=int, default=32, help="sources decoded together at most")
    limits = p.add_argument_group("limits (a request can only stay under them)")
    add = limits.add_argument
    defaults = Limits()
    add("--max_body_bytes", type=int, default=defaults.max_body_bytes,
        help="a larger body gets 413, refused as it arrives (default 1 MiB: 64 sources of 16 kB)")
    add("--max_sources_per_request", type=int, default=defaults.max_sources_per_request,
        help="a request with more sources gets 413 (default 64: two batches)")
    add("--max_source_chars", type=int, default=defaults.max_source_chars,
        help="a longer source gets 413 before it is tokenised (default 20,000: far beyond the 512 tokens a BERT "
             "reads)")
    add("--too_long", default=defaults.too_long, choices=TOO_LONG,
        help="a source longer than the checkpoint's max_source_seq_length: truncate it (as s2s-ft-decode does) "
             "or refuse the request (422)")
    add("--max_beams", type=int, default=defaults.max_beams,
        help="a larger beam_size or num_return_sequences gets 422 (default 16)")
    add("--max_stop_sequences", type=int, default=defaults.max_stop_sequences,
        help="more stop sequences in one request get 422 (default 4, as TGI and OpenAI)")
    add("--max_target_tokens", type=int, default=defaults.max_target_tokens,
        help="a larger max_tgt_length gets 422 (default: the checkpoint's max_target_seq_length, what it was "
             "trained to write)")
    add("--max_kv_cache_mb", type=float, default=defaults.max_kv_cache_mb,
        help="key/value cache one decoding call may hold, estimated from the model's shape, the beams and the "
             "lengths before a request is admitted: a request whose single source needs more gets 422, a batch "
             "that would need more is decoded in smaller pieces (default 1024)")
    add("--max_queue", type=int, default=defaults.max_queue,
        help="sources waiting to be decoded at most; beyond it 429 with Retry-After at once (default 128: four "
             "batches)")
    add("--queue_timeout_s", type=float, default=defaults.queue_timeout_s,
        help="a request not started within this many seconds gets 503 with Retry-After (default 30)")
    add("--request_timeout_s", type=float, default=defaults.request_timeout_s,
        help="a request not answered within this many seconds gets 504; its decoding stops at the next step "
             "if nothing else in its batch still waits (default 60)")
    add("--shutdown_grace_s", type=float, default=30.0,
        help="on SIGTERM: stop accepting, give requests in flight this long to finish, then exit 0 (default 30)")
    add("--test_hooks", action="store_true", help=argparse.SUPPRESS)  # POST /_test/kill_decoder, for fault tests
    add = p.add_argument
    add_search_flags(add, " (> 1: each source's output is a list)")
    add_precision_flags(add)
    add_quantize_flag(add)
    add_detokenize_flag(add, DETOKENIZE_HELP)
    add_device_flags(add)
    add_log_level_flag(add)
    return p


def check_serve_args(args: argparse.Namespace) -> None:
    Limits.from_options(vars(args)).check()
    if not args.batch_window_ms >= 0:
        raise UsageError(f"--batch_window_ms must be >= 0, got {args.batch_window_ms}")
    if not args.shutdown_grace_s >= 0:
        raise UsageError(f"--shutdown_grace_s must be >= 0, got {args.shutdown_grace_s}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    check_options(vars(args), args.max_beams)
    check_device(args.device)
    args.precision = resolve_precision(args.precision, args.fp16, args.device)
    check_quantize_flag(args)


def server_from_args(loaded, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Engine:
    """The Engine of the flags around a loaded checkpoint: the limit flags its Limits, the search flags the
    requests' defaults."""
    return Engine(loaded, Limits.from_options(vars(args)), vars(args), option_types(parser), args.model_path,
                  getattr(args, "served_model_name", None) or args.model_path)


def make_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Engine:
    """Check the flags, load the checkpoint; the Engine with the search flags as the requests' defaults."""
    check_serve_args(args)
    loaded = load_decoder(args.model_path, args.device, args.precision, args.detokenize, args.quantize)
    server = server_from_args(loaded, args, parser)
    try:  # e.g. --min_len against the checkpoint's target length, --max_tgt_length against --max_target_tokens
        server.config({})
    except RequestError as error:
        raise UsageError(f"the server's own search flags: {error}") from None
    return server


def serve(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
    require_serving_packages()  # before the checkpoint is loaded
    import uvicorn

    server = make_server(args, parser or build_parser())
    app = build_app(server, args.batch_window_ms / 1000, test_hooks=args.test_hooks)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM / SIGINT: /health says 503 and new requests get 503
            app.state.batcher.draining = True
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a requested stop that drained is a success: exit 0, not uvicorn's re-raise
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    log.info("serving %s on http://%s:%d (window %g ms, batches of up to %d sources)", args.model_path, args.host,
             args.port, args.batch_window_ms, args.max_batch_size)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=args.shutdown_grace_s)
    DrainingServer(config).run()


def main(argv=None) -> int:
    parser = build_parser()
    return run_cli(parser, lambda args: serve(args, parser), argv)


if __name__ == "__main__":
    sys.exit(main())
