"""Load test of `attnsum serve` on loopback: throughput and latency percentiles per checkpoint.

    python bench/load_test.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] [--requests 200]
           [--concurrency 8] [--max-seconds 120] [--soak]

Each checkpoint gets its own server on 127.0.0.1 (a free port), warmed up with one request,
then `--requests` POST /summarize requests (one embedded test document each) from
`--concurrency` client threads, stopping early after `--max-seconds`; with `--soak`, the clients
post without pause for `--max-seconds`. Reports requests/s, p50/p99 latency, failures, and the
server's resident memory after the warm-up and at the end; stops the server with SIGTERM
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: bytes, timeout: float = 60.0) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/summarize", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t0
    except OSError:
        return 0, time.perf_counter() - t0
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
              max_seconds: float, soak: bool = False) -> dict:
    port = _free_port()
    # The server's log goes to a file: a pipe nobody reads fills up (64 KiB of access log lines,
    # about a thousand requests) and then blocks the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "attnsum.cli", "serve", "--checkpoint",
                             checkpoint, "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc, log)
        bodies = [json.dumps({"text": docs[i % len(docs)]}).encode() for i in range(requests)]
        _post(port, bodies[0])  # warm-up
        rss_before = _rss_mib(proc.pid)
        deadline = time.time() + max_seconds

        def one(body):
            if time.time() > deadline:
                return None
            return _post(port, body)

        def client(i):  # soak: post without pause until the deadline
            out = []
            while time.time() < deadline:
                out.append(_post(port, bodies[(i + len(out) * concurrency) % len(bodies)]))
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            if soak:
                results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
            else:
                results = [r for r in pool.map(one, bodies) if r is not None]
        wall = time.perf_counter() - t0
        rss_after = _rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    lat = np.array([t for s, t in results if s == 200]) * 1e3
    statuses: dict[str, int] = {}
    for status, _ in results:  # 0: no HTTP answer (connection refused or reset, client timeout)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(results), "failed": sum(s != 200 for s, _ in results),
            "statuses": statuses,
            "seconds": wall, "requests_per_s": len(results) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "concurrency": concurrency, "rss_before_mib": rss_before, "rss_after_mib": rss_after}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT (checkpoint or run folder)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--soak", action="store_true",
                   help="post without pause for --max-seconds (a soak test)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    from attnsum.data import load_corpus

    docs = [" ".join(d.sentences) for d in load_corpus("embedded", "test").documents]
    results = {}
    for spec in args.checkpoints:
        name, _, ckpt = spec.partition("=")
        r = load_test(ckpt or name, docs, args.requests, args.concurrency, args.max_seconds,
                      args.soak)
        results[name] = r
        print(f"{name:>20}: {r['requests']} requests, {r['failed']} failed {r['statuses']}, "
              f"{r['requests_per_s']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
              f"server memory {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
