"""Token streaming from s2s-ft-serve: time to first token and tokens per second of a stream (TGI's POST
/generate_stream), at 1 and at N concurrent streams, beside the latency of the same requests not streamed (POST
/generate with TGI's body), all in one run against one server it starts itself on 127.0.0.1.

For each concurrency c in ``--concurrency`` (default 1,16): c clients each send ``--rounds`` requests one after
another (the first distinct sources of ``--data``), once streamed and once not. Reported per c: p50 / p90 time to
the first token event, p50 stream duration, tokens per second per stream (its tokens / (last event - first event)),
aggregate tokens per second, and the p50 / p90 latency of the non-streamed requests. Every streamed text is checked
against the non-streamed answer for its source (they must be equal). Greedy search by default (``--parameters``
adds TGI parameters, e.g. '{"max_new_tokens": 32}').

    python benchmarks/serve_stream.py --model_path out/ckpt-3600 --data ../shared/data/squad_qg_du/dev.jsonl \\
        [--concurrency 1,16] [--rounds 4] [--server_args "--precision bf16"] [--json report.json]

Name the CPU (lscpu) beside any figure you publish: these are timings of this machine only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import HOST, ROOT, fail, free_port, post, wait_for_health  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--model_path", required=True)
    add("--data", required=True, help="JSONL with a \"src\" field")
    add("--concurrency", default="1,16", help="comma-separated numbers of concurrent streams")
    add("--rounds", type=int, default=4, help="requests per client, one after another")
    add("--parameters", default="{}", help="JSON object of TGI parameters sent with every request")
    add("--server_args", default="", help="more s2s-ft-serve flags, one string")
    add("--json", default=None, help="also write the report here")
    return p


def read_inputs(path: str, n: int) -> list[dict]:
    """The first ``n`` distinct sources of a JSONL file as TGI bodies' ``inputs`` (and ``answer`` where rows have
    one, for an answer-aware checkpoint)."""
    found: dict[tuple, None] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and len(found) < n:
                row = json.loads(line)
                src = row["src"] if isinstance(row["src"], str) else " ".join(row["src"])
                found[(src, row.get("answer"))] = None
    if not found:
        fail(f"{path}: no sources")
    return [{"inputs": src, **({"answer": answer} if answer is not None else {})} for src, answer in found]


def body_of(item: dict, parameters: dict) -> dict:
    extra = {"answer": item["answer"]} if "answer" in item else {}
    return {"inputs": item["inputs"], "parameters": {**parameters, **extra}}


def stream(port: int, body: dict) -> dict:
    """One streamed request: its arrival-to-first-token and total seconds, token events and text."""
    connection = http.client.HTTPConnection(HOST, port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    times, text, final = [], "", None
    for line in response:
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            times.append(time.perf_counter())
            text += event["token"]["text"]
            final = event.get("generated_text") or final
    connection.close()
    return {"first": times[0] - started, "total": times[-1] - started, "tokens": len(times),
            "rate": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None,
            "text": text, "final": final}


def run_clients(count: int, rounds: int, work) -> tuple[list, float]:
    """``work(client, round)`` in ``count`` threads, ``rounds`` times each; (results, wall seconds)."""
    results: list = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(rounds):
            value = work(c, r)
            with lock:
                results.append(value)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def quantile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(port: int, sources: list[dict], count: int, rounds: int, parameters: dict) -> dict:
    def source(c, r):
        return sources[(c * rounds + r) % len(sources)]

    plain, plain_wall = run_clients(count, rounds, lambda c, r: (c * rounds + r, post(
        f"http://{HOST}:{port}/generate", body_of(source(c, r), parameters), 600)))
    answers = {}
    for key, (status, body, _) in plain:
        if status != 200:
            raise RuntimeError(f"POST /generate: {status} {body}")
        answers[key] = body["generated_text"]
    streams, stream_wall = run_clients(count, rounds, lambda c, r: (c * rounds + r, stream(
        port, body_of(source(c, r), parameters))))
    mismatched = sum(s["text"] != answers[src] or s["final"] != answers[src] for src, s in streams)
    return {"concurrency": count, "requests": len(streams), "mismatched": mismatched,
            "ttft_p50_s": quantile([s["first"] for _, s in streams], 0.5),
            "ttft_p90_s": quantile([s["first"] for _, s in streams], 0.9),
            "stream_p50_s": quantile([s["total"] for _, s in streams], 0.5),
            "tokens_per_s_per_stream": statistics.fmean(s["rate"] for _, s in streams if s["rate"]),
            "tokens_per_s_all": sum(s["tokens"] for _, s in streams) / stream_wall,
            "plain_p50_s": quantile([seconds for _, (_, _, seconds) in plain], 0.5),
            "plain_p90_s": quantile([seconds for _, (_, _, seconds) in plain], 0.9),
            "plain_requests_per_s": len(plain) / plain_wall}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    sources = read_inputs(args.data, max(levels) * args.rounds)
    port = free_port()
    log_path = os.path.join(tempfile.mkdtemp(prefix="serve_stream-"), "server.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "s2s_ft.cli.serve", "--model_path", args.model_path,
                                   "--port", str(port), "--max_batch_size", str(max(levels)),
                                   *shlex.split(args.server_args)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(server, f"http://{HOST}:{port}", 600, log_path)
        parameters = json.loads(args.parameters)
        report = [measure(port, sources, count, args.rounds, parameters) for count in levels]
    finally:
        server.terminate()
        server.wait(60)
    print(f"{'streams':>8s} {'TTFT p50':>9s} {'TTFT p90':>9s} {'stream p50':>11s} {'tok/s/stream':>13s} "
          f"{'tok/s all':>10s} {'not streamed p50':>17s} {'p90':>7s} {'mismatched':>11s}")
    for row in report:
        print(f"{row['concurrency']:8d} {row['ttft_p50_s']:9.3f} {row['ttft_p90_s']:9.3f} {row['stream_p50_s']:11.3f} "
              f"{row['tokens_per_s_per_stream']:13.1f} {row['tokens_per_s_all']:10.1f} {row['plain_p50_s']:17.3f} "
              f"{row['plain_p90_s']:7.3f} {row['mismatched']:11d}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 1 if any(row["mismatched"] for row in report) else 0


if __name__ == "__main__":
    sys.exit(main())
