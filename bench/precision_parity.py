"""One checkpoint scored in several precisions on the same documents: ROUGE with 95% intervals,
documents per second, the largest difference of a sentence probability from fp32's, and how
often the top-3 selection equals fp32's.

    python bench/precision_parity.py runs/cnndm/cpu-teacher --dataset ../shared/data/cnndm \
        --limit 200 --precisions fp32 bf16 int8

int8: dynamic int8 quantization of the Linear layers (CPU), the rest in fp32; the others as
precision.py runs them. The first precision is the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import int8_dynamic

from attnsum.batching import predict_scores
from attnsum.checkpoints import load_model, resolve_checkpoint
from attnsum.evaluate import evaluate_scores, select_top_k
from attnsum.precision import resolve_precision
from attnsum.shards import examples_of


def scores_in(model, examples, name: str) -> tuple[list[list[float]], float]:
    if name == "int8":
        model = int8_dynamic(model)
    precision = resolve_precision("fp32" if name == "int8" else name, "cpu")
    predict_scores(model, examples[:8], precision)  # warm-up
    t0 = time.perf_counter()
    scores = predict_scores(model, examples, precision, progress=True)
    return scores, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--dataset", default="embedded")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--max-len", type=int, default=None,
                   help="input length (default: the one the checkpoint was trained at)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    ckpt = resolve_checkpoint(args.checkpoint)
    max_len = load_model(ckpt).cfg.input_length(args.max_len)
    examples = examples_of(args.dataset, args.split, max_len, args.limit).examples
    results, ref = {}, None
    for precision in args.precisions:
        model = load_model(ckpt).eval()
        model.drop_synth_projections()
        scores, seconds = scores_in(model, examples, precision)
        rouge = evaluate_scores(examples, scores)
        picks = [select_top_k(s, ex.sentences) for s, ex in zip(scores, examples, strict=True)]
        ref = ref or (scores, picks)
        diff = max(abs(a - b) for s, r in zip(scores, ref[0], strict=True)
                   for a, b in zip(s, r, strict=True))
        same = sum(a == b for a, b in zip(picks, ref[1], strict=True)) / len(picks)
        results[precision] = {"docs_per_s": len(examples) / seconds, "max_prob_diff": diff,
                              "same_top3": same, **{m: vars(s) for m, s in rouge.items()}}
        print(f"{precision:>5}: ROUGE-1 {rouge['rouge1']}, -2 {rouge['rouge2']}, -Lsum "
              f"{rouge['rougeLsum']}; {len(examples) / seconds:.2f} docs/s; max |p - p_ref| "
              f"{diff:.4f}; top-3 as the reference's in {100 * same:.1f}% of documents",
              flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"checkpoint": str(ckpt), "documents": len(examples), **results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
