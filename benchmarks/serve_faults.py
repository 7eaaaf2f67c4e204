"""s2s-ft-serve under overload and faults (issue 24): a bounded benchmark on loopback that starts its own servers,
runs each scenario for a fixed count or time, stops by itself and prints one table.

    python benchmarks/serve_faults.py --model_path out/ckpt-2800 --data ../shared/data/squad_qg_du/dev.jsonl \\
        [--seconds 20] [--json report.json]

Scenarios (the server: ``--max_batch_size 2 --max_queue 8``, fp32 greedy, the checkpoint's target length; the 2 MB
body and SIGTERM servers hold 32 sources in their queue and 8 in a batch):
1. overload: 20 clients loop single-source requests for ``--seconds`` (10x what one batch holds, the queue 4x a
   batch): every status is 200 / 429 / 503, rejections are answered at once, every 200 equals ``s2s-ft-decode``'s
   line for its source, and the server's peak resident memory is read from /proc;
2. health while saturated (polled every 50 ms during 1) and while a 2 MB body is parsed and tokenised;
3. fuzz: 300 bodies (``fuzzed_bodies``): no 5xx, every answer JSON;
4. impatient clients: 200 requests with a 0.5 s client timeout while the queue is full, then one fresh request;
5. sampling: 20 requests without a seed (distinct samples), 3 with one (identical);
6. the decoding thread killed (``--test_hooks``): seconds until /health says 503;
7. SIGTERM while 10 clients loop: exit status, requests answered after the signal, refused ones.
Exit status 0 if every check holds, 1 otherwise, 2 if a server did not come up.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # serve_load, beside this file
from serve_load import HOST, ROOT, free_port, percentile, read_sources, wait_for_health

SERVER_FLAGS = ["--max_batch_size", "2", "--max_queue", "8", "--max_sources_per_request", "8",
                "--batch_window_ms", "5"]

WIDE = ["--max_batch_size", "8", "--max_queue", "32", "--max_sources_per_request", "32"]  # later flags win


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--model_path", required=True, help="a fine-tuned checkpoint dir")
    add("--data", required=True, help="JSONL with a \"src\" field (its first distinct sources are sent)")
    add("--sources", type=int, default=64, help="distinct sources used")
    add("--seconds", type=float, default=20.0, help="length of the overload scenario")
    add("--clients", type=int, default=20)
    add("--json", default=None, help="also write the report here")
    add("--work_dir", default=None, help="server logs and reference decodes (default: a temporary dir)")
    return p


def fuzzed_bodies(n: int, seed: int = 0) -> list[bytes]:
    """``n`` bodies a careless or hostile client might send: wrong types, nesting, huge and non-finite numbers,
    odd unicode, empty and truncated JSON, and random bytes (tests/test_serve_limits.py sends them too)."""
    rng = random.Random(seed)
    options = ["beam_size", "max_tgt_length", "min_len", "length_penalty", "forbid_duplicate_ngrams", "ngram_size",
               "forbid_ignore_word", "nbest", "do_sample", "top_k", "top_p", "temperature", "num_return_sequences",
               "seed", "src", "unknown"]
    atoms = [0, -1, 1, 2, 7, 10**30, -10**30, 10**400, 1e308, -1e-310, 0.5, 3.7, True, False, None, "", "the cat",
             "\u202e\u0000\U0001f600", "\\ud800", "x" * 5000, [], {}, ["a dog"], [["a"]], {"src": "a"}]
    literals = ["NaN", "Infinity", "-Infinity", "1e999", "-0", "123456789012345678901234567890"]
    bodies = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # an object of random options
            body = {rng.choice(options): rng.choice(atoms) for _ in range(rng.randint(0, 4))}
            if rng.random() < 0.7:
                body["src"] = rng.choice(atoms[16:] + ["a dog", ["a dog", "fish"]])
            bodies.append(json.dumps(body).encode())
        elif kind == 1:  # a valid src with one option set to a non-finite or huge literal
            bodies.append(f'{{"src": "a dog", "{rng.choice(options)}": {rng.choice(literals)}}}'.encode())
        elif kind == 2:  # nesting
            depth = rng.choice([10, 1000, 100_000])
            bodies.append(b'{"src": ' + b"[" * depth + b"]" * depth + b"}")
        elif kind == 3:  # truncated valid JSON
            text = json.dumps({"src": "the cat sat", "beam_size": 2})
            bodies.append(text[:rng.randint(0, len(text) - 1)].encode())
        elif kind == 4:  # random bytes
            bodies.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        else:  # JSON that is not an object, or odd unicode in src
            bodies.append(rng.choice([b"[]", b"null", b"3", b'"src"', b"true",
                                      '{"src": "\u0000 the \ufeff cat \u200b"}'.encode(),
                                      b'{"src": "\\ud800 cat"}', b'{"src": ["\\udfff"]}']))
    return bodies


def request(port: int, method: str, path: str, body: bytes = b"", timeout: float = 60.0) -> tuple:
    """(status, parsed JSON or None, seconds, headers) of one request on a fresh connection."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body, {"content-type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
        return response.status, parsed, time.perf_counter() - started, dict(response.getheaders())
    finally:
        connection.close()


def post(port: int, body: dict, timeout: float = 60.0) -> tuple:
    return request(port, "POST", "/generate", json.dumps(body).encode(), timeout)


class Server:
    """One s2s-ft-serve subprocess on a free loopback port."""

    def __init__(self, model_path: str, flags: list[str], log_path: str):
        self.port, self.log_path = free_port(), log_path
        command = [sys.executable, "-m", "s2s_ft.cli.serve", "--model_path", model_path, "--host", HOST, "--port",
                   str(self.port), "--log_level", "INFO", *flags]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_health(self.process, f"http://{HOST}:{self.port}", 600, log_path)

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def reference_outputs(model_path: str, sources: list[str], work: str) -> dict[str, str]:
    """``s2s-ft-decode``'s line for each source (fp32 greedy, the server's defaults)."""
    inputs, outputs = os.path.join(work, "sources.jsonl"), os.path.join(work, "decoded.txt")
    with open(inputs, "w", encoding="utf-8") as handle:
        for source in sources:
            handle.write(json.dumps({"src": source}) + "\n")
    subprocess.run([sys.executable, os.path.join(ROOT, "decode_seq2seq.py"), "--model_path", model_path,
                    "--input_file", inputs, "--output_file", outputs, "--batch_size", "8", "--device", "cpu"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(outputs, encoding="utf-8") as handle:
        return dict(zip(sources, (line.rstrip("\n") for line in handle)))


def loop_clients(port: int, sources: list[str], clients: int, stop: threading.Event, timeout: float = 120.0):
    """Clients sending single-source requests until ``stop``; returns the list they fill with
    (sent, status, answer, seconds, source)."""
    results, threads = [], []

    def client(c: int) -> None:
        i = c
        while not stop.is_set():
            source = sources[i % len(sources)]
            i += clients
            sent = time.monotonic()
            try:
                status, answer, seconds, _ = post(port, {"src": source}, timeout)
            except ConnectionRefusedError:
                status, answer, seconds = "refused", None, time.monotonic() - sent
                time.sleep(0.05)
            except (ConnectionError, http.client.HTTPException, TimeoutError) as error:
                status, answer, seconds = type(error).__name__, None, time.monotonic() - sent
                time.sleep(0.05)
            results.append((sent, status, answer, seconds, source))

    for c in range(clients):
        threads.append(threading.Thread(target=client, args=(c,), daemon=True))
        threads[-1].start()
    return results, threads


def poll_health(port: int, stop: threading.Event, every: float = 0.05) -> list[float]:
    latencies: list[float] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                latencies.append(request(port, "GET", "/health", timeout=10)[2])
            except OSError:
                latencies.append(10.0)
            time.sleep(every)

    threading.Thread(target=poll, daemon=True).start()
    return latencies


def overload(server: Server, sources: list[str], reference: dict, args) -> dict:
    stop = threading.Event()
    health = poll_health(server.port, stop)
    results, threads = loop_clients(server.port, sources, args.clients, stop)
    time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join(120)
    statuses = [r[1] for r in results]
    rejected = [r[3] for r in results if r[1] in (429, 503)]
    wrong = [r for r in results if r[1] == 200 and r[2]["output"] != reference[r[4]]]
    answered = [r[3] for r in results if r[1] == 200]
    return {"requests": len(results), "ok": statuses.count(200), "429": statuses.count(429),
            "503": statuses.count(503), "other": sum(s not in (200, 429, 503) for s in statuses),
            "wrong_answers": len(wrong), "rejection_p99_ms": round(1000 * percentile(rejected, 99), 1)
            if rejected else None, "rejection_max_ms": round(1000 * max(rejected), 1) if rejected else None,
            "answer_p50_ms": round(1000 * percentile(answered, 50), 1) if answered else None,
            "health_p99_ms": round(1000 * percentile(health, 99), 1) if health else None,
            "server_peak_rss_mb": round(server.peak_rss_mb())}


def big_body(server: Server, sources: list[str]) -> dict:
    """/health while a 2 MB body (32 sources of 64 kB) is read, parsed and tokenised."""
    text = " ".join(sources)
    source = (text * (65536 // len(text) + 1))[:65536]
    body = json.dumps({"src": [source] * 32}).encode()
    stop = threading.Event()
    health = poll_health(server.port, stop, every=0.01)
    status, answer, seconds, _ = request(server.port, "POST", "/generate", body, timeout=600)
    stop.set()
    return {"body_mb": round(len(body) / 2**20, 2), "status": status, "seconds": round(seconds, 2),
            "health_polls": len(health), "health_p99_ms": round(1000 * percentile(health, 99), 1) if health else None,
            "health_max_ms": round(1000 * max(health), 1) if health else None}


def fuzz(server: Server) -> dict:
    statuses, not_json = [], 0
    for body in fuzzed_bodies(300):
        status, answer, _, _ = request(server.port, "POST", "/generate", body)
        statuses.append(status)
        not_json += answer is None
    return {"bodies": len(statuses), "5xx": sum(s >= 500 for s in statuses), "not_json": not_json,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def impatient(server: Server, sources: list[str]) -> dict:
    """Normal latency of one request, then 200 requests with a 0.5 s client timeout (sent 20 at a time), then the
    latency of a fresh request."""
    normal = post(server.port, {"src": sources[0]})[2]
    timed_out = answered = 0
    lock = threading.Lock()

    def send(i: int) -> None:
        nonlocal timed_out, answered
        try:
            post(server.port, {"src": sources[i % len(sources)], "beam_size": 4}, 0.5)
            with lock:
                answered += 1
        except (TimeoutError, OSError):
            with lock:
                timed_out += 1

    for start in range(0, 200, 20):
        threads = [threading.Thread(target=send, args=(i,)) for i in range(start, start + 20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    status, _, fresh, _ = post(server.port, {"src": sources[1]})
    return {"normal_ms": round(1000 * normal, 1), "client_timeouts": timed_out, "answered_in_time": answered,
            "fresh_status": status, "fresh_ms": round(1000 * fresh, 1)}


def sampling(server: Server, source: str) -> dict:
    body = {"src": source, "do_sample": True}
    unseeded = [post(server.port, body)[1]["output"] for _ in range(20)]
    seeded = [post(server.port, {**body, "seed": 3})[1]["output"] for _ in range(3)]
    return {"distinct_of_20_unseeded": len(set(unseeded)), "seeded_identical": len(set(seeded)) == 1}


def kill_decoder(server: Server, source: str) -> dict:
    assert post(server.port, {"src": source})[0] == 200
    killed = time.monotonic()
    request(server.port, "POST", "/_test/kill_decoder")
    while request(server.port, "GET", "/health")[0] != 503:
        if time.monotonic() - killed > 10:
            return {"health_503_after_s": None}
        time.sleep(0.01)
    seconds = time.monotonic() - killed
    return {"health_503_after_s": round(seconds, 3), "generate_status_after": post(server.port, {"src": source})[0]}


def sigterm(server: Server, sources: list[str]) -> dict:
    stop = threading.Event()
    results, threads = loop_clients(server.port, sources, 10, stop)
    time.sleep(3)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(120)
    drained = time.monotonic() - signalled
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(120)
    after = [r[1] for r in results if r[0] >= signalled or r[0] + r[3] >= signalled]
    with open(server.log_path, encoding="utf-8", errors="replace") as log:
        all_answered = "every request taken in was answered" in log.read()
    return {"exit_status": status, "drain_s": round(drained, 2), "answered_after_signal": after.count(200),
            "refused_after_signal": sum(s in ("refused", 503, "ConnectionResetError") for s in after),
            "other_after_signal": sum(s not in (200, 503, "refused", "ConnectionResetError") for s in after),
            "server_says_all_answered": all_answered}


def checks(report: dict) -> list[str]:
    """The guarantees, each as (holds, what)."""
    o, b, f, i, s, k, t = (report[name] for name in ("overload", "big_body", "fuzz", "impatient", "sampling",
                                                      "kill_decoder", "sigterm"))
    rules = [
        (o["other"] == 0, "overload: only 200 / 429 / 503"),
        (o["wrong_answers"] == 0, "overload: every 200 equals s2s-ft-decode's line"),
        (o["429"] + o["503"] > 0, "overload: the server was overloaded (some requests refused)"),
        (o["rejection_p99_ms"] is not None and o["rejection_p99_ms"] < 50, "overload: rejections p99 < 50 ms"),
        (o["health_p99_ms"] is not None and o["health_p99_ms"] < 100, "saturated: /health p99 < 100 ms"),
        (b["health_p99_ms"] is not None and b["health_p99_ms"] < 100, "2 MB body: /health p99 < 100 ms"),
        (f["5xx"] == 0 and f["not_json"] == 0, "fuzz: no 5xx, every answer JSON"),
        (i["fresh_status"] == 200 and i["fresh_ms"] < i["normal_ms"] + 5000,
         "after 200 impatient clients: a fresh request within its normal latency + 5 s"),
        (s["distinct_of_20_unseeded"] >= 19 and s["seeded_identical"], "sampling: >= 19 of 20 distinct, seeded same"),
        (k["health_503_after_s"] is not None and k["health_503_after_s"] < 1, "decoder killed: /health 503 < 1 s"),
        (t["exit_status"] == 0 and t["server_says_all_answered"] and t["other_after_signal"] == 0,
         "SIGTERM: in flight answered, new refused, exit 0"),
    ]
    return [("ok  " if holds else "FAIL") + " " + what for holds, what in rules]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="serve_faults_")
    os.makedirs(work, exist_ok=True)
    sources = read_sources(args.data, args.sources)
    reference = reference_outputs(args.model_path, sources, work)
    report = {"model_path": args.model_path, "data": args.data, "server_flags": SERVER_FLAGS,
              "clients": args.clients, "seconds": args.seconds}
    server = Server(args.model_path, SERVER_FLAGS, os.path.join(work, "server.log"))
    try:
        report["overload"] = overload(server, sources, reference, args)
        report["impatient"] = impatient(server, sources)
        report["fuzz"] = fuzz(server)
        report["sampling"] = sampling(server, sources[0])
    finally:
        server.stop()
    server = Server(args.model_path, [*SERVER_FLAGS, *WIDE, "--max_body_bytes", str(4 * 2**20), "--max_source_chars",
                                      "70000", "--too_long", "truncate", "--test_hooks"],
                    os.path.join(work, "server_big.log"))
    try:
        report["big_body"] = big_body(server, sources)
        report["kill_decoder"] = kill_decoder(server, sources[0])
    finally:
        server.stop()
    server = Server(args.model_path, [*SERVER_FLAGS, *WIDE, "--batch_window_ms", "100"],
                    os.path.join(work, "server_sigterm.log"))
    try:
        report["sigterm"] = sigterm(server, sources)
    finally:
        server.stop()
    report["checks"] = checks(report)
    for name in ("overload", "big_body", "fuzz", "impatient", "sampling", "kill_decoder", "sigterm"):
        print(f"{name:<13} " + ", ".join(f"{k} {v}" for k, v in report[name].items()))
    print()
    for line in report["checks"]:
        print(line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0 if all(line.startswith("ok") for line in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
