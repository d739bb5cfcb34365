"""Corpora: every source yields `Document(id, sentences, reference)`.

Sources
-------
- ``embedded``: the real ACL papers shipped by the PyPI package ``aclsum`` (train 100 / val 50 /
  test 100), read as JSON Lines through ``datasets``. Sentences are the abstract, introduction
  and conclusion in that order; the reference is the challenge, approach and outcome summaries.
- ``cnn_dailymail``: ``datasets.load_dataset("abisee/cnn_dailymail", "3.0.0")`` (needs the hub).
- a local ``.jsonl``/``.jsonl.gz``/``.json``/``.parquet`` file, or a folder of them, with
  configurable field names; the article is raw text (split here) or a list of sentences.

Bad input
---------
Malformed JSON, a missing field, a field of the wrong type or non-UTF-8 bytes raise
`DataError` naming the file and line. Documents with an empty article or an empty reference are
skipped and counted in `Corpus.skipped` (reason -> count), which callers report at the end.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AttnsumError
from .extras import need
from .sentences import split_sentences

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataError(AttnsumError, ValueError):
    """A corpus could not be read; the message names the file and line and says what to do."""


@dataclass(frozen=True)
class Document:
    id: str
    sentences: list[str]  # the article, one sentence per item, in document order
    reference: list[str]  # the reference summary, one sentence per item


@dataclass
class Corpus:
    name: str
    split: str
    documents: list[Document]
    skipped: Counter = field(default_factory=Counter)  # reason -> count



def format_skips(skipped: Counter) -> str:
    """``skipped 3 document(s): 1 empty article, 2 empty reference`` or ``""``."""
    if not skipped:
        return ""
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} document(s): {parts}"


def normalize_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of train, val (validation), test")
    return split


# --------------------------------------------------------------------------- records -> documents


@dataclass(frozen=True)
class Fields:
    """Where a record keeps its parts. ``article``/``summary`` may hold text or a list of
    sentences; text is split with `split_sentences`."""

    article: str = "article"
    summary: str = "highlights"
    id: str = "id"


def _as_sentences(value, what: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return split_sentences(value)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return [s.strip() for s in value if s.strip()]
    raise DataError(f"{where}: field {what!r} must be a string or a list of strings, "
                    f"got {type(value).__name__}")


def record_to_document(record: dict, fields: Fields, where: str, index: int) -> Document:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in (fields.article, fields.summary):
        if name not in record:
            raise DataError(f"{where}: missing field {name!r} (fields present: "
                            f"{', '.join(sorted(record)) or 'none'}); choose the field names "
                            "with --article-field / --summary-field")
    doc_id = record.get(fields.id, index)
    return Document(str(doc_id), _as_sentences(record[fields.article], fields.article, where),
                    _as_sentences(record[fields.summary], fields.summary, where))


def _collect(name: str, split: str, docs: Iterable[Document], limit: int | None) -> Corpus:
    corpus = Corpus(name, split, [])
    for doc in docs:
        if limit is not None and len(corpus.documents) >= limit:
            break
        if not doc.sentences:
            corpus.skipped["empty article"] += 1
        elif not doc.reference:
            corpus.skipped["empty reference"] += 1
        else:
            corpus.documents.append(doc)
    return corpus


# --------------------------------------------------------------------------- local files


def _read_json_lines(path: Path) -> Iterator[tuple[str, object]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None


def _read_json_array(path: Path) -> Iterator[tuple[str, object]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        # A .json file may also be JSON Lines.
        if e.msg == "Extra data":
            yield from _read_json_lines(path)
            return
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects or JSON Lines")
    for i, rec in enumerate(data):
        yield f"{path}[{i}]", rec


def parquet_rows(path: Path) -> int:
    """A Parquet file's row count, from its footer."""
    need("data", "reading Parquet")
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    """The rows of a Parquet file, a record batch at a time (memory: one batch, not the file)."""
    need("data", "reading Parquet")
    import pyarrow.parquet as pq

    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                yield f"{path}[row {i}]", rec
                i += 1
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(LOCAL_SUFFIXES))
        if not files:
            raise DataError(f"{path}: folder holds no {', '.join(LOCAL_SUFFIXES)} file")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.name.endswith(LOCAL_SUFFIXES):
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
    return [path]


def _local_documents(files: list[Path], fields: Fields) -> Iterator[Document]:
    index = 0
    for path in files:
        if path.name.endswith(".parquet"):
            records = read_parquet(path)
        elif path.name.endswith((".json", ".json.gz")):
            records = _read_json_array(path)
        else:
            records = _read_json_lines(path)
        for where, rec in records:
            yield record_to_document(rec, fields, where, index)
            index += 1


def _split_files(path: Path, split: str) -> list[Path]:
    """A folder may hold one file per split (``train.jsonl``, ``val.jsonl``, ``test.parquet``...):
    pick the files named exactly after the split; else those whose name starts with the split and
    a dash (``train-00001.parquet``); otherwise every file is the split. So ``val.jsonl.gz`` beside
    ``val-original-1000.jsonl.gz`` is the split alone."""
    files = local_files(path)
    if not path.is_dir():
        return files
    names = {split, *(a for a, s in _SPLIT_ALIASES.items() if s == split)}
    exact = [f for f in files if f.name.split(".")[0] in names]
    chosen = exact or [f for f in files if f.name.split(".")[0].split("-")[0] in names]
    return chosen or files


# --------------------------------------------------------------------------- named corpora


def _aclsum_dir() -> Path:
    need("embedded", "the embedded corpus")
    import aclsum

    return Path(aclsum.__file__).parent / "dataset"


def _embedded_documents(split: str) -> Iterator[Document]:
    need("data", "the embedded corpus")
    import datasets

    name = {"train": "train", "validation": "val", "test": "test"}[split]
    path = _aclsum_dir() / f"{name}.jsonl"
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    for rec in ds:
        sentences = [s for sec in ("abstract", "introduction", "conclusion")
                     for s in rec["sentences"][sec] or []]
        summary = rec["summary"]
        reference = [summary[a].strip() for a in ("challenge", "approach", "outcome")
                     if summary.get(a) and summary[a].strip()]
        yield Document(rec["id"], sentences, reference)


CNNDM_HELP = (
    "CNN/DailyMail could not be loaded from the Hugging Face hub ({reason}). It needs internet "
    "access once: run `python -c \"import datasets; datasets.load_dataset('abisee/cnn_dailymail', "
    "'3.0.0')\"` on a connected machine (it is cached under ~/.cache/huggingface), or download "
    "the dataset's files and pass their folder as --dataset PATH (JSON Lines or Parquet with "
    "fields id/article/highlights). Without it, use --dataset embedded, the corpus shipped with "
    "the package aclsum."
)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cnndm_documents(split: str) -> Iterator[Document]:
    need("data", "CNN/DailyMail from the hub")
    import datasets

    if not _hub_reachable():
        # Read only the local cache instead of retrying the hub for half a minute.
        datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset("abisee/cnn_dailymail", "3.0.0", split=split)
    except Exception as e:  # offline: ConnectionError, OfflineModeIsEnabled, HfHubHTTPError...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        raise DataError(CNNDM_HELP.format(reason=reason)) from None
    fields = Fields("article", "highlights", "id")
    for i, rec in enumerate(ds):
        yield record_to_document(rec, fields, f"cnn_dailymail/{split}[{i}]", i)


NAMED_DATASETS = ("embedded", "cnn_dailymail", "cnndm")


def check_dataset(dataset: str) -> None:
    """A DataError unless `dataset` names a dataset or an existing path: checked before a
    command loads a model."""
    if dataset not in NAMED_DATASETS and not Path(os.path.expanduser(dataset)).exists():
        raise DataError(f"unknown dataset {dataset!r}: use embedded, cnn_dailymail, or the path "
                        "of a JSON Lines/Parquet file or folder, or of a shard folder")


def load_corpus(dataset: str, split: str = "test", *, fields: Fields | None = None,
                limit: int | None = None) -> Corpus:
    """Load `split` of `dataset` (``embedded``, ``cnn_dailymail`` or a local path)."""
    split = normalize_split(split)
    if dataset == "embedded":
        return _collect(dataset, split, _embedded_documents(split), limit)
    if dataset in ("cnn_dailymail", "cnndm"):
        return _collect("cnn_dailymail", split, _cnndm_documents(split), limit)
    check_dataset(dataset)
    path = Path(os.path.expanduser(dataset))
    docs = _local_documents(_split_files(path, split), fields or Fields())
    return _collect(str(path), split, docs, limit)
