"""`attnsum summarize`: summaries of many documents, streamed with bounded memory.

Inputs: ``.txt`` files (one document each), ``.jsonl``/``.jsonl.gz`` files (one document per
line, text in ``--field``), folders of those, or standard input (``-``: one document, or JSON
Lines with ``--jsonl``). Output: JSON Lines (``{"id", "summary", "indices", "scores"}``, or
``{"id", "error"}`` for a document that cannot be summarized) or plain text, in input order.
Under torchrun each rank takes every WORLD_SIZE-th document and rank 0 merges the parts in
input order.
"""

from __future__ import annotations

import gzip
import heapq
import io
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .data import DataError
from .distributed import init_distributed, local_device
from .distributed import world as distributed_world
from .precision import DEFAULT_PRECISION
from .summarizer import InputError, Summarizer


def input_files(spec: str) -> list[Path]:
    """The files of one input (a file, or a folder's .txt and .jsonl(.gz) files); a DataError
    for a missing path or a folder without them."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and p.name.endswith((".txt", ".jsonl", ".jsonl.gz")))
        if not files:
            raise DataError(f"{path}: folder holds no .txt or .jsonl file")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{spec}: no such file or folder")


def iter_documents(inputs: list[str], field: str = "text", jsonl_stdin: bool = False,
                   stdin=None) -> Iterator[tuple[str, str]]:
    """(id, text) of every document, lazily."""
    for spec in inputs or ["-"]:
        if spec == "-":
            stream = stdin or io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
            if jsonl_stdin:
                yield from _jsonl_lines(stream, "<stdin>", field)
            else:
                yield "<stdin>", _read_text(stream.read, "<stdin>")
            continue
        for f in input_files(spec):
            if f.name.endswith((".jsonl", ".jsonl.gz")):
                opener = gzip.open if f.name.endswith(".gz") else open
                with opener(f, "rt", encoding="utf-8") as stream:
                    yield from _jsonl_lines(stream, str(f), field)
            else:
                yield str(f), _read_text(lambda f=f: f.read_bytes().decode("utf-8"), str(f))


def _read_text(read, name: str) -> str:
    try:
        return read()
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not valid UTF-8 ({e.reason})") from None


def _jsonl_lines(stream, name: str, field: str) -> Iterator[tuple[str, str]]:
    lineno = 0
    while True:
        try:
            line = stream.readline()
        except UnicodeDecodeError as e:
            raise DataError(f"{name}:{lineno + 1}: not valid UTF-8 ({e.reason})") from None
        if not line:
            return
        lineno += 1
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict) or field not in rec:
            raise DataError(f"{name}:{lineno}: no field {field!r} (choose it with --field)")
        yield str(rec.get("id", f"{name}:{lineno}")), rec[field]


def _records(summarizer: Summarizer, docs: list[tuple[str, str]], k: int, tri: bool) -> list[dict]:
    """One output record per document; a bad document gets an error record, not a crash."""
    good, out = [], [None] * len(docs)
    for i, (doc_id, text) in enumerate(docs):
        try:
            good.append((i, summarizer.prepare([text])[0]))
        except InputError as e:
            out[i] = {"id": doc_id, "error": str(e).removeprefix("document 0: ")}
    for (i, _), s in zip(good, summarizer.score([p for _, p in good], k, tri), strict=True):
        out[i] = {"id": docs[i][0], "summary": s.sentences, "indices": s.indices,
                  "scores": s.scores}
    return out


def write_record(out, rec: dict, fmt: str) -> None:
    if fmt == "jsonl":
        out.write(json.dumps(rec) + "\n")
    else:  # the summary's sentences one a line, a blank line between documents
        out.write(("\n".join(rec["summary"]) if "summary" in rec
                   else f"[error: {rec['error']}]") + "\n\n")


def run_summarize(summarizer: Summarizer, docs: Iterator[tuple[str, str]], out, fmt: str = "jsonl",
                  k: int = 3, trigram_blocking: bool = True, chunk: int = 256, rank: int = 0,
                  world: int = 1, progress: bool = True) -> dict:
    """Summarize a stream of documents `chunk` at a time, writing each chunk as it is done."""
    from tqdm.auto import tqdm

    counts = {"documents": 0, "errors": 0}
    bar = tqdm(desc="summarize", unit="doc", disable=not progress, file=sys.stderr)
    buf: list[tuple[int, tuple[str, str]]] = []

    def flush():
        for (index, _), rec in zip(buf, _records(summarizer, [d for _, d in buf], k,
                                                  trigram_blocking), strict=True):
            counts["documents"] += 1
            counts["errors"] += "error" in rec
            if world > 1:
                out.write(json.dumps({"_index": index, **rec}) + "\n")
            else:
                write_record(out, rec, fmt)
        bar.update(len(buf))
        buf.clear()

    for index, doc in enumerate(docs):
        if index % world == rank:
            buf.append((index, doc))
            if len(buf) >= chunk:
                flush()
    if buf:
        flush()
    bar.close()
    return counts


def merge_parts(parts: list[Path], out, fmt: str) -> None:
    """Merge rank outputs (each in input order) into one stream in input order."""
    files = [open(p, encoding="utf-8") for p in parts]
    try:
        records = heapq.merge(*(map(json.loads, f) for f in files), key=lambda r: r["_index"])
        for rec in records:
            rec.pop("_index")
            write_record(out, rec, fmt)
    finally:
        for f in files:
            f.close()


def resume_point(partial: Path) -> int:
    """Whole JSON Lines records in a partial output file; a torn last line (a kill mid-write) is
    cut off, so appending continues cleanly."""
    if not partial.is_file():
        return 0
    data = partial.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with open(partial, "r+b") as f:
            f.truncate(whole)
    return data[:whole].count(b"\n")


def summarize_command(checkpoint: str | None, inputs: list[str], out_path: str | None, fmt: str, field: str,
                      jsonl_stdin: bool, k: int, trigram_blocking: bool, chunk: int,
                      device: str | None = None, precision: str = DEFAULT_PRECISION,
                      limit: int | None = None, max_len: int | None = None) -> dict:
    """Summarize `inputs` (the first `limit` documents) to `out_path` or stdout. A file output is
    written to ``OUT.partial`` and renamed when complete; a rerun after a kill resumes JSON Lines
    output after its last whole record (text output starts over). Under torchrun each rank
    writes ``OUT.part<rank>`` and rank 0 merges them, in input order, into ``OUT.partial``, then
    renames it: OUT exists only when whole."""
    rank, world = distributed_world()
    if world > 1 and not out_path:
        raise DataError("under torchrun, write to a file: --out PATH")
    if world > 1 and device is None:
        device = str(local_device())
    for spec in inputs:  # a missing input is reported before the model loads
        if spec != "-":
            input_files(spec)
    summarizer = Summarizer.from_pretrained(checkpoint, device=device, precision=precision,
                                            max_len=max_len)
    if rank == 0:
        print(f"checkpoint {summarizer.checkpoint}; {summarizer.precision.describe()}",
              file=sys.stderr)
    docs = iter_documents(inputs, field, jsonl_stdin)
    if limit is not None:
        docs = itertools.islice(docs, limit)
    if world == 1:
        if not out_path:
            return run_summarize(summarizer, docs, sys.stdout, fmt, k, trigram_blocking, chunk)
        partial = Path(f"{out_path}.partial")
        done = resume_point(partial) if fmt == "jsonl" else 0
        if done:
            print(f"resuming {partial} after {done} documents", file=sys.stderr)
        with open(partial, "a" if done else "w", encoding="utf-8") as out:
            counts = run_summarize(summarizer, itertools.islice(docs, done, None), out, fmt, k,
                                   trigram_blocking, chunk)
        os.replace(partial, out_path)
        return counts
    import torch.distributed as dist

    init_distributed("gloo")  # only barriers between ranks: gloo serves CPU and GPU runs alike
    part = Path(f"{out_path}.part{rank}")
    with open(part, "w", encoding="utf-8") as out:
        counts = run_summarize(summarizer, docs, out, fmt, k, trigram_blocking, chunk, rank, world,
                               progress=rank == 0)
    dist.barrier()
    if rank == 0:  # merged into OUT.partial, renamed when whole
        parts = [Path(f"{out_path}.part{r}") for r in range(world)]
        partial = Path(f"{out_path}.partial")
        with open(partial, "w", encoding="utf-8") as out:
            merge_parts(parts, out, fmt)
        os.replace(partial, out_path)
        for p in parts:
            p.unlink()
    import torch

    totals = torch.tensor([counts["documents"], counts["errors"]])
    dist.all_reduce(totals)  # every rank reports the whole run
    return {"documents": int(totals[0]), "errors": int(totals[1])}
