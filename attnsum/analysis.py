"""What the heads of a trained summarizer do: head importance, pattern scores, and a plan
suggestion that `attnsum train --plan` accepts.

- Importance, two methods over a validation set (loss: summed BCE against oracle labels):
  ``taylor``, per head the sum over its Q/K/V rows and output-projection columns of
  (grad x weight)^2; ``gate``, |dL/d xi_h| for a gate xi_h = 1 on each head's output.
- Pattern scores: for every head and pattern, the mean attention mass a query puts on the
  pattern's allowed keys, next to the chance level (the mass a uniform head would put there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .hf import self_attention_modules
from .model import SummarizerModel
from .patterns import dense_mask, get_pattern
from .plan import HeadPlan
from .preprocess import Example
from .train import collate, sentence_loss

# Matching token is scored on its strict form (a row with no match allows only itself), not on
# the full-attention fallback, under which every head would score on the no-match rows.
SCORED_PATTERNS = ("match-self", "sent", "next", "prev")
# What a head that follows a scored pattern is given: the paper's pattern and mode.
SUGGESTED = {"match-self": ("match", "mask"), "sent": ("sent", "mask"), "next": ("next", "synth"),
             "prev": ("prev", "synth")}


def _batches(examples: Sequence[Example], batch_size: int):
    if not examples:
        raise ValueError("no validation document to analyze")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for i in range(0, len(order), batch_size):
        yield collate([examples[j] for j in order[i:i + batch_size]])


def head_importance(model: SummarizerModel, examples: Sequence[Example], method: str = "taylor",
                    batch_size: int = 4) -> np.ndarray:
    """(layers, heads) importance of the encoder's heads, normalised to sum to 1 per method."""
    if method not in ("taylor", "gate"):
        raise ValueError(f"unknown importance method {method!r}: use taylor or gate")
    mods = self_attention_modules(model.encoder)
    L, H = model.cfg.layers, model.cfg.heads
    d = model.cfg.hidden // H
    scores = torch.zeros(L, H, dtype=torch.float64)
    was_training = model.training
    model.eval()
    gates = []
    if method == "gate":
        for m in mods:
            m.attnsum_gates = torch.ones(H, requires_grad=True)
            gates.append(m.attnsum_gates)
    try:
        for batch in _batches(examples, batch_size):
            model.zero_grad(set_to_none=True)
            mask = (batch.cls_positions >= 0).float()
            logits = model(batch.input_ids, batch.segment_ids, batch.attention_mask,
                           batch.cls_positions, batch.ctx)
            loss = sentence_loss(logits, batch.labels, mask)
            if method == "gate":
                grads = torch.autograd.grad(loss, gates)
                for layer, g in enumerate(grads):
                    scores[layer] += g.abs().double()
                continue
            loss.backward()
            with torch.no_grad():
                _taylor(model, mods, d, scores)
    finally:
        for m in mods:
            m.attnsum_gates = None
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    total = scores.sum()
    return (scores / total if total > 0 else scores).numpy()


def _taylor(model: SummarizerModel, mods, d: int, scores: torch.Tensor) -> None:
    """Add each head's sum of (grad x weight)^2 over its Q/K/V rows and output columns."""
    for layer, m in enumerate(mods):
        dense = model.encoder.encoder.layer[layer].attention.output.dense
        for h in range(scores.shape[1]):
            rows = slice(h * d, (h + 1) * d)
            total = sum(((lin.weight.grad[rows] * lin.weight[rows]) ** 2).sum()
                        for lin in (m.query, m.key, m.value))
            total = total + ((dense.weight.grad[:, rows] * dense.weight[:, rows]) ** 2).sum()
            scores[layer, h] += float(total)


@dataclass
class PatternScores:
    patterns: tuple[str, ...]
    score: np.ndarray  # (layers, heads, patterns) mean attention mass on the pattern
    chance: np.ndarray  # (patterns,) mass of a uniform head


@torch.no_grad()
def pattern_scores(model: SummarizerModel, examples: Sequence[Example],
                   patterns: Sequence[str] = SCORED_PATTERNS, batch_size: int = 4) -> PatternScores:
    """Mean attention mass each head puts on each pattern's keys, over the valid query tokens
    for which the pattern allows at least one key (the last token has no next token)."""
    model.eval()
    P = len(patterns)
    mass = None
    chance, rows = np.zeros(P), np.zeros(P)
    for batch in _batches(examples, batch_size):
        maps = model.attention_maps(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                    batch.ctx)
        probs = torch.stack(maps, 1).float()  # (B, L, H, N, N)
        B, L, H, N, _ = probs.shape
        if mass is None:
            mass = np.zeros((L, H, P))
        n_keys = batch.ctx.valid.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
        for i, name in enumerate(patterns):
            allowed = dense_mask(get_pattern(name).mask_mod(batch.ctx), B, N).float()  # (B, N, N)
            counted = (allowed.sum(-1) > 0).float()  # (B, N); padding rows allow nothing
            on = torch.einsum("blhqk,bqk->blhq", probs, allowed)  # (B, L, H, N)
            mass[:, :, i] += (on * counted[:, None, None, :]).sum((0, 3)).numpy()
            chance[i] += float(((allowed.sum(-1) / n_keys) * counted).sum())
            rows[i] += float(counted.sum())
    rows = np.maximum(rows, 1)
    return PatternScores(tuple(patterns), mass / rows, chance / rows)


def suggest_plan(importance: np.ndarray, scores: PatternScores, threshold: float = 0.5,
                 min_lift: float = 2.0) -> HeadPlan:
    """Give a head the pattern it already follows: a head whose mass on a pattern is at least
    `threshold` and at least `min_lift` times the chance level takes that pattern (the one
    with the highest lift if several qualify), in the paper's mode for it (mask for matching
    token and intra-sentence, synthesize for previous/next token). Ties in lift go to the less
    important head; other heads stay learned."""
    L, H, _ = scores.score.shape
    lift = scores.score / np.maximum(scores.chance, 1e-9)
    assignments = {}
    for layer in range(L):
        for h in range(H):
            ok = [(lift[layer, h, i], -importance[layer, h], name)
                  for i, name in enumerate(scores.patterns)
                  if scores.score[layer, h, i] >= threshold and lift[layer, h, i] >= min_lift]
            if ok:
                name = max(ok)[2]
                assignments[(layer, h)] = SUGGESTED.get(name, (name, "mask"))
    return HeadPlan.from_assignments(L, H, assignments)
