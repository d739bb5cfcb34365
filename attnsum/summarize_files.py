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
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .data import DataError, check_dataset, load_corpus, parquet_rows, read_parquet
from .distributed import process_group
from .distributed import world as distributed_world
from .io import atomic_write_json
from .precision import DEFAULT_PRECISION
from .preprocess import MAX_CHARS
from .summarizer import DocumentError, Summarizer

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")  # what a folder's files are read from
# An input naming a corpus as evaluate's --dataset does: "dataset:cnn_dailymail:test"
DATASET_PREFIX = "dataset:"


def dataset_input(spec: str) -> tuple[str, str] | None:
    """(dataset, split) of a "dataset:NAME[:SPLIT]" input (split "test" by default), else None."""
    if not spec.startswith(DATASET_PREFIX):
        return None
    name, _, split = spec[len(DATASET_PREFIX):].partition(":")
    return name, split or "test"


def input_files(spec: str) -> list[Path]:
    """The files of one input (a file, or a folder's .txt, .jsonl(.gz) and .parquet files; none
    for a named corpus, `dataset_input`); a DataError for a missing path or a folder without
    them."""
    named = dataset_input(spec)
    if named is not None:
        check_dataset(named[0])
        return []
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        if not files:
            raise DataError(f"{path}: folder holds no .txt, .jsonl or .parquet file")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{spec}: no such file or folder")


class Unreadable(str):
    """What `iter_documents` yields in place of a text it could not read (a malformed JSON line,
    a line without the text field, a file that is not UTF-8): the reason, which becomes that
    document's error record. The documents around it are summarized as usual."""


def iter_documents(inputs: list[str], field: str = "text", jsonl_stdin: bool = False,
                   stdin=None) -> Iterator[tuple[str, str]]:
    """(id, text) of every document, lazily; (id, Unreadable(reason)) for one that cannot be
    read. `stdin`: a stream to read instead of standard input (bytes or text)."""
    for spec in inputs or ["-"]:
        if spec == "-":
            stream = stdin or sys.stdin.buffer
            if jsonl_stdin:
                yield from _jsonl_lines(stream, "<stdin>", field)
            else:
                yield "<stdin>", _read_text(stream.read)
            continue
        named = dataset_input(spec)
        if named is not None:  # documents as evaluate reads them, their sentences joined
            for doc in load_corpus(*named).documents:
                yield doc.id, " ".join(doc.sentences)
            continue
        for f in input_files(spec):
            if f.name.endswith((".jsonl", ".jsonl.gz")):
                opener = gzip.open if f.name.endswith(".gz") else open
                with opener(f, "rb") as stream:
                    yield from _jsonl_lines(stream, str(f), field)
            elif f.name.endswith(".parquet"):
                yield from _parquet_documents(f, field)
            else:
                yield str(f), _read_text(f.read_bytes)


def _read_text(read) -> str:
    data = read()
    try:
        return data if isinstance(data, str) else data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Unreadable(f"not valid UTF-8 ({e.reason})")


def _jsonl_lines(stream, name: str, field: str) -> Iterator[tuple[str, str]]:
    """The documents of a JSON Lines stream, a line at a time: a line that is not UTF-8, not
    JSON or without `field` is an Unreadable in its place. A stream that cannot be read on (a
    truncated .gz file) raises a DataError naming its line."""
    lineno = 0
    while True:
        try:
            line = stream.readline()
        except (OSError, EOFError) as e:
            raise DataError(f"{name}:{lineno + 1}: cannot be read on ({e})") from None
        if not line:
            return
        lineno += 1
        where = f"{name}:{lineno}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, Unreadable(f"line {lineno}: not valid UTF-8 ({e.reason})")
                continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, Unreadable(f"line {lineno}: malformed JSON ({e.msg})")
            continue
        if not isinstance(rec, dict) or field not in rec:
            yield where, Unreadable(f"line {lineno}: no field {field!r} (choose it with --field)")
            continue
        yield str(rec.get("id", where)), rec[field]


def _parquet_documents(path: Path, field: str) -> Iterator[tuple[str, str]]:
    """The documents of a Parquet file (its `field` column; ids from an "id" column when there
    is one); a row without the field is an Unreadable in its place."""
    for row, (where, rec) in enumerate(read_parquet(path)):
        if not isinstance(rec, dict) or rec.get(field) is None:
            yield where, Unreadable(f"row {row}: no field {field!r} (choose it with --field)")
            continue
        yield str(rec.get("id") or where), rec[field]


def count_documents(inputs: list[str], limit: int | None = None) -> int | None:
    """How many documents `iter_documents` will yield, counted cheaply (lines of JSON Lines
    files, a Parquet file's row count, one per .txt file) for the progress bar; None when it
    cannot be known (stdin)."""
    total = 0
    for spec in inputs or ["-"]:
        if spec == "-" or dataset_input(spec) is not None:
            return None
        for f in input_files(spec):
            if f.name.endswith(".parquet"):
                try:
                    total += parquet_rows(f)
                except DataError:  # reading it will say what is wrong, in its place
                    return None
            elif f.name.endswith((".jsonl", ".jsonl.gz")):
                opener = gzip.open if f.name.endswith(".gz") else open
                try:
                    with opener(f, "rb") as stream:
                        total += sum(1 for line in stream if line.strip())
                except (OSError, EOFError):  # reading it will say what is wrong, in its place
                    return None
            else:
                total += 1
            if limit is not None and total >= limit:
                return limit
    return total


def _prepare_chunk(summarizer: Summarizer, docs: list[tuple[str, str]],
                   max_chars: int = MAX_CHARS) -> tuple[list, list]:
    """The model inputs of the documents that can be summarized, as (position, prepared), and
    the error records of those that cannot, in their places (None elsewhere)."""
    todo, out = [], [None] * len(docs)
    for i, (doc_id, text) in enumerate(docs):
        if isinstance(text, Unreadable):
            out[i] = {"id": doc_id, "error": str(text)}
        elif isinstance(text, str) and len(text) > max_chars:
            out[i] = {"id": doc_id, "error": f"{len(text)} characters, over the limit of "
                                             f"{max_chars} (--max-chars)"}
        else:
            todo.append(i)
    good = []
    for i, p in zip(todo, summarizer.prepare([docs[i][1] for i in todo], errors="return"),
                    strict=True):
        if isinstance(p, DocumentError):
            out[i] = {"id": docs[i][0], **p.to_dict()}
        else:
            good.append((i, p))
    return good, out


def _score_chunk(summarizer: Summarizer, docs: list[tuple[str, str]], prepared: tuple[list, list],
                 k: int, tri: bool) -> list[dict]:
    """One output record per document of a prepared chunk (`_prepare_chunk`)."""
    good, out = prepared
    for (i, _), s in zip(good, summarizer.score([p for _, p in good], k, tri), strict=True):
        out[i] = {"id": docs[i][0], "summary": s.sentences, "indices": s.indices,
                  "scores": s.scores}
    return out


def write_record(out, rec: dict, fmt: str) -> None:
    if fmt == "jsonl":  # NaN is not JSON: a model that gives it fails here, not in a reader
        out.write(json.dumps(rec, allow_nan=False) + "\n")
    else:  # the summary's sentences one a line, a blank line between documents
        out.write(("\n".join(rec["summary"]) if "summary" in rec
                   else f"[error: {rec['error']}]") + "\n\n")


def run_summarize(summarizer: Summarizer, docs: Iterator[tuple[str, str]], out, fmt: str = "jsonl",
                  k: int = 3, trigram_blocking: bool = True, chunk: int = 32, rank: int = 0,
                  world: int = 1, progress: bool = True, total: int | None = None,
                  max_chars: int = MAX_CHARS) -> dict:
    """Summarize a stream of documents `chunk` at a time, writing each chunk as it is done; the
    next chunk is split and tokenized on a thread of its own while the model scores this one. A
    stream that breaks off (a DataError from reading it) first has the documents read before
    it written. The progress bar (out of `total` documents where known) goes to stderr, and not
    at all when the results go to that terminal."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    counts = {"documents": 0, "errors": 0}
    to_terminal = out is sys.stdout and sys.stdout.isatty() and sys.stderr.isatty()
    bar = tqdm(desc="summarize", unit="doc", total=total, file=sys.stderr,
               disable=not progress or to_terminal)
    buf: list[tuple[int, tuple[str, str]]] = []
    pending: list = []  # the chunk being prepared: (its documents, the future of its inputs)

    def write(chunk_docs, prepared):
        records = _score_chunk(summarizer, [d for _, d in chunk_docs], prepared, k,
                               trigram_blocking)
        for (index, _), rec in zip(chunk_docs, records, strict=True):
            counts["documents"] += 1
            counts["errors"] += "error" in rec
            if world > 1:
                out.write(json.dumps({"_index": index, **rec}, allow_nan=False) + "\n")
            else:
                write_record(out, rec, fmt)
            bar.update(1)
        out.flush()

    def flush(last: bool = False):
        if buf:  # start preparing this chunk, then score the one prepared before it
            pending.append((list(buf), prep.submit(_prepare_chunk, summarizer,
                                                   [d for _, d in buf], max_chars)))
            buf.clear()
        while len(pending) > (0 if last else 1):
            chunk_docs, future = pending.pop(0)
            write(chunk_docs, future.result())

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnsum-prepare") as prep:
        try:
            for index, doc in enumerate(docs):
                if index % world == rank:
                    buf.append((index, doc))
                    if len(buf) >= chunk:
                        flush()
            flush(last=True)
        except DataError:
            flush(last=True)  # what was read before the break is kept
            raise
        finally:
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


def run_manifest(inputs: list[str], options: dict) -> dict:
    """What a partial output was made from: each input file (path, size, modification time)
    and the options that shape the output. A resumed run must match it."""
    files = []
    for spec in inputs or ["-"]:
        if spec == "-" or dataset_input(spec):  # stdin or a named corpus: recorded by name
            files.append([spec, None, None])
            continue
        for f in input_files(spec):
            st = f.stat()
            files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return {"inputs": files, "options": options}


def _difference(old: dict, new: dict) -> str:
    """The first difference between two manifests, in words."""
    if old.get("inputs") != new["inputs"]:
        return "other input files, or the same ones changed since"
    for key, value in new["options"].items():
        if old.get("options", {}).get(key) != value:
            return f"{key} {old.get('options', {}).get(key)!r}, now {value!r}"
    return "other settings"


def refuse_overwriting_inputs(inputs: list[str], out_path: str) -> None:
    """A DataError when the output (or its partial file) is one of the inputs: summarizing a
    file into itself would destroy it."""
    targets = [Path(out_path), Path(f"{out_path}.partial")]
    for spec in inputs:
        if spec == "-":
            continue
        for f in input_files(spec):
            for t in targets:
                if f.resolve() == t.resolve() or (t.exists() and os.path.samefile(f, t)):
                    raise DataError(f"--out {out_path}: {f} is also an input; write the "
                                    "summaries to another file")


def summarize_command(checkpoint: str | None, inputs: list[str], out_path: str | None, fmt: str, field: str,
                      jsonl_stdin: bool, k: int, trigram_blocking: bool, chunk: int,
                      device: str | None = None, precision: str = DEFAULT_PRECISION,
                      limit: int | None = None, max_len: int | None = None,
                      max_chars: int = MAX_CHARS, overwrite: bool = False) -> dict:
    """Summarize `inputs` (the first `limit` documents) to `out_path` or stdout. A file output is
    written to ``OUT.partial`` and renamed when complete; a rerun after a kill resumes JSON Lines
    output after its last whole record (text output starts over), provided that the inputs and
    options are those the partial file was started with (``OUT.partial.json`` records them;
    `overwrite` starts over instead). Under torchrun each rank writes ``OUT.part<rank>`` and
    rank 0 merges them, in input order, into ``OUT.partial``, then renames it: OUT exists only
    when whole."""
    rank, world = distributed_world()
    if world > 1 and not out_path:
        raise DataError("under torchrun, write to a file: --out PATH")
    for spec in inputs:  # a missing input is reported before the model loads
        if spec != "-":
            input_files(spec)
    if out_path:
        refuse_overwriting_inputs(inputs, out_path)
    summarizer = Summarizer.from_pretrained(checkpoint, device=device, precision=precision,
                                            max_len=max_len)
    if rank == 0:
        print(f"checkpoint {summarizer.checkpoint}; {summarizer.precision.describe()}",
              file=sys.stderr)
    docs = iter_documents(inputs, field, jsonl_stdin)
    if limit is not None:
        docs = itertools.islice(docs, limit)
    total = count_documents(inputs, limit) if rank == 0 and world == 1 else None
    if world == 1:
        if not out_path:
            return run_summarize(summarizer, docs, sys.stdout, fmt, k, trigram_blocking, chunk,
                                 total=total, max_chars=max_chars)
        partial, record = Path(f"{out_path}.partial"), Path(f"{out_path}.partial.json")
        manifest = run_manifest(inputs, {
            "checkpoint": str(summarizer.checkpoint), "format": fmt, "field": field, "k": k,
            "trigram_blocking": trigram_blocking, "limit": limit, "max_len": summarizer.cfg.max_len,
            "precision": summarizer.precision.name, "max_chars": max_chars})
        if overwrite or not record.is_file():
            partial.unlink(missing_ok=True)
        else:
            try:
                old = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = {}
            if old != manifest:
                raise DataError(f"{partial} was started with {_difference(old, manifest)}: "
                                "rerun with the same inputs and options to resume it, or add "
                                "--overwrite to start over")
        atomic_write_json(record, manifest)
        done = resume_point(partial) if fmt == "jsonl" else 0
        if done:
            print(f"resuming {partial} after {done} documents", file=sys.stderr)
        with open(partial, "a" if done else "w", encoding="utf-8") as out:
            counts = run_summarize(summarizer, itertools.islice(docs, done, None), out, fmt, k,
                                   trigram_blocking, chunk, max_chars=max_chars,
                                   total=None if total is None else total - done)
        os.replace(partial, out_path)
        record.unlink()
        return counts
    with process_group("gloo"):  # only barriers between ranks: gloo serves CPU and GPU alike
        return _summarize_ranks(summarizer, docs, out_path, fmt, k, trigram_blocking, chunk,
                                rank, world, max_chars)


def _summarize_ranks(summarizer, docs, out_path: str, fmt: str, k: int, trigram_blocking: bool,
                     chunk: int, rank: int, world: int, max_chars: int) -> dict:
    import torch
    import torch.distributed as dist

    part = Path(f"{out_path}.part{rank}")
    with open(part, "w", encoding="utf-8") as out:
        counts = run_summarize(summarizer, docs, out, fmt, k, trigram_blocking, chunk, rank, world,
                               progress=rank == 0, max_chars=max_chars)
    dist.barrier()
    if rank == 0:  # merged into OUT.partial, renamed when whole
        parts = [Path(f"{out_path}.part{r}") for r in range(world)]
        partial = Path(f"{out_path}.partial")
        with open(partial, "w", encoding="utf-8") as out:
            merge_parts(parts, out, fmt)
        os.replace(partial, out_path)
        for p in parts:
            p.unlink()
    totals = torch.tensor([counts["documents"], counts["errors"]])
    dist.all_reduce(totals)  # every rank reports the whole run
    return {"documents": int(totals[0]), "errors": int(totals[1])}
