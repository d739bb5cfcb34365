"""Blind-test summary files for CNN/DailyMail: ``{"id", "summary"}`` a line, the summary's
sentences joined by "\\n", gzipped, in the test file's order.

    python bench/cnndm_blind.py lead3 ARTICLES.jsonl.gz OUT.test.jsonl.gz
    python bench/cnndm_blind.py convert SUMMARIES.jsonl OUT.test.jsonl.gz

``lead3``: the first three sentences BERTSum keeps (preprocess.filter_sentences), every article.
``convert``: the JSON Lines of ``attnsum summarize`` (``summary`` a list of sentences).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys

from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.io import atomic_write_bytes
from attnsum.preprocess import PreprocessConfig, filter_sentences
from attnsum.sentences import split_sentences


def lead3(articles: str) -> list[dict]:
    cfg = PreprocessConfig()
    with gzip.open(articles, "rt", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [{"id": r["id"], "summary": "\n".join(
        s for _, s in filter_sentences(split_sentences(r["article"]), cfg)[:3])} for r in recs]


def convert(summaries: str) -> list[dict]:
    out = []
    with open(summaries, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "error" in rec:
                raise SystemExit(f"{summaries}: document {rec['id']} has no summary: {rec['error']}")
            out.append({"id": rec["id"], "summary": "\n".join(rec["summary"])})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["lead3", "convert"])
    p.add_argument("source")
    p.add_argument("out")
    args = p.parse_args(argv)
    rows = lead3(args.source) if args.what == "lead3" else convert(args.source)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    atomic_write_bytes(args.out, gzip.compress(data, mtime=0))
    print(f"{len(rows)} summaries written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
