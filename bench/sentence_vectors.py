"""How alike a model's sentence vectors are, layer by layer: the mean cosine similarity between
the sentence vectors of one document (what the sentence classifier reads: the encoder's outputs at
the [CLS] positions, or their mean over each sentence for a model trained with `--pooling mean`),
averaged over documents. Near 1, the sentences are indistinguishable there and
only their positions can rank them.

    python bench/sentence_vectors.py minilm attnsum/models/news-paper3-tx-lr2e-4-sel \
        --dataset shards/cnndm --split val --limit 16

Each MODEL is a checkpoint or a pretrained preset (minilm: the untrained encoder).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.batching import collate
from attnsum.checkpoints import load_model
from attnsum.config import PRESETS, ModelConfig
from attnsum.model import SummarizerModel, sentence_vectors
from attnsum.shards import examples_of


@torch.no_grad()
def layer_similarity(model: SummarizerModel, batch) -> list[float]:
    """Mean pairwise cosine of the sentence vectors after the embeddings and after each layer."""
    model.eval()
    mask = batch.cls_positions >= 0
    means = []
    for h in model.layer_outputs(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                 batch.ctx):
        sents = sentence_vectors(h.float(), batch.cls_positions, batch.attention_mask,
                                 model.cfg.pooling)
        per_doc = []
        for b in range(sents.shape[0]):
            v = torch.nn.functional.normalize(sents[b, mask[b]], dim=-1)
            n = v.shape[0]
            if n > 1:
                per_doc.append(((v @ v.T).sum() - n).item() / (n * n - n))
        means.append(sum(per_doc) / len(per_doc))
    return means


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="MODEL")
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=16, help="documents (one batch)")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    examples = examples_of(args.dataset, args.split, args.max_len, args.limit,
                           need_texts=False).examples
    batch = collate(examples)
    result = {}
    for name in args.models:
        model = (SummarizerModel(ModelConfig.from_preset(name)) if name in PRESETS
                 else load_model(name))
        result[name] = layer_similarity(model, batch)
        print(f"{name}: " + ", ".join(f"{c:.3f}" for c in result[name])
              + "  (embeddings, then each layer)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"documents": len(examples), "similarity": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
