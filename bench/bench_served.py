"""End to end as a user gets it: raw articles through the Python API and `attnsum summarize`,
against the model alone on the same documents, with the time split into its stages.

    python bench/bench_served.py [--docs 256] [--checkpoint attnsum/models/NAME] [--precision auto]

Documents: the first --docs raw articles of ../shared/data/cnndm/val-original-1000.jsonl.gz when
it is there, else the embedded corpus's validation papers (text). The released model by default,
weights as `Summarizer.from_pretrained` loads them.

Rows (one run, this machine): for batch 1 and 32, `Summarizer.summarize` in docs/s, its seconds
split into splitting (attnsum/sentences.py), tokenization and the rest of preparation, the model
(the forward calls) and selection (the rest of scoring); the model alone on the same prepared
documents and batches (docs/s); and `attnsum summarize FILE --out OUT` in a process of its own,
its rate taken over the documents (its start and the model's load, timed on one document and
subtracted, reported apart). `end_to_end_share`: the row's docs/s over the model alone's at the
same batch. CSV: bench/results/cpu-<cpu>/served.csv (or --out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, commit, device_name, result_dir, write_csv

import attnsum.summarizer as summarizer_module
from attnsum.sentences import split_sentences
from attnsum.summarizer import Summarizer

SHARED = ROOT.parent / "shared" / "data" / "cnndm" / "val-original-1000.jsonl.gz"
FIELDS = ["path", "batch", "docs", "docs_per_s", "end_to_end_share", "split_s", "tokenize_s",
          "model_s", "select_s", "startup_s", "model_only_docs_per_s", "precision", "checkpoint",
          "source", "device", "torch", "commit"]


def documents(n: int) -> tuple[list[str], str]:
    if SHARED.is_file():
        with gzip.open(SHARED, "rt", encoding="utf-8") as f:
            return [json.loads(line)["article"] for line, _ in zip(f, range(n), strict=False)], \
                SHARED.name
    from attnsum.data import load_corpus

    docs = load_corpus("embedded", "val", limit=n).documents
    return [" ".join(d.sentences) for d in docs], "embedded val"


class ModelTimer:
    """Seconds spent in the model's forward calls (sentence_logits) while it is installed."""

    def __init__(self):
        self.seconds = 0.0
        self._orig = summarizer_module.sentence_logits

    def __enter__(self):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = self._orig(*a, **kw)
            self.seconds += time.perf_counter() - t0
            return out

        summarizer_module.sentence_logits = timed
        return self

    def __exit__(self, *exc):
        summarizer_module.sentence_logits = self._orig


def api_row(s: Summarizer, texts: list[str], batch: int) -> dict:
    t0 = time.perf_counter()
    for t in texts:
        split_sentences(t)
    split_s = time.perf_counter() - t0
    prepare_s = score_s = 0.0
    with ModelTimer() as model:
        for i in range(0, len(texts), batch):
            chunk = texts[i:i + batch]
            t0 = time.perf_counter()
            prepared = s.prepare(chunk)
            t1 = time.perf_counter()
            s.score(prepared, batch_size=batch)
            prepare_s, score_s = prepare_s + t1 - t0, score_s + time.perf_counter() - t1
    total = prepare_s + score_s
    return {"path": "python-api", "batch": batch, "docs": len(texts),
            "docs_per_s": len(texts) / total, "split_s": split_s,
            "tokenize_s": prepare_s - split_s, "model_s": model.seconds,
            "select_s": score_s - model.seconds}


def model_only(s: Summarizer, prepared, batch: int) -> float:
    """docs/s of the forward calls alone on prepared documents, batched as `score` batches."""
    from attnsum.batching import length_batches, sentence_logits

    batches = [b.to(s.device) for _, b in length_batches([p[0] for p in prepared], batch,
                                                          s.PAD_TO, s.cfg.max_len)]
    with torch.no_grad(), s.precision.autocast():
        sentence_logits(s.model, batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            sentence_logits(s.model, b)
    return len(prepared) / (time.perf_counter() - t0)


def cli_row(texts: list[str], checkpoint: str | None, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        def run(n: int) -> float:
            src = Path(tmp) / f"in{n}.jsonl"
            src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                   for i, t in enumerate(texts[:n])))
            cmd = [sys.executable, "-m", "attnsum", "summarize", str(src), "--out",
                   str(Path(tmp) / f"out{n}.jsonl"), "--precision", precision]
            cmd += ["--checkpoint", checkpoint] if checkpoint else []
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            return time.perf_counter() - t0

        startup = run(1)
        whole = run(len(texts))
    return {"path": "attnsum-summarize", "batch": 32, "docs": len(texts),
            "docs_per_s": (len(texts) - 1) / max(whole - startup, 1e-9), "startup_s": startup}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--checkpoint", default=None, help="default: the released model")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--no-cli", action="store_true", help="skip the command-line row")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    texts, source = documents(args.docs)
    s = Summarizer.from_pretrained(args.checkpoint, precision=args.precision)
    print(f"{len(texts)} documents of {source}; checkpoint {s.checkpoint}; "
          f"{s.precision.describe()}", flush=True)
    s.summarize(texts[:4])  # warm-up
    prepared = s.prepare(texts)
    meta = {"precision": s.precision.name, "checkpoint": s.checkpoint.name, "source": source,
            "device": device_name(str(s.device)), "torch": torch.__version__, "commit": commit()}
    rows = []
    for batch in args.batches:
        alone = model_only(s, prepared, batch)
        row = {**api_row(s, texts, batch), "model_only_docs_per_s": alone}
        rows.append(row)
        if batch == 32 and not args.no_cli:
            rows.append({**cli_row(texts, args.checkpoint, args.precision),
                         "model_only_docs_per_s": alone})
    for r in rows:
        r.update(meta, end_to_end_share=r["docs_per_s"] / r["model_only_docs_per_s"])
        print(f"{r['path']:>18} batch {r['batch']:>2}: {r['docs_per_s']:7.1f} docs/s, "
              f"{r['end_to_end_share']:.2f} of the model alone ({r['model_only_docs_per_s']:.1f})"
              + (f"; split {r['split_s']:.2f} s, tokenize {r['tokenize_s']:.2f} s, model "
                 f"{r['model_s']:.2f} s, select {r['select_s']:.2f} s" if "split_s" in r else
                 f"; start and load {r['startup_s']:.1f} s"), flush=True)
    out = Path(args.out) if args.out else result_dir(str(s.device)) / "served.csv"
    write_csv(out, rows, FIELDS)
    print(f"{len(rows)} rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
