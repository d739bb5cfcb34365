"""Sentence splitters for news, compared on speed and on boundary accuracy.

    python bench/splitters.py [--out bench/results/splitters]

Candidates: attnsum's own (attnsum/sentences.py), pysbd (what attnsum used before, one
Segmenter per thread), and, where installed, sentencex, syntok, blingfire and nupunkt (none of
them is a dependency: `pip install sentencex syntok blingfire nupunkt` to compare them).

Accuracy: precision, recall and F1 of sentence boundaries against bench/results/splitters/
reference.json, a segmentation of the first 100 raw CNN articles of
../shared/data/cnndm/train-original-cnn-1859.jsonl.gz (ids, a hash of each article and the
boundary offsets; no text). It was made by running the six splitters on each article after its
dateline, keeping every boundary all six place, and judging by hand each of the 873 places where
they disagree. Conventions: a sentence ends after its terminal mark and the closing quotes and
brackets after it (so a boundary is never inside `." `); a quote's attribution ("...?" he
asked) continues it; an ellipsis inside a sentence is no end; list items ("1. It started...",
"• In 1864...") and headings or links without a final mark ("Watch the history of the holiday")
are segments of their own, but a list number stays with its item; items of a semicolon list and
lineups are one segment; titles ("Gov.", "Lt.", "Rev.") never end one. A boundary all six
splitters miss is not in the reference (so recall is measured on the union of what they find).
Datelines: how many of the 100 articles' first sentences still begin with "(CNN)" (or another
dateline) when the splitter gets the article whole.

Speed: documents a second on the first 300 articles of val-original-1000 (raw text, 3.3k
characters on average), one thread, and the seconds one document takes at 10k, 40k and 100k
characters of punctuation-dense text ("Hi?! " repeated: pysbd's worst case) and at 100k of real
text (articles joined). Writes splitters.csv and splitters.md under --out; needs ../shared (it
says so and exits 0 without it).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

from common import ROOT

from attnsum.io import atomic_write_text
from attnsum.sentences import split_sentences, strip_dateline

SHARED = ROOT.parent / "shared" / "data" / "cnndm"
REFERENCE = ROOT / "bench" / "results" / "splitters" / "reference.json"
FIELDS = ["splitter", "version", "precision", "recall", "f1", "boundaries_found",
          "datelines_left", "docs_per_s", "s_10k_dense", "s_40k_dense", "s_100k_dense",
          "s_100k_real"]


def candidates() -> dict:
    """name -> (version, split(text) -> sentences) for every splitter importable here."""
    out = {"attnsum": ("this checkout", split_sentences)}
    import importlib.metadata as md

    try:
        import pysbd

        local = threading.local()

        def pysbd_split(text):
            seg = getattr(local, "seg", None) or pysbd.Segmenter(language="en", clean=False)
            local.seg = seg
            return seg.segment(text)

        out["pysbd"] = (md.version("pysbd"), pysbd_split)
    except ImportError:
        pass
    try:
        import sentencex

        out["sentencex"] = (md.version("sentencex"), lambda t: list(sentencex.segment("en", t)))
    except ImportError:
        pass
    try:
        from syntok import segmenter

        def syntok_split(text):
            return ["".join(tok.spacing + tok.value for tok in sent).strip()
                    for para in segmenter.analyze(text) for sent in para]

        out["syntok"] = (md.version("syntok"), syntok_split)
    except ImportError:
        pass
    try:
        import blingfire

        out["blingfire"] = (md.version("blingfire"),
                            lambda t: blingfire.text_to_sentences(t).split("\n"))
    except ImportError:
        pass
    try:
        import nupunkt

        out["nupunkt"] = (md.version("nupunkt"), nupunkt.sent_tokenize)
    except ImportError:
        pass
    return out


def boundaries(text: str, sentences: list[str]) -> set[int]:
    """Where each sentence after the first starts in `text` (sentences found in order)."""
    pos, starts = 0, []
    for s in sentences:
        s = s.strip()
        if not s:
            continue
        j = text.find(s[:25], pos)
        if j < 0:
            j = text.find(s.split()[0], pos)
        if j >= 0:
            starts.append(j)
            pos = j + 1
    return set(starts[1:])


def _read(path: Path, limit: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(limit), strict=False)]


def accuracy(split, ref: dict, articles: dict) -> dict:
    tp = fp = fn = datelines = 0
    for a in ref["articles"]:
        raw = articles[a["id"]]["article"].replace("\n", " ")
        assert hashlib.sha1(articles[a["id"]]["article"].encode()).hexdigest() == a["sha1"]
        text = raw[a["start"]:]
        got = {a["start"] + o for o in boundaries(text, split(text))}
        want = set(a["boundaries"])
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
        first = (split(raw) or [""])[0].strip()
        datelines += strip_dateline(first) != first
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "boundaries_found": tp + fp, "datelines_left": datelines}


def _seconds(split, text: str) -> float:
    t0 = time.perf_counter()
    split(text)
    return time.perf_counter() - t0


def speed(split, docs: list[str], real: str, cap_s: float) -> dict:
    split(docs[0])  # warm-up
    t0 = time.perf_counter()
    for d in docs:
        split(d)
    out = {"docs_per_s": len(docs) / (time.perf_counter() - t0)}
    for name, text in (("s_10k_dense", "Hi?! " * 2000), ("s_40k_dense", "Hi?! " * 8000),
                       ("s_100k_dense", "Hi?! " * 20000), ("s_100k_real", real[:100_000])):
        # a splitter past the cap at a smaller size is not run on a larger one
        out[name] = float("nan") if out.get("_stop") else _seconds(split, text)
        if out[name] > cap_s:
            out["_stop"] = True
    out.pop("_stop", None)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "splitters"))
    p.add_argument("--docs", type=int, default=300, help="articles timed")
    p.add_argument("--cap", type=float, default=60.0,
                   help="seconds: a splitter slower than this on one long document skips the "
                        "longer ones")
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is not here: nothing to compare on", file=sys.stderr)
        return 0
    ref = json.loads(REFERENCE.read_text())
    articles = {a["id"]: a for a in _read(SHARED / "train-original-cnn-1859.jsonl.gz", 200)}
    docs = [a["article"] for a in _read(SHARED / "val-original-1000.jsonl.gz", args.docs)]
    real = " ".join(docs)
    rows = []
    for name, (version, split) in candidates().items():
        row = {"splitter": name, "version": version, **accuracy(split, ref, articles),
               **speed(split, docs, real, args.cap)}
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    out = Path(args.out)
    with open(out / "splitters.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["| splitter | version | precision | recall | F1 | datelines left (of 100) | docs/s "
             "| s at 10k / 40k / 100k dense | s at 100k real |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['splitter']} | {r['version']} | {r['precision']:.4f} | "
                     f"{r['recall']:.4f} | {r['f1']:.4f} | {r['datelines_left']} | "
                     f"{r['docs_per_s']:.0f} | {r['s_10k_dense']:.3f} / {r['s_40k_dense']:.3f} / "
                     f"{r['s_100k_dense']:.3f} | {r['s_100k_real']:.3f} |")
    atomic_write_text(out / "splitters.md", "\n".join(lines) + "\n\n" + " ".join(
        ["Command: `python bench/splitters.py` (the other splitters installed);",
         f"{len(ref['articles'])} reference articles, {args.docs} timed, one thread, CPU of this",
         "machine. The reference's judgements of the places where the six disagree were made",
         "by the author of attnsum/sentences.py, by the conventions in bench/splitters.py's",
         "docstring; where attnsum was on one side of a disagreement, that side was judged",
         "like any other."]) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
