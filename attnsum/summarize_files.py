"""`attnsum summarize`: summaries of many documents, streamed with bounded memory.

Inputs: input_files.py. Output: JSON Lines (``{"id", "summary", "indices", "scores"}``, or
``{"id", "error"}`` for a document that cannot be summarized) or plain text, in input order.
Under torchrun each rank takes every WORLD_SIZE-th document and rank 0 merges the parts in
input order.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .data import DataError
from .distributed import process_group
from .distributed import world as distributed_world
from .input_files import Unreadable, count_documents, dataset_input, input_files, iter_documents
from .io import atomic_write_json
from .precision import DEFAULT_PRECISION
from .preprocess import MAX_CHARS
from .summarizer import DocumentError, Summarizer


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
