"""Batches of BERTSum examples and the one way to run a model on them.

`collate` pads examples on the right and builds the batch's `PatternContext` once (shared by
every layer); `length_batches` groups examples of similar length (the only batching order used
for inference and analysis); `sentence_logits` is the model call; `predict_scores` the sentence
probabilities of a whole set.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .attention import PatternContext
from .precision import Precision
from .preprocess import Example


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, N)
    segment_ids: torch.Tensor  # (B, N)
    attention_mask: torch.Tensor  # (B, N)
    cls_positions: torch.Tensor  # (B, S), -1 at padding
    labels: torch.Tensor  # (B, S) float, 0 at padding
    ctx: PatternContext

    def to(self, device) -> Batch:
        t = [x.to(device) for x in (self.input_ids, self.segment_ids, self.attention_mask,
                                     self.cls_positions, self.labels)]
        c = self.ctx
        ctx = PatternContext(c.token_ids.to(device), c.valid.to(device), c.sentence_ids.to(device))
        return Batch(*t, ctx)

    @property
    def sentence_mask(self) -> torch.Tensor:
        """(B, S) float: 1 at real sentences."""
        return (self.cls_positions >= 0).float()


def collate(examples: Sequence[Example], pad_to: int = 1, max_len: int | None = None) -> Batch:
    """Right-padded tensors and the batch's pattern context (built once, shared by layers).
    The length is rounded up to a multiple of `pad_to` (at most `max_len`), so that a service
    sees a few shapes again and again instead of every length once."""
    B = len(examples)
    N = max(len(e.input_ids) for e in examples)
    N = max(N, min(-(-N // pad_to) * pad_to, max_len or N))
    S = max(len(e.cls_positions) for e in examples)
    ids = torch.zeros(B, N, dtype=torch.long)
    seg = torch.zeros(B, N, dtype=torch.long)
    am = torch.zeros(B, N, dtype=torch.long)
    cls = torch.full((B, S), -1, dtype=torch.long)
    labels = torch.zeros(B, S)
    for b, e in enumerate(examples):
        n, s = len(e.input_ids), len(e.cls_positions)
        ids[b, :n] = torch.tensor(e.input_ids)
        seg[b, :n] = torch.tensor(e.segment_ids)
        am[b, :n] = 1
        cls[b, :s] = torch.tensor(e.cls_positions)
        labels[b, :s] = torch.tensor(e.labels, dtype=torch.float)
    ctx = PatternContext.from_spans(ids, am, [e.spans for e in examples])
    return Batch(ids, seg, am, cls, labels, ctx)


def length_batches(examples: Sequence[Example], batch_size: int, pad_to: int = 1,
                   max_len: int | None = None) -> Iterator[tuple[list[int], Batch]]:
    """(indices into `examples`, their batch), shortest documents first, so a batch pads little
    (`pad_to`, `max_len`: `collate`). With `pad_to` > 1 a batch holds the documents of one
    padded length only, so that each document's padding, and so its scores in low precision
    (where rounding follows the shapes), do not depend on the documents batched with it."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))

    def bucket(i: int) -> int:
        n = len(examples[i].input_ids)
        return 0 if pad_to == 1 else max(n, min(-(-n // pad_to) * pad_to, max_len or n))

    for _, group in itertools.groupby(order, key=bucket):
        group = list(group)
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            yield idx, collate([examples[i] for i in idx], pad_to, max_len)


def sentence_logits(model, batch: Batch, **kwargs) -> torch.Tensor:
    """The model's (B, S) sentence logits for `batch` (0 at padding sentences)."""
    return model(batch.input_ids, batch.segment_ids, batch.attention_mask, batch.cls_positions,
                 batch.ctx, **kwargs)


@torch.no_grad()
def predict_scores(model, examples: Sequence[Example], precision: Precision, batch_size: int = 8,
                   device: str | torch.device = "cpu", progress: bool = False
                   ) -> list[list[float]]:
    """Sentence probabilities of each example, in input order (a progress bar on request)."""
    from tqdm.auto import tqdm

    model.eval()
    out: list[list[float]] = [[] for _ in examples]
    batches = length_batches(examples, batch_size)
    for idx, batch in tqdm(batches, total=-(-len(examples) // batch_size), desc="score",
                           unit="batch", disable=not progress):
        with precision.autocast():
            logits = sentence_logits(model, batch.to(device))
        probs = torch.sigmoid(logits.float())
        for row, j in enumerate(idx):
            out[j] = probs[row, :len(examples[j].cls_positions)].tolist()
    return out
