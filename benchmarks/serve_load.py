"""A bounded load test of s2s-ft-serve: starts the server itself on 127.0.0.1 (a free port, a subprocess), waits for
GET /health, then

1. concurrent: ``--clients`` threads, each sending ``--requests`` single-source requests one after another (the
   sources are the first distinct ``src`` of ``--data``, dealt round-robin to the clients);
2. sequential: the same sources, one request at a time (nothing to batch with: each is decoded alone);

and reports requests/s and p50 / p99 latency of both, and checks that every concurrent answer equals the sequential
answer for its source (nothing lost or swapped by batching). The server is stopped in every case (try/finally).
Exit status 0 if every answer was a 200 and matched, 1 otherwise, 2 if the server did not come up.

    python benchmarks/serve_load.py --model_path out/ckpt-20000 --data ../shared/data/squad_qg/dev.jsonl \\
        --clients 8 --requests 8 [--batch_window_ms 5 --max_batch_size 32] [--server_args "--beam_size 5"] \\
        [--options '{"beam_size": 5}'] [--json report.json]

Only the standard library on the client side (urllib + threads); the server needs the serve extra.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"  # loopback only


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--model_path", required=True, help="a fine-tuned checkpoint dir")
    add("--data", required=True, help="JSONL with a \"src\" field (its first distinct sources are sent)")
    add("--clients", type=int, default=4, help="concurrent clients")
    add("--requests", type=int, default=4, help="requests per client (one source each)")
    add("--batch_window_ms", type=float, default=5.0)
    add("--max_batch_size", type=int, default=32)
    add("--server_args", default="", help="more s2s-ft-serve flags, one string (e.g. \"--precision bf16\")")
    add("--options", default="{}", help="JSON object of search options sent with every request")
    add("--startup_timeout", type=float, default=600.0, help="seconds to wait for /health")
    add("--request_timeout", type=float, default=600.0)
    add("--json", default=None, help="also write the report here")
    add("--server_log", default=None, help="the server's output (default: a temporary file, shown on failure)")
    return p


def read_sources(path: str, n: int) -> list[str]:
    """The first ``n`` distinct sources of a JSONL file (word-piece lists joined by spaces)."""
    found: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                src = json.loads(line)["src"]
                found[src if isinstance(src, str) else " ".join(src)] = None
                if len(found) == n:
                    break
    if not found:
        fail(f"{path}: no sources")
    return list(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def post(url: str, body: dict, timeout: float) -> tuple[int, dict, float]:
    """(status, JSON answer, seconds) of one POST."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, payload = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    seconds = time.perf_counter() - started
    try:
        return status, json.loads(payload), seconds
    except ValueError:
        return status, {"error": payload.decode(errors="replace")[:200]}, seconds


def wait_for_health(server: subprocess.Popen, base: str, timeout: float, log_path: str) -> float:
    """Seconds until GET /health answered 200; SystemExit (status 2) if the server died or did not come up."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            fail(f"the server exited with status {server.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    fail(f"no answer from {base}/health within {timeout:.0f} s:\n{tail(log_path)}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no server log)"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def phase(url: str, plan: list[list[str]], options: dict, timeout: float) -> tuple[dict, dict[str, list]]:
    """Each inner list of ``plan`` is one client's sources, sent one after another; the clients run at once.
    Returns (figures, {source: [(status, answer), ...]})."""
    results: list[list[tuple]] = [[] for _ in plan]
    barrier = threading.Barrier(len(plan) + 1)

    def client(c: int) -> None:
        barrier.wait()
        for source in plan[c]:
            results[c].append((source, *post(url, {"src": source, **options}, timeout)))

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(len(plan))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done = [r for rs in results for r in rs]
    latencies = [r[3] for r in done]
    answers: dict[str, list] = {}
    for source, status, answer, _ in done:
        answers.setdefault(source, []).append((status, answer))
    figures = {"requests": len(done), "seconds": round(seconds, 3),
               "requests_per_s": round(len(done) / seconds, 3) if seconds else None,
               "p50_ms": round(1000 * percentile(latencies, 50), 1),
               "p99_ms": round(1000 * percentile(latencies, 99), 1),
               "errors": sum(status != 200 for _, status, _, _ in done)}
    return figures, answers


def compare(concurrent: dict[str, list], alone: dict[str, list]) -> list[str]:
    """One line per concurrent answer that is an error or differs from the source's answer alone."""
    problems = []
    for source, answers in concurrent.items():
        status_alone, reference = alone[source][0]
        for status, answer in answers:
            if status != 200 or status_alone != 200:
                problems.append(f"HTTP {status} (alone: {status_alone}) for {source[:60]!r}: "
                                f"{answer.get('error') or reference.get('error')}")
            elif answer != reference:
                problems.append(f"differs for {source[:60]!r}: {answer['output']!r} vs alone {reference['output']!r}")
    return problems


def run(args: argparse.Namespace, base: str) -> dict:
    options = json.loads(args.options)
    sources = read_sources(args.data, args.clients * args.requests)
    work = [sources[i % len(sources)] for i in range(args.clients * args.requests)]
    url = f"{base}/generate"
    post(url, {"src": sources[0], **options}, args.request_timeout)  # warm-up, not counted
    concurrent, concurrent_answers = phase(url, [work[c::args.clients] for c in range(args.clients)], options,
                                           args.request_timeout)
    sequential, alone = phase(url, [sources], options, args.request_timeout)
    problems = compare(concurrent_answers, alone)
    return {"model_path": args.model_path, "data": args.data, "clients": args.clients, "requests": args.requests,
            "batch_window_ms": args.batch_window_ms, "max_batch_size": args.max_batch_size,
            "server_args": args.server_args, "options": options, "concurrent": concurrent, "sequential": sequential,
            "throughput_ratio": round(concurrent["requests_per_s"] / sequential["requests_per_s"], 3)
            if concurrent["requests_per_s"] and sequential["requests_per_s"] else None,
            "checked": sum(map(len, concurrent_answers.values())), "problems": problems,
            "example": {"src": sources[0], **alone[sources[0]][0][1]}}


def report(result: dict) -> None:
    print(f"{'phase':<12}{'requests':>9}{'seconds':>10}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name in ("concurrent", "sequential"):
        f = result[name]
        print(f"{name:<12}{f['requests']:>9}{f['seconds']:>10.2f}{f['requests_per_s']:>9.2f}{f['p50_ms']:>10.1f}"
              f"{f['p99_ms']:>10.1f}{f['errors']:>8}")
    print(f"throughput concurrent / sequential: {result['throughput_ratio']}x "
          f"({result['clients']} clients x {result['requests']} requests, window {result['batch_window_ms']} ms, "
          f"batches of up to {result['max_batch_size']})")
    print(f"answers equal to the source decoded alone: {result['checked'] - len(result['problems'])} of "
          f"{result['checked']}")
    print(f"example: {json.dumps(result['example'], ensure_ascii=False)[:300]}")
    for line in result["problems"][:10]:
        print(f"  {line}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        fail("--clients and --requests must be >= 1")
    port = free_port()
    base = f"http://{HOST}:{port}"
    log_path = args.server_log or os.path.join(tempfile.mkdtemp(prefix="serve_load_"), "server.log")
    command = [sys.executable, "-m", "s2s_ft.cli.serve", "--model_path", args.model_path, "--host", HOST, "--port",
               str(port), "--batch_window_ms", str(args.batch_window_ms), "--max_batch_size",
               str(args.max_batch_size), "--log_level", "WARNING", *shlex.split(args.server_args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = wait_for_health(server, base, args.startup_timeout, log_path)
        print(f"server up on {base} after {started:.1f} s (log: {log_path})")
        result = run(args, base)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    report(result)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 1 if result["problems"] or result["concurrent"]["errors"] or result["sequential"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
