"""Preprocessed examples in compact shards, for machines without the tokenizer, `datasets` or a
network (a GPU machine set up bare): `attnsum shard` writes them, and every command's `--dataset FOLDER` reads
them like any dataset (`examples_of`, the one loader of examples).

A shard folder holds one subfolder per split::

    FOLDER/<split>/meta.json        format, split, max_len, documents, whether texts are there
    FOLDER/<split>/tokens.npz       compressed arrays, no pickles (np.load(allow_pickle=False)):
        input_ids uint16 (all documents end to end), doc_start int64 (documents + 1),
        segment_ids uint8 (as input_ids), cls_positions uint16, span_end uint16, labels uint8
        (one entry per kept sentence, end to end), sent_start int64 (documents + 1)
    FOLDER/<split>/texts.jsonl.gz   per document: id, sentences, reference, all_sentences,
                                    oracle (what ROUGE needs); not written for "train"
    FOLDER/<split>/ids.txt.gz       document ids, one a line (train)

Word-piece ids fit uint16 (vocabularies below 65,536; checked), positions fit uint16 (inputs of
at most 65,535 pieces). Every file is written atomically; meta.json last.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .data import DataError, Fields, load_corpus
from .io import atomic_write_bytes, atomic_write_json
from .preprocess import Example, Prepared, PreprocessConfig, prepare

FORMAT = 1
META, TOKENS, TEXTS, IDS = "meta.json", "tokens.npz", "texts.jsonl.gz", "ids.txt.gz"
NO_TEXTS = ("train",)  # splits written without texts (training needs only the tokens)


def is_shard_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((p / META).is_file() for p in path.iterdir() if p.is_dir())


def write_shard(examples: list[Example], folder: str | Path, split: str, max_len: int,
                texts: bool | None = None) -> Path:
    """Write `examples` of `split` to FOLDER/<split>/; texts by default for every split but
    train. Returns the split's folder."""
    out = Path(folder) / split
    texts = split not in NO_TEXTS if texts is None else texts
    ids = [t for e in examples for t in e.input_ids]
    if ids and max(ids) > np.iinfo(np.uint16).max:
        raise DataError("word-piece ids above 65,535 do not fit a shard (uint16)")
    if max_len > np.iinfo(np.uint16).max:
        raise DataError("inputs longer than 65,535 pieces do not fit a shard (uint16)")

    def starts(lengths):
        return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    arrays = {
        "input_ids": np.asarray(ids, dtype=np.uint16),
        "doc_start": starts([len(e.input_ids) for e in examples]),
        "segment_ids": np.asarray([s for e in examples for s in e.segment_ids], dtype=np.uint8),
        "cls_positions": np.asarray([c for e in examples for c in e.cls_positions], dtype=np.uint16),
        "span_end": np.asarray([b for e in examples for _, b in e.spans], dtype=np.uint16),
        "labels": np.asarray([x for e in examples for x in e.labels], dtype=np.uint8),
        "sent_start": starts([len(e.cls_positions) for e in examples]),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out / TOKENS, buf.getvalue())
    if texts:
        lines = "".join(json.dumps({"id": e.id, "sentences": e.sentences, "reference": e.reference,
                                    "all_sentences": e.all_sentences, "oracle": e.oracle}) + "\n"
                        for e in examples)
        atomic_write_bytes(out / TEXTS, gzip.compress(lines.encode("utf-8"), mtime=0))
    else:
        ids_text = "".join(e.id + "\n" for e in examples)
        atomic_write_bytes(out / IDS, gzip.compress(ids_text.encode("utf-8"), mtime=0))
    atomic_write_json(out / META, {"format": FORMAT, "split": split, "max_len": max_len,
                                   "documents": len(examples), "texts": texts})
    return out


def read_shard(folder: str | Path, split: str, max_len: int | None = None,
               limit: int | None = None, need_texts: bool = False) -> list[Example]:
    """The examples of FOLDER/<split>/ (the first `limit`). A shard written for another
    `max_len`, or without texts where `need_texts`, is a `DataError`."""
    src = Path(folder) / split
    try:
        meta = json.loads((src / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{src}: not a shard of split {split!r} ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{src}: shard format {meta.get('format')}, this version reads {FORMAT}")
    if max_len is not None and meta["max_len"] != max_len:
        raise DataError(f"{src}: written for --max-len {meta['max_len']}, asked for {max_len}")
    if need_texts and not meta["texts"]:
        raise DataError(f"{src}: written without texts, which validation needs (ROUGE)")
    try:
        with np.load(src / TOKENS, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        if meta["texts"]:
            with gzip.open(src / TEXTS, "rt", encoding="utf-8") as f:
                texts = [json.loads(line) for line in f]
        else:
            with gzip.open(src / IDS, "rt", encoding="utf-8") as f:
                texts = [{"id": line.rstrip("\n"), "sentences": [], "reference": [],
                          "all_sentences": [], "oracle": []} for line in f]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"{src}: unreadable shard ({e})") from None
    n = meta["documents"] if limit is None else min(limit, meta["documents"])
    examples = []
    for i in range(n):
        d0, d1 = int(a["doc_start"][i]), int(a["doc_start"][i + 1])
        s0, s1 = int(a["sent_start"][i]), int(a["sent_start"][i + 1])
        cls = a["cls_positions"][s0:s1].tolist()
        t = texts[i]
        examples.append(Example(
            id=t["id"], input_ids=a["input_ids"][d0:d1].tolist(),
            segment_ids=a["segment_ids"][d0:d1].tolist(), cls_positions=cls,
            spans=list(zip(cls, a["span_end"][s0:s1].tolist(), strict=True)),
            labels=a["labels"][s0:s1].tolist(), sentences=t["sentences"],
            reference=t["reference"], all_sentences=t["all_sentences"], oracle=t["oracle"]))
    return examples


def examples_of(dataset: str, split: str, max_len: int, limit: int | None = None,
                fields: Fields | None = None, need_texts: bool = False,
                progress: bool = False) -> Prepared:
    """The examples of `split` of a dataset (embedded, cnn_dailymail, a local file or folder:
    preprocessed, cached) or of a shard folder."""
    if is_shard_folder(dataset):
        return Prepared(read_shard(dataset, split, max_len, limit, need_texts), Counter())
    corpus = load_corpus(dataset, split, limit=limit, fields=fields)
    return prepare(corpus, PreprocessConfig(max_len=max_len), progress=progress)
