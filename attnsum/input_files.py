"""The documents of `attnsum summarize`'s inputs, read as a stream: ``.txt`` files (one
document each), ``.jsonl``/``.jsonl.gz`` files (one document per line, text in ``--field``),
``.parquet`` files, folders of those, ``dataset:NAME:SPLIT`` (a corpus as `attnsum evaluate`
reads it), or standard input (``-``: one document, or JSON Lines with ``--jsonl``). A document
that cannot be read is an `Unreadable` text, so that it gets an error record in its place
(summarize_files.py).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from .data import DataError, check_dataset, load_corpus, parquet_rows, read_parquet

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
