"""Train a model's candidate selector (attnsum/candidates.py) on a split's documents and write
a model folder that holds it: the checkpoint's files and selector.safetensors / selector.json.

    python bench/cnndm_selector.py attnsum/models/news-paper3-tx-lr2e-4-sel \\
        --dataset ../shared/data/cnndm --split train --limit 8000 --out runs/selector/release
    attnsum evaluate --dataset shards/cnndm-v2 --split val --system "" \\
        --checkpoint runs/selector/release --out runs/selector/eval

The model scores the documents as `attnsum evaluate` does (its precision, batches of 8); the
selector learns to rank each document's candidates by their ROUGE-1 against the reference.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.batching import predict_scores
from attnsum.candidates import save_selector, train_selector
from attnsum.checkpoints import load_model
from attnsum.errors import AttnsumError
from attnsum.precision import Runtime
from attnsum.shards import examples_of


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=8000, help="documents to learn from")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", required=True, help="the model folder to write (the checkpoint's "
                                                "own folder to add the selector there)")
    args = p.parse_args(argv)
    try:
        rt = Runtime.resolve("cpu", args.precision)
        model = load_model(args.checkpoint)
        prepared = examples_of(args.dataset, args.split, model.cfg.input_length(None), args.limit,
                               need_texts=True, progress=True)
        examples = prepared.examples
        probs = predict_scores(model, examples, rt.precision, progress=True)
        selector = train_selector(probs, [ex.sentences for ex in examples],
                                  [ex.reference for ex in examples], epochs=args.epochs,
                                  seed=args.seed, progress=True,
                                  info={"trained_on": {"dataset": Path(args.dataset).name,
                                                       "split": args.split,
                                                       "limit": args.limit},
                                        "model": model.checkpoint.name})
        out = Path(args.out)
        if out.resolve() != model.checkpoint.resolve():
            out.mkdir(parents=True, exist_ok=True)
            for f in model.checkpoint.iterdir():
                if f.is_file():
                    shutil.copy2(f, out / f.name)
        save_selector(selector, out)
    except AttnsumError as e:
        print(f"cnndm_selector: error: {e}", file=sys.stderr)
        return 2
    print(f"selector of {selector.info['documents']} documents written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
