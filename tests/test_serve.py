"""The Python API, the batch command and the HTTP service (a real server on loopback)."""

import contextlib
import http.client
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import free_port

from attnsum.checkpoints import read_training_summary, resolve_checkpoint
from attnsum.cli import main
from attnsum.config import ModelConfig, TrainConfig
from attnsum.data import DataError
from attnsum.errors import InputError
from attnsum.input_files import iter_documents
from attnsum.sentences import split_sentences
from attnsum.summarize_files import run_summarize
from attnsum.summarizer import Summarizer
from attnsum.train import train

ARTICLE = (
    "The city council approved a new budget for public schools on Tuesday night. "
    "Teachers had asked for smaller classes and better equipment for several years. "
    "The mayor said the plan would be paid for by a small increase in property taxes. "
    "Some residents argued that the increase would hurt families with low incomes. "
    "Ok then. "
    "The budget also includes money for three new libraries across the city."
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A served student as the project makes them: a patterned one-layer student started from
    layer 1 of a tiny teacher and distilled from it (a few steps: the service is under test)."""
    root = tmp_path_factory.mktemp("ckpt")
    common = dict(steps=3, batch_size=2, val_every=3, limit=6, progress=False)
    train(TrainConfig(model=ModelConfig.from_preset("tiny", max_len=128), out=str(root / "teacher"),
                      **common))
    run = train(TrainConfig(model=ModelConfig.from_preset("tiny-student", "paper", max_len=128),
                            out=str(root / "student"), teacher=str(root / "teacher"),
                            init_from=str(root / "teacher"),
                            **common))
    folder = resolve_checkpoint(run["out"])
    trained = read_training_summary(folder)
    assert trained["init_layers"] == [1] and trained["train"]["teacher"] == str(root / "teacher")
    return folder


@pytest.fixture(scope="module")
def summarizer(ckpt):
    return Summarizer.from_pretrained(ckpt)


def test_api_summaries(summarizer):
    sents = split_sentences(ARTICLE)
    [s] = summarizer.summarize(ARTICLE, k=3)
    assert len(s.sentences) == 3 and s.indices == sorted(s.indices)
    assert [sents[i] for i in s.indices] == s.sentences
    assert 4 not in s.indices  # "Ok then." is too short to be a candidate
    assert all(0 < p < 1 for p in s.scores)
    many = summarizer.summarize([ARTICLE, ARTICLE.replace("Tuesday", "Monday")], k=2)
    assert len(many) == 2 and all(len(m.sentences) == 2 for m in many)


def test_api_long_document_is_cut_at_a_sentence_boundary(summarizer):
    long_doc = " ".join(f"Sentence number {i} talks about topic {i} at some length here."
                        for i in range(200))
    [s] = summarizer.summarize(long_doc)
    ex, _, idx = summarizer.prepare([long_doc])[0]
    assert len(ex.input_ids) <= 512 and max(s.indices) <= max(idx) < 100


@pytest.mark.parametrize("text, msg", [
    ("", "empty document"),
    ("   \n ", "empty document"),
    ("short words only", "no sentence longer than 5 words"),
    ("\x00\x01\x02\x03 garbage \x04\x05\x06\x07\x08", "does not look like text"),
    ("A lone surrogate \ud800 sits in this otherwise fine sentence.", "not valid Unicode"),
])
def test_api_bad_documents(summarizer, text, msg):
    with pytest.raises(InputError, match=msg):
        summarizer.summarize(["A fine first document with enough words in it.", text])


def test_api_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(RuntimeError, match="not an attnsum checkpoint"):
        Summarizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"something": "else"}')
    (tmp_path / "model.safetensors").write_bytes(b"not ours")
    with pytest.raises(RuntimeError, match="not an attnsum checkpoint"):
        Summarizer.from_pretrained(tmp_path)


def test_batch_command_files_folder_jsonl_and_text(tmp_path, ckpt, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(ARTICLE)
    (docs / "b.jsonl").write_text(json.dumps({"id": "x1", "body": ARTICLE}) + "\n"
                                  + json.dumps({"id": "x2", "body": "too short"}) + "\n"
                                  + json.dumps({"id": "x3", "body": ARTICLE + " \ud800"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["summarize", "--checkpoint", str(ckpt), str(docs), "--field", "body",
                 "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == [str(docs / "a.txt"), "x1", "x2", "x3"]
    assert len(recs[0]["summary"]) == 3 and recs[0]["summary"] == recs[1]["summary"]
    assert "no sentence longer than 5 words" in recs[2]["error"]
    assert "not valid Unicode" in recs[3]["error"]  # a lone surrogate from a JSON escape
    err = capsys.readouterr().err
    assert "2 could not be" in err and f"checkpoint {ckpt};" in err
    assert main(["summarize", "--checkpoint", str(ckpt), str(docs / "a.txt"), "--format", "text",
                 "-k", "2"]) == 0
    assert capsys.readouterr().out.strip().count("\n") == 1  # two sentences, one per line


def test_summarize_reads_parquet_like_json_lines(tmp_path, ckpt, summarizer):
    """A Parquet file (and a folder holding one) gives the records a JSON Lines file of the same
    rows gives: ids from its id column, the --field column summarized, a row without the field
    an error record in its place; the progress total is its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnsum.input_files import count_documents

    rows = {"id": ["p1", "p2", "p3"], "body": [ARTICLE, None, ARTICLE.replace("Tuesday", "Friday")]}
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table(rows), folder / "part-0.parquet", row_group_size=2)
    (tmp_path / "same.jsonl").write_text("".join(
        json.dumps({"id": i, "body": b} if b is not None else {"id": i}) + "\n"
        for i, b in zip(rows["id"], rows["body"], strict=True)))
    outs = {}
    for name, src in (("parquet", folder), ("jsonl", tmp_path / "same.jsonl")):
        outs[name] = tmp_path / f"{name}.out.jsonl"
        assert main(["summarize", "--checkpoint", str(ckpt), str(src), "--field", "body",
                     "--out", str(outs[name])]) == 0
    got, want = ([json.loads(line) for line in outs[n].read_text().splitlines()]
                 for n in ("parquet", "jsonl"))
    # as for JSON Lines, a row that cannot be read is named by its place
    assert [r["id"] for r in got] == ["p1", f"{folder / 'part-0.parquet'}[row 1]", "p3"]
    assert got[0]["summary"] == want[0]["summary"] and got[2]["summary"] == want[2]["summary"]
    assert "no field 'body'" in got[1]["error"] and "no field 'body'" in want[1]["error"]
    assert count_documents([str(folder)]) == 3
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert main(["summarize", "--checkpoint", str(ckpt), str(tmp_path / "bad.parquet"),
                 "--out", str(tmp_path / "bad.out.jsonl")]) == 2


def test_batch_stdin_streams_in_order(summarizer):
    lines = "".join(json.dumps({"text": ARTICLE, "id": str(i)}) + "\n" for i in range(7))
    out = io.StringIO()
    docs = iter_documents(["-"], jsonl_stdin=True, stdin=io.StringIO(lines))
    counts = run_summarize(summarizer, docs, out, chunk=3, progress=False)
    assert counts == {"documents": 7, "errors": 0}
    assert [json.loads(r)["id"] for r in out.getvalue().splitlines()] == [str(i) for i in range(7)]
    plain = iter_documents(["-"], stdin=io.StringIO(ARTICLE))
    assert list(plain) == [("<stdin>", ARTICLE)]


def test_batch_bad_input(tmp_path):
    """A line or file that cannot be read is that document's error record (the others are
    summarized); a stream that cannot be read on (a truncated .gz) breaks off with one line."""
    import gzip

    from attnsum.input_files import Unreadable

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{oops\n[1, 2]\n{"text": "caf\xe9"}\n{"text": "after"}\n')
    docs = list(iter_documents([str(bad)]))
    assert [d[0] for d in docs] == [f"{bad}:1", f"{bad}:2", f"{bad}:3", f"{bad}:4", f"{bad}:5"]
    assert docs[0][1] == "fine" and docs[4][1] == "after"
    assert all(isinstance(t, Unreadable) for _, t in docs[1:4])
    assert "line 2: malformed JSON" in docs[1][1] and "line 3: no field 'text'" in docs[2][1]
    assert "line 4: not valid UTF-8" in docs[3][1]
    docs = list(iter_documents([str(bad)], field="body"))
    assert isinstance(docs[0][1], Unreadable) and "no field 'body'" in docs[0][1]
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait")
    [(_, text)] = iter_documents([str(tmp_path / "latin.txt")])
    assert isinstance(text, Unreadable) and "not valid UTF-8" in text
    whole = gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(50)))
    (tmp_path / "torn.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"torn\.jsonl\.gz:\d+: cannot be read on"):
        list(iter_documents([str(tmp_path / "torn.jsonl.gz")]))


def test_summarize_keeps_every_readable_document_around_bad_ones(ckpt, tmp_path, capsys):
    """Malformed lines and a document over --max-chars become error records in place; the
    summaries before a stream breaks off are written before its error."""
    import gzip

    docs = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": ARTICLE}) for i in range(5)]
    docs.write_text("\n".join(lines[:2] + ["{oops"] + lines[2:3]
                              + [json.dumps({"id": "long", "text": ARTICLE * 3})] + lines[3:])
                    + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["summarize", "--checkpoint", str(ckpt), str(docs), "--out", str(out),
                 "--max-chars", str(len(ARTICLE) + 1)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["d0", "d1", f"{docs}:3", "d2", "long", "d3", "d4"]
    assert "malformed JSON" in recs[2]["error"] and "over the limit of" in recs[4]["error"]
    assert all("summary" in r for i, r in enumerate(recs) if i not in (2, 4))
    assert "2 could not be" in capsys.readouterr().err

    whole = gzip.compress(("\n".join(lines) + "\n").encode() * 40)
    torn = tmp_path / "torn.jsonl.gz"
    torn.write_bytes(whole[: len(whole) * 3 // 4])
    out = tmp_path / "torn-out.jsonl"
    assert main(["summarize", "--checkpoint", str(ckpt), str(torn), "--out", str(out),
                 "--chunk", "8"]) == 2
    assert "torn.jsonl.gz:" in capsys.readouterr().err
    kept = Path(f"{out}.partial").read_text().splitlines()
    assert len(kept) > 8 and not out.exists()  # every document read before the break


def test_summarize_never_writes_over_its_input(ckpt, tmp_path, capsys):
    docs = tmp_path / "same.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": ARTICLE}) + "\n")
    before = docs.read_bytes()
    for out in (docs, tmp_path / "." / "same.jsonl"):
        assert main(["summarize", "--checkpoint", str(ckpt), str(docs), "--out", str(out)]) == 2
        assert "is also an input" in capsys.readouterr().err
    (tmp_path / "link.jsonl").symlink_to(docs)
    assert main(["summarize", "--checkpoint", str(ckpt), str(docs), "--out",
                 str(tmp_path / "link.jsonl")]) == 2
    assert docs.read_bytes() == before


# --------------------------------------------------------------------------- the service


@contextlib.contextmanager
def _serving(summarizer, **limits):
    """A real server (uvicorn, loopback, a free port) in a thread; yields its port."""
    import uvicorn

    from attnsum.serve import ServeConfig, create_app
    from attnsum.server import http_protocol

    port = free_port()
    cfg = ServeConfig(port=port, **limits)
    srv = uvicorn.Server(uvicorn.Config(create_app(summarizer, cfg), host="127.0.0.1", port=port,
                                        log_level="warning", http=http_protocol(cfg)))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(summarizer):
    with _serving(summarizer, max_body=200_000, max_docs=4, max_chars=20_000,
                  max_wait_ms=20) as port:
        yield port


def _wait_ready(port, path="/ready", proc=None, limit_s=60):
    """Until `path` answers 200 (/ready: the warm-up call done); `proc`, a server process that
    must stay up meanwhile."""
    deadline = time.time() + limit_s
    while True:
        assert proc is None or proc.poll() is None, "the server exited"
        assert time.time() < deadline, f"{path} never answered 200"
        with contextlib.suppress(OSError):  # refused until the server listens
            if _request(port, "GET", path)[0] == 200:
                return
        time.sleep(0.1)


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, payload


def test_service_endpoints(server, ckpt):
    assert _request(server, "GET", "/health") == (200, _request(server, "GET", "/health")[1])
    status, health = _request(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["preset"] == "tiny-student"
    import hashlib

    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert health["model"] == ckpt.name and health["weights_sha256"] == digest
    assert str(ckpt.parent) not in json.dumps(health)  # no path of this machine
    status, body = _request(server, "POST", "/summarize", {"text": ARTICLE, "k": 2})
    assert status == 200 and len(body["summaries"][0]["sentences"]) == 2
    status, body = _request(server, "POST", "/summarize", {"texts": [ARTICLE, ARTICLE]})
    assert status == 200 and len(body["summaries"]) == 2


def test_slow_clients_are_closed_at_the_header_timeout(summarizer):
    """A connection that sends no request, or trickles its headers a byte at a time, is closed
    at the header timeout; a client that sends whole requests keeps its connection."""
    with _serving(summarizer, header_timeout_s=1.0) as port:
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.time()
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                trickle.send(bytes([byte]))
            except OSError:  # closed under us: what should happen
                break
            time.sleep(0.1)
            if time.time() - t0 > 5:
                break
        assert trickle.recv(100) == b"" and time.time() - t0 < 3  # closed, not answered
        assert silent.recv(100) == b""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(2):  # keep-alive across requests, each sent whole
            conn.request("GET", "/health")
            assert conn.getresponse().read() and True
            time.sleep(0.6)  # under the timeout between requests
        conn.close()
        silent.close()
        trickle.close()


def test_service_batches_concurrent_requests(server):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _request(server, "POST", "/summarize",
                                                   {"text": ARTICLE}), range(16)))
    assert all(s == 200 for s, _ in results)
    # The same answer whatever batch a request joined (scores up to float rounding).
    first = results[0][1]["summaries"][0]
    for _, body in results:
        got = body["summaries"][0]
        assert got["indices"] == first["indices"]
        assert got["scores"] == pytest.approx(first["scores"], abs=1e-5)


@pytest.mark.parametrize("body, status, msg", [
    ({"text": ""}, 422, "empty document"),
    ({"text": "no boundary and few words"}, 422, "no sentence longer than 5 words"),
    ({"text": "\x00\x01\x02\x03\x04\x05 \x06\x07\x08\x0b"}, 422, "does not look like text"),
    (b"\xff\xfe\x00garbage", 400, "not valid UTF-8 JSON"),
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),  # past the parser's recursion
    ({"texts": "a string"}, 400, "list of strings"),
    ({"text": ARTICLE, "texts": [ARTICLE]}, 400, "exactly one"),
    ({"texts": [ARTICLE] * 5}, 413, "limit is 4"),
    ({"text": "word " * 5000}, 413, "characters"),
    ({"text": ARTICLE, "k": 0}, 400, '"k"'),
    # a JSON escape that is no character: a lone surrogate
    (b'{"text": "The council met on Tuesday \\ud800 to approve the budget."}', 422,
     "not valid Unicode"),
    ({"texts": [ARTICLE, "Fine words here \udfff but a broken character inside."]}, 422,
     "document 1: the text is not valid Unicode"),
])
def test_service_bad_input_then_still_up(server, body, status, msg):
    got, payload = _request(server, "POST", "/summarize", body)
    assert got == status and msg in payload["error"]
    assert _request(server, "POST", "/summarize", {"text": ARTICLE})[0] == 200


@pytest.mark.parametrize("method, path, status", [("GET", "/nowhere", 404),
                                                  ("POST", "/health", 405),
                                                  ("GET", "/summarize", 405)])
def test_service_unknown_paths_and_methods_answer_json(server, method, path, status):
    got, payload = _request(server, method, path)
    assert got == status and isinstance(payload["error"], str) and payload["error"]


def test_service_deadline_covers_preparation_and_drops_the_work(summarizer, monkeypatch):
    """Heavy requests in parallel past a short deadline: each answered 504 near the deadline,
    their remaining documents never prepared and none scored; the service then answers a
    light request as before."""
    import attnsum.summarizer as summarizer_module

    prepared, scored = [], []
    split, score = summarizer_module.split_sentences, summarizer.score
    # 50 ms a document: a preparation slow enough for the deadline to fall inside it (splitting
    # and tokenizing a 17,000-character document take a few ms)
    monkeypatch.setattr(summarizer_module, "split_sentences",
                        lambda t: prepared.append(1) or time.sleep(0.05) or split(t))
    monkeypatch.setattr(summarizer, "score", lambda docs, *a: scored.extend(docs) or score(docs, *a))
    heavy = " ".join(f"Sentence number {i} of this long report talks about topic {i} here."
                     for i in range(250))  # about 17,000 characters
    timeout = 0.3
    with _serving(summarizer, max_docs=8, max_chars=20_000, max_body=400_000,
                  timeout_s=timeout) as port:
        _wait_ready(port)
        prepared.clear()  # the warm-up's document
        scored.clear()

        def post(_):
            t0 = time.perf_counter()
            status, payload = _request(port, "POST", "/summarize", {"texts": [heavy] * 8})
            return status, payload, time.perf_counter() - t0

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(post, range(6)))
        assert [s for s, _, _ in results] == [504] * 6
        assert all("longer than 0.3 s" in p["error"] for _, p, _ in results)
        assert max(t for _, _, t in results) < timeout + 5  # answered at the deadline
        time.sleep(1.0)  # let cancelled preparations reach their next document
        assert len(prepared) < 6 * 8 / 2 and not scored
        status, body = _request(port, "POST", "/summarize", {"text": ARTICLE})
        assert status == 200 and len(body["summaries"][0]["sentences"]) == 3


def test_service_refuses_a_huge_body_without_reading_it(server):
    # Announce a 50 MB body, send a little of it: the answer comes from the header alone.
    with socket.create_connection(("127.0.0.1", server), timeout=30) as s:
        s.sendall(b"POST /summarize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 52428800\r\n\r\n" + b"{" * 1000)
        reply = b""
        while b"limit" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply
    status, _ = _request(server, "POST", "/summarize", b'{"text": "' + b"a" * 300_000 + b'"}')
    assert status == 413
    assert _request(server, "GET", "/health")[0] == 200


def _killed_at_the_end(monkeypatch, run):
    """`run()` killed once every record is in OUT.partial, before it is renamed to OUT."""
    import attnsum.summarize_files as sf

    whole = sf.run_summarize

    def killed(*a, **kw):
        whole(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(sf, "run_summarize", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()


def test_summarize_to_a_file_resumes_after_a_kill(ckpt, tmp_path, monkeypatch):
    """A killed run leaves only OUT.partial and its record (never a file that looks complete);
    the rerun keeps its whole records, cuts the torn one, and ends with exactly the
    uninterrupted output. A rerun with other inputs or options refuses, until --overwrite."""
    from attnsum.summarize_files import summarize_command

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": ARTICLE.replace("three", str(i))})
                            + "\n" for i in range(7)))
    args = dict(fmt="jsonl", field="text", jsonl_stdin=False, k=2, trigram_blocking=True,
                chunk=3)
    clean = tmp_path / "clean.jsonl"
    summarize_command(str(ckpt), [str(docs)], str(clean), **args)
    want = clean.read_text().splitlines(keepends=True)
    assert len(want) == 7 and sorted(p.name for p in tmp_path.iterdir()) == [
        "clean.jsonl", "docs.jsonl"]

    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    _killed_at_the_end(monkeypatch, lambda: summarize_command(str(ckpt), [str(docs)], str(out),
                                                              **args))
    assert not out.exists() and (tmp_path / "out.jsonl.partial.json").is_file()
    partial.write_text("".join(want[:3]) + want[3][:20])  # as if killed mid-record
    with pytest.raises(DataError, match="out.jsonl.partial was started with k 2, now 1: rerun"):
        summarize_command(str(ckpt), [str(docs)], str(out), **{**args, "k": 1})
    counts = summarize_command(str(ckpt), [str(docs)], str(out), **args)
    assert counts["documents"] == 4  # only the documents after the 3 whole records
    assert out.read_text() == clean.read_text()
    assert not partial.exists() and not (tmp_path / "out.jsonl.partial.json").exists()

    _killed_at_the_end(monkeypatch, lambda: summarize_command(str(ckpt), [str(docs)], str(out),
                                                              **args))
    docs.write_text(docs.read_text() + json.dumps({"id": "d7", "text": ARTICLE}) + "\n")
    with pytest.raises(DataError, match="other input files"):
        summarize_command(str(ckpt), [str(docs)], str(out), **args)
    counts = summarize_command(str(ckpt), [str(docs)], str(out), overwrite=True, **args)
    assert counts["documents"] == 8 and out.read_text().startswith(clean.read_text())

    first = tmp_path / "first.jsonl"
    summarize_command(str(ckpt), [str(docs)], str(first), limit=2, **args)
    assert first.read_text().splitlines(keepends=True) == want[:2]


def test_bounded_soak_of_the_service(ckpt, tmp_path):
    """bench/load_test.py --soak --distinct: 8 clients posting distinct documents without pause
    for 20 s against a real server process; no failure, every summary made of its own
    document's sentences, and the server's memory does not keep growing."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "bench/load_test.py", f"student={ckpt}", "--soak",
                           "--distinct", "--concurrency", "8", "--max-seconds", "20",
                           "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out.read_text())["student"]
    assert r["failed"] == 0 and r["wrong"] == 0 and r["requests"] >= 8
    assert r["p50_ms"] <= r["p99_ms"]
    assert r["requests_per_s"] == pytest.approx(r["requests"] / r["seconds"])
    assert 0 < r["rss_before_mib"] and r["rss_after_mib"] < 1.5 * r["rss_before_mib"]


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("bf16", 2e-4)])
def test_a_documents_scores_do_not_depend_on_its_batch(precision, tol):
    """The released model scores a document the same alone and among others of other lengths:
    a batch holds documents of one padded length only (batching.length_batches), so no
    document's padding, and so its rounding in bf16, follows its neighbours."""
    from attnsum.data import load_corpus

    s = Summarizer.from_pretrained(precision=precision)
    docs = load_corpus("embedded", "val", limit=12).documents
    texts = [" ".join(d.sentences[:4 + 3 * i]) for i, d in enumerate(docs)]  # 4 to 37 sentences
    prepared = s.prepare(texts)
    assert len({len(p[0].input_ids) // s.PAD_TO for p in prepared}) > 2  # several lengths
    together = s.score(prepared, k=3, batch_size=8)
    for p, t in zip(prepared, together, strict=True):
        [alone] = s.score([p], k=3)
        assert alone.indices == t.indices
        assert max(abs(a - b) for a, b in zip(alone.scores, t.scores, strict=True)) <= tol


def test_the_server_stops_within_its_grace_even_mid_preparation(ckpt, tmp_path):
    """SIGTERM while the service prepares the longest documents it takes (100k characters of
    punctuation-dense text each, the splitter's worst case, on every preparation thread): the
    process exits within its graceful limit (--timeout), here 10 s."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attnsum", "serve", "--checkpoint", str(ckpt),
                             "--port", str(port), "--timeout", "10"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(port, "/health", proc, 120)
        body = json.dumps({"texts": ["Hi?! " * 20_000] * 4}).encode()

        def post():
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/summarize", body, {"Content-Type": "application/json"})
                conn.getresponse().read()

        clients = [threading.Thread(target=post, daemon=True) for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(0.5)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.time() - t0 < 10 + 2
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_the_progress_total_is_counted_before_summarizing(tmp_path):
    """The summarize bar's total: a line per JSON Lines record (gzipped too), one per .txt file,
    `--limit` when smaller; unknown for standard input."""
    import gzip

    from attnsum.input_files import count_documents

    (tmp_path / "a.txt").write_text(ARTICLE)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": ARTICLE}) + "\n"
                                              for _ in range(5)) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": ARTICLE}) + "\n" for _ in range(3)))
    assert count_documents([str(tmp_path)]) == 9 == len(list(iter_documents([str(tmp_path)])))
    assert count_documents([str(tmp_path)], limit=4) == 4
    assert count_documents(["-"]) is None


def test_service_schema_probes_and_metrics(summarizer, monkeypatch):
    """The OpenAPI schema made from the request and response models, its interactive page,
    readiness only after the warm-up call, and Prometheus metrics that count what was served."""
    gate = threading.Event()
    real = summarizer.summarize

    def held(*a, **kw):  # the warm-up waits for the test
        gate.wait(30)
        return real(*a, **kw)

    monkeypatch.setattr(summarizer, "summarize", held)
    with _serving(summarizer, max_wait_ms=1) as port:
        assert _request(port, "GET", "/ready") == (503, {"status": "warming up"})
        assert _request(port, "GET", "/health")[0] == 200  # alive meanwhile
        gate.set()
        _wait_ready(port)
        status, schema = _request(port, "GET", "/openapi.json")
        assert status == 200 and schema["openapi"].startswith("3.")
        post = schema["paths"]["/summarize"]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["properties"]) == {"text", "texts", "k", "trigram_blocking"}
        assert body["properties"]["k"]["maximum"] == 100
        assert {"200", "400", "413", "422", "429", "504"} <= set(post["responses"])
        summary = schema["components"]["schemas"]["Summary"]
        assert set(summary["properties"]) == {"sentences", "indices", "scores"}
        assert {"/health", "/ready"} <= set(schema["paths"])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/docs")
        page = conn.getresponse()
        assert page.status == 200 and b"/openapi.json" in page.read()
        for _ in range(3):
            assert _request(port, "POST", "/summarize", {"texts": [ARTICLE, ARTICLE]})[0] == 200
        assert _request(port, "POST", "/summarize", {"text": ""})[0] == 422
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['attnsum_requests_total{status="200"}'] == 3
    assert values['attnsum_requests_total{status="422"}'] == 1
    assert values["attnsum_request_seconds_count"] == 4
    assert values["attnsum_documents_total"] == 6
    assert values["attnsum_queue_documents"] == 0
    # one model call per request, sent one after another (the warm-up is no request's batch)
    assert values["attnsum_batch_documents_count"] == 3
    assert values["attnsum_batch_documents_sum"] == 6


def test_service_queue_bound_token_and_cors(summarizer):
    with _serving(summarizer, max_queue=2, api_token="s3cret",
                  cors_origins=("https://news.example",)) as port:
        auth = {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
        for headers in (None, {"Content-Type": "application/json", "Authorization": "Bearer x"}):
            status, body = _request(port, "POST", "/summarize", {"text": ARTICLE}, headers)
            assert status == 401 and "Bearer" in body["error"]
        assert _request(port, "POST", "/summarize", {"text": ARTICLE}, auth)[0] == 200
        assert _request(port, "GET", "/health")[0] == 200  # probes stay open
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/summarize", json.dumps({"texts": [ARTICLE] * 3}), auth)
        over = conn.getresponse()
        assert over.status == 429 and over.getheader("Retry-After") == "1"
        assert "limit is 2" in json.loads(over.read())["error"]
        for origin, allowed in (("https://news.example", True), ("https://elsewhere.example", False)):
            conn.request("OPTIONS", "/summarize", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization"})
            pre = conn.getresponse()
            pre.read()
            assert (pre.status == 200) == allowed
            assert (pre.getheader("Access-Control-Allow-Origin") == origin) == allowed
        conn.close()
    with _serving(summarizer) as port:  # no token, no CORS: open, and no CORS headers
        assert _request(port, "POST", "/summarize", {"text": ARTICLE})[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("OPTIONS", "/summarize", headers={
            "Origin": "https://news.example", "Access-Control-Request-Method": "POST"})
        pre = conn.getresponse()
        pre.read()
        assert pre.status == 405 and pre.getheader("Access-Control-Allow-Origin") is None
        conn.close()


def test_workers_share_the_port(ckpt):
    """`--workers 2`: two worker processes answer on one port; SIGTERM stops them all."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attnsum", "serve", "--checkpoint", str(ckpt),
                             "--port", str(port), "--workers", "2"],
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def workers() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid:
                        found.append(int(d.name))
        return found

    try:
        _wait_ready(port, "/ready", proc, 180)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _request(port, "POST", "/summarize",
                                                       {"text": ARTICLE}), range(8)))
        assert all(s == 200 for s, _ in answers)
        assert len({json.dumps(b) for _, b in answers}) == 1  # one model, one answer
        kids = [k for k in workers() if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
        assert len(kids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.time() + 10
        while any(os.path.exists(f"/proc/{k}") for k in kids):
            assert time.time() < deadline, "a worker outlived the service"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_summarize_reads_a_named_corpus_as_evaluate_does(tmp_path, ckpt, summarizer):
    """`dataset:NAME:SPLIT` reads what `evaluate --dataset NAME --split SPLIT` reads (here the
    embedded corpus): its ids, its documents' sentences joined, resumable like a file."""
    from attnsum.data import load_corpus

    out = tmp_path / "s.jsonl"
    assert main(["summarize", "--checkpoint", str(ckpt), "dataset:embedded:val", "--limit", "3",
                 "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    docs = load_corpus("embedded", "val", limit=3).documents
    assert [r["id"] for r in recs] == [d.id for d in docs]
    want = summarizer.summarize([" ".join(d.sentences) for d in docs])
    assert [r["summary"] for r in recs] == [w.sentences for w in want]
    assert main(["summarize", "--checkpoint", str(ckpt), "dataset:nowhere:val"]) == 2
