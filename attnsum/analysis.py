"""What the heads of a trained summarizer do: head importance, pattern scores, and a plan
suggestion that `attnsum train --plan` accepts.

- Importance, two methods over a validation set (loss: summed BCE against oracle labels):
  ``taylor``, per head the sum over its Q/K/V rows and output-projection columns of
  (grad x weight)^2; ``gate``, |dL/d xi_h| for a gate xi_h = 1 on each head's output.
- Pattern scores: for every head and pattern, the mean attention mass a query puts on the
  pattern's allowed keys, next to the chance level (the mass a uniform head would put there).

`analyze` (the ``attnsum analyze`` command) writes to its output folder: ``report.html``
(report.py), ``analysis.json``, ``importance.csv``, ``pattern_scores.csv`` and ``plan.json``
(for ``attnsum train --plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attention import HeadPlan, get_pattern
from .attention.hf import self_attention_modules
from .attention.patterns import dense_mask
from .batching import collate, length_batches, sentence_logits
from .io import atomic_write_json, atomic_write_text
from .losses import sentence_loss
from .model import SummarizerModel
from .preprocess import Example, load_tokenizer
from .report import render_html

# Matching token is scored on its strict form (a row with no match allows only itself), not on
# the full-attention fallback, under which every head would score on the no-match rows.
SCORED_PATTERNS = ("match-self", "sent", "next", "prev")
# What a head that follows a scored pattern is given: the paper's pattern and mode.
SUGGESTED = {"match-self": ("match", "mask"), "sent": ("sent", "mask"), "next": ("next", "synth"),
             "prev": ("prev", "synth")}


def _batches(examples: Sequence[Example], batch_size: int):
    if not examples:
        raise ValueError("no validation document to analyze")
    for _, batch in length_batches(examples, batch_size):
        yield batch


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
    gates = torch.ones(L, H, requires_grad=True) if method == "gate" else None
    try:
        for batch in _batches(examples, batch_size):
            model.zero_grad(set_to_none=True)
            logits = sentence_logits(model, batch, gates=gates)
            loss = sentence_loss(logits, batch.labels, batch.sentence_mask)
            if method == "gate":
                scores += torch.autograd.grad(loss, gates)[0].abs().double()
                continue
            loss.backward()
            with torch.no_grad():
                _taylor(model, mods, d, scores)
    finally:
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


def analyze(model: SummarizerModel, examples: Sequence[Example], out: str | Path, top_heads: int = 4,
            samples: int = 2, threshold: float = 0.5, title: str = "") -> dict:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RuntimeError(f"cannot write the report folder {out}: {e.strerror}") from None
    if not examples:
        raise ValueError("the validation split is empty: nothing to analyze")
    taylor = head_importance(model, examples, "taylor")
    gate = head_importance(model, examples, "gate")
    ps = pattern_scores(model, examples)
    plan = suggest_plan(taylor, ps, threshold)
    L, H = taylor.shape
    top = sorted(((float(taylor[layer, h]), layer, h) for layer in range(L) for h in range(H)),
                 reverse=True)[:top_heads]
    heads = [(layer, h) for _, layer, h in top]
    maps = _sample_maps(model, examples[:samples], heads)
    result = {"layers": L, "heads": H, "documents": len(examples),
              "importance": {"taylor": taylor.tolist(), "gate": gate.tolist()},
              "patterns": list(ps.patterns), "pattern_scores": ps.score.tolist(),
              "chance": ps.chance.tolist(), "plan": plan.to_dict(), "plan_text": str(plan),
              "top_heads": heads}
    atomic_write_json(out / "analysis.json", result)
    atomic_write_text(out / "plan.json", plan.to_json() + "\n")
    atomic_write_text(out / "importance.csv", "layer,head,taylor,gate\n" + "".join(
        f"{layer},{h},{taylor[layer, h]:.6g},{gate[layer, h]:.6g}\n"
        for layer in range(L) for h in range(H)))
    atomic_write_text(out / "pattern_scores.csv", "layer,head,pattern,score,chance\n" + "".join(
        f"{layer},{h},{p},{ps.score[layer, h, i]:.6g},{ps.chance[i]:.6g}\n"
        for layer in range(L) for h in range(H) for i, p in enumerate(ps.patterns)))
    atomic_write_text(out / "report.html", render_html(title or "attnsum analysis", taylor, gate,
                                                       ps, plan, maps, len(examples)))
    return result


MAX_TOKENS = 80  # tokens of each sample document shown in the heatmaps


@torch.no_grad()
def _sample_maps(model: SummarizerModel, examples: Sequence[Example], heads) -> list[dict]:
    tok = load_tokenizer()
    docs = []
    for ex in examples:
        batch = collate([ex])
        maps = model.attention_maps(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                    batch.ctx)
        n = min(MAX_TOKENS, len(ex.input_ids))
        tokens = tok.convert_ids_to_tokens(ex.input_ids[:n])
        docs.append({"id": ex.id, "tokens": tokens, "heads": [
            {"layer": layer, "head": h,
             "attn": np.round(maps[layer][0, h, :n, :n].float().numpy(), 3).tolist()}
            for layer, h in heads]})
    return docs
