"""Load test of `attnsum serve` on loopback: throughput and latency percentiles per checkpoint.

    python bench/load_test.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] [--requests 200]
           [--concurrency 8] [--max-seconds 120] [--soak] [--distinct] [--warmup-seconds 0]

Each checkpoint gets its own server on 127.0.0.1 (a free port), warmed up with one request,
then `--requests` POST /summarize requests (one embedded test document each) from
`--concurrency` client threads, stopping early after `--max-seconds`; with `--soak`, the clients
post without pause for `--max-seconds`. With `--distinct`, every request carries a document of
its own (sentences of the embedded corpus drawn at random, each marked with the document's
number) and every answer is checked: each summary sentence must be a sentence of the request's
own document as the splitter gives it for that document alone, or the request counts as
wrong. Reports requests/s, p50/p99 latency, failures, wrong
answers, and the server's resident memory after the warm-up (`--warmup-seconds` of load, or
the one request) and at the end, with a sample every 5 s; stops the server with SIGTERM
(graceful shutdown).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distinct_documents(sentences: list[str], n: int, per_doc: int = 6, seed: int = 0
                       ) -> list[str]:
    """`n` documents of `per_doc` sentences drawn from `sentences`, each sentence marked with its
    document's number ("In report 7, ..."), so that an answer shows whose sentences it holds.
    Only sentences that the splitter keeps whole once marked are drawn."""
    from attnsum.sentences import split_sentences

    def mark(i: int, s: str) -> str:
        return f"In report {i}, {s[0].lower()}{s[1:]}"

    whole = [s for s in sentences if split_sentences(mark(0, s)) == [mark(0, s)]]
    rng = np.random.default_rng(seed)
    return [" ".join(mark(i, whole[j]) for j in sorted(rng.choice(len(whole), per_doc,
                                                                  replace=False)))
            for i in range(n)]


def wrong_answer(doc: str, reply: dict) -> bool:
    """True unless every summary sentence is one of `doc`'s sentences, as the splitter gives
    them for `doc` alone (a document's marked sentences appear in no other document)."""
    from attnsum.sentences import split_sentences

    own = set(split_sentences(doc))
    return not all(s in own for summary in reply["summaries"] for s in summary["sentences"])


def _post(port: int, body: bytes, timeout: float = 60.0) -> tuple[int, float, dict | None]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/summarize", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        reply = json.loads(payload) if resp.status == 200 else None
        return resp.status, time.perf_counter() - t0, reply
    except (OSError, ValueError):
        return 0, time.perf_counter() - t0, None
    finally:
        conn.close()


def _wait_healthy(port: int, proc, log, limit: float = 120.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError("the server exited: " + log.read().decode()[-2000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def _rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB; NaN where unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib / 1024
    except (OSError, StopIteration, ValueError):
        return float("nan")


def load_test(checkpoint: str, docs: list[str], requests: int, concurrency: int,
              max_seconds: float, soak: bool = False, distinct: bool = False,
              warmup_seconds: float = 0.0) -> dict:
    """One server, one load; `docs` are the request documents (taken in turn), checked against
    the answers when `distinct` (see `distinct_documents`)."""
    port = _free_port()
    # The server's log goes to a file: a pipe nobody reads fills up (64 KiB of access log lines,
    # about a thousand requests) and then blocks the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "attnsum", "serve", "--checkpoint",
                             checkpoint, "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc, log)
        count = len(docs) if soak else requests
        bodies = [json.dumps({"text": docs[i % len(docs)]}).encode() for i in range(count)]
        _post(port, bodies[0])  # warm-up
        deadline = time.time() + max_seconds
        samples: list[tuple[float, float]] = []  # (seconds since the start of the load, MiB)
        stop = threading.Event()

        def monitor():
            while not stop.is_set():
                samples.append((round(time.time() - (deadline - max_seconds), 1),
                                _rss_mib(proc.pid)))
                stop.wait(5.0)

        def one(i):
            if time.time() > deadline:
                return None
            return i, *_post(port, bodies[i])

        def client(c):  # soak: post without pause until the deadline
            out = []
            while time.time() < deadline:
                i = (c + len(out) * concurrency) % len(bodies)
                out.append((i, *_post(port, bodies[i])))
            return out

        rss_start = _rss_mib(proc.pid)
        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            if soak:
                results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
            else:
                results = [r for r in pool.map(one, range(count)) if r is not None]
        wall = time.perf_counter() - t0
        stop.set()
        watcher.join()
        rss_after = _rss_mib(proc.pid)
        after_warmup = [m for t, m in samples if t >= warmup_seconds]
        rss_before = after_warmup[0] if warmup_seconds > 0 and after_warmup else rss_start
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    lat = np.array([t for _, s, t, _ in results if s == 200]) * 1e3
    statuses: dict[str, int] = {}
    for _, status, _, _ in results:  # 0: no HTTP answer (refused or reset, client timeout)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    wrong = sum(wrong_answer(docs[i % len(docs)], reply)
                for i, s, _, reply in results if s == 200) if distinct else None
    return {"requests": len(results), "failed": sum(s != 200 for _, s, _, _ in results),
            "wrong": wrong, "statuses": statuses, "distinct": distinct,
            "seconds": wall, "requests_per_s": len(results) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "concurrency": concurrency, "warmup_seconds": warmup_seconds,
            "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "rss_growth": rss_after / rss_before - 1, "rss_samples_mib": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT (checkpoint or run folder)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--soak", action="store_true",
                   help="post without pause for --max-seconds (a soak test)")
    p.add_argument("--distinct", action="store_true",
                   help="a document of its own for every request, each answer checked")
    p.add_argument("--warmup-seconds", dest="warmup_seconds", type=float, default=0.0,
                   help="seconds of load before the memory baseline (default: one request)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    from attnsum.data import load_corpus

    corpus = load_corpus("embedded", "test").documents
    if args.distinct:  # enough for a long soak without repeating a document
        docs = distinct_documents([s for d in corpus for s in d.sentences if len(s.split()) > 8],
                                  max(args.requests, 20_000))
    else:
        docs = [" ".join(d.sentences) for d in corpus]
    results = {}
    for spec in args.checkpoints:
        name, _, ckpt = spec.partition("=")
        r = load_test(ckpt or name, docs, args.requests, args.concurrency, args.max_seconds,
                      args.soak, args.distinct, args.warmup_seconds)
        results[name] = r
        print(f"{name:>20}: {r['requests']} requests, {r['failed']} failed {r['statuses']}, "
              f"{r['wrong'] if args.distinct else 'unchecked'} wrong, "
              f"{r['requests_per_s']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
              f"server memory {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 and not r["wrong"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
