"""What the heads of a trained summarizer do: head importance, pattern scores, and a plan
suggestion that `attnsum train --plan` accepts.

- Importance, two methods over a validation set (loss: summed BCE against oracle labels):
  ``taylor``, per head the sum over its Q/K/V rows and output-projection columns of
  (grad x weight)^2; ``gate``, |dL/d xi_h| for a gate xi_h = 1 on each head's output.
- Pattern scores: for every head and pattern (built-in and user patterns), the mean attention
  mass a query puts on the pattern's allowed keys, next to the chance level (the mass a uniform
  head would put there).
- Head profiles, aids for naming patterns the built-ins miss: per head the histogram of the
  relative offsets j - i of its attention mass, its mass on keys of the same token, the same
  sentence, [CLS], [SEP] and punctuation, and the entropy of its rows.
- Plan costs (plan_costs.py), so that the report's plan editor can price a plan.

`analyze` (the ``attnsum analyze`` command) writes to its output folder: ``report.html``
(report.py), ``analysis.json``, ``maps.json`` (sample attention maps; `write_report` renders the
report again from these two, with a pipeline's results), ``importance.csv``,
``pattern_scores.csv`` and ``plan.json`` (for ``attnsum train --plan``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attention import HeadPlan, get_pattern
from .attention.hf import self_attention_modules
from .attention.patterns import dense_mask
from .attention.registry import pattern_names
from .batching import collate, length_batches, sentence_logits
from .checkpoints import write_plan_file
from .errors import ConfigError, InputError
from .io import atomic_write_json, atomic_write_text
from .losses import sentence_loss
from .model import SummarizerModel
from .plan_costs import WINDOW, measured_speeds, plan_costs
from .preprocess import Example, load_tokenizer
from .report import render_html

# Matching token is scored on its strict form (a row with no match allows only itself), not on
# the full-attention fallback, under which every head would score on the no-match rows.
SCORED_PATTERNS = ("match-self", "sent", "next", "prev", "sent-cls")
# What a head that follows one of these is given: the paper's pattern and mode. The suggestion
# keeps to the paper's four; other scores guide a person in the report's plan editor.
SUGGESTED = {"match-self": ("match", "mask"), "sent": ("sent", "mask"), "next": ("next", "synth"),
             "prev": ("prev", "synth")}


def _batches(examples: Sequence[Example], batch_size: int, desc: str | None = None):
    """Batches of `examples`; with `desc`, a progress bar of the documents done (stderr)."""
    from tqdm.auto import tqdm

    if not examples:
        raise InputError("no validation document to analyze")
    with tqdm(total=len(examples), desc=desc, unit="doc", disable=desc is None,
              file=sys.stderr) as bar:
        for idx, batch in length_batches(examples, batch_size):
            yield batch
            bar.update(len(idx))


def head_importance(model: SummarizerModel, examples: Sequence[Example], method: str = "taylor",
                    batch_size: int = 4, progress: bool = False) -> np.ndarray:
    """(layers, heads) importance of the encoder's heads, normalised to sum to 1 per method."""
    if method not in ("taylor", "gate"):
        raise ConfigError(f"unknown importance method {method!r}: use taylor or gate")
    mods = self_attention_modules(model.encoder)
    L, H = model.cfg.layers, model.cfg.heads
    d = model.cfg.hidden // H
    scores = torch.zeros(L, H, dtype=torch.float64)
    was_training = model.training
    model.eval()
    gates = torch.ones(L, H, requires_grad=True) if method == "gate" else None
    try:
        for batch in _batches(examples, batch_size,
                              f"analyze: {method} importance" if progress else None):
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


def scored_patterns() -> tuple[str, ...]:
    """Every pattern the plan editor offers (plan_costs): the paper's and the sentence's [CLS]
    first, then the other built-ins (a window among them) and every user pattern."""
    get_pattern(WINDOW)  # window:K is built on first use
    return SCORED_PATTERNS + tuple(n for n in pattern_names() if n not in SCORED_PATTERNS)


def _attention_batches(model: SummarizerModel, examples: Sequence[Example], batch_size: int,
                       desc: str | None = None):
    """(batch, encoder attention probabilities (B, L, H, N, N) fp32) over the examples."""
    model.eval()
    for batch in _batches(examples, batch_size, desc):
        maps = model.attention_maps(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                    batch.ctx)
        yield batch, torch.stack(maps, 1).float()


@torch.no_grad()
def pattern_scores(model: SummarizerModel, examples: Sequence[Example],
                   patterns: Sequence[str] | None = None, batch_size: int = 4,
                   progress: bool = False) -> PatternScores:
    """Mean attention mass each head puts on each pattern's keys (default `scored_patterns`),
    over the valid query tokens for which the pattern allows at least one key (the last token
    has no next token)."""
    patterns = scored_patterns() if patterns is None else tuple(patterns)
    P = len(patterns)
    mass = None
    chance, rows = np.zeros(P), np.zeros(P)
    for batch, probs in _attention_batches(model, examples, batch_size,
                                           "analyze: pattern scores" if progress else None):
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


OFFSETS = 16  # the profile's offset histogram: j - i in -16..16, the rest in one "far" bin
KEY_SETS = ("same token", "same sentence", "[CLS]", "[SEP]", "punctuation")


def _punctuation_ids() -> torch.Tensor:
    import string

    vocab = load_tokenizer().get_vocab()
    return torch.tensor(sorted(i for t, i in vocab.items()
                               if t and all(c in string.punctuation for c in t)))


@torch.no_grad()
def head_profiles(model: SummarizerModel, examples: Sequence[Example],
                  batch_size: int = 4, progress: bool = False) -> dict[str, np.ndarray]:
    """Per head, averaged over valid queries: "offsets" (L, H, 2 * OFFSETS + 1), the mass at
    j - i = -OFFSETS..OFFSETS, and "offsets_same" the part of it on keys of the query's own
    sentence (the report's average map: a head's attention by offset and sentence, whatever the
    documents' lengths); "far" (L, H), the rest; one (L, H) mass per `KEY_SETS` entry; and
    "entropy" (L, H) of the rows, in nats."""
    punct = _punctuation_ids()
    tokenizer = load_tokenizer()
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    sums: dict[str, torch.Tensor] = {}
    n_rows = 0.0

    def add(name, value):  # value (L, H, ...) summed over valid queries
        sums[name] = sums[name] + value if name in sums else value.double()

    for batch, probs in _attention_batches(model, examples, batch_size,
                                           "analyze: head profiles" if progress else None):
        B, L, H, N, _ = probs.shape
        valid = batch.ctx.valid.float()  # (B, N)
        tok, sid = batch.ctx.token_ids, batch.ctx.sentence_ids
        n_rows += float(valid.sum())
        same = (sid[:, :, None] == sid[:, None, :]) & (sid[:, :, None] >= 0)  # (B, N, N)
        hist, hist_same = [], []
        for d in range(-OFFSETS, OFFSETS + 1):
            diag = torch.diagonal(probs, offset=d, dim1=-2, dim2=-1)  # query i, key i + d
            q = valid[:, max(0, -d):N - max(0, d)] if abs(d) < N else valid[:, :0]
            in_sentence = torch.diagonal(same, offset=d, dim1=-2, dim2=-1).float()
            hist.append(torch.einsum("blhq,bq->lh", diag, q))
            hist_same.append(torch.einsum("blhq,bq->lh", diag, q * in_sentence))
        offsets = torch.stack(hist, -1)
        add("offsets", offsets)
        add("offsets_same", torch.stack(hist_same, -1))
        add("far", torch.einsum("blhqk,bq->lh", probs, valid) - offsets.sum(-1))
        pair_sets = {"same token": tok[:, :, None] == tok[:, None, :], "same sentence": same}
        for name, pairs in pair_sets.items():
            add(name, torch.einsum("blhqk,bqk,bq->lh", probs, pairs.float(), valid))
        key_sets = {"[CLS]": tok == cls_id, "[SEP]": tok == sep_id,
                    "punctuation": torch.isin(tok, punct)}
        for name, keys in key_sets.items():
            add(name, torch.einsum("blhqk,bk,bq->lh", probs, keys.float(), valid))
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # (B, L, H, N)
        add("entropy", torch.einsum("blhq,bq->lh", entropy, valid))
    return {k: (v / max(n_rows, 1.0)).numpy() for k, v in sums.items()}


MIN_LIFT = 2.0  # suggest_plan: a pattern's mass on a head, over the chance level, to suggest it


def _followed(importance: np.ndarray, scores: PatternScores, threshold: float,
              min_lift: float) -> dict[tuple[int, int], tuple[str, float, float]]:
    """The heads that follow one of `SUGGESTED`'s patterns (suggest_plan's rule): (layer, head)
    -> (pattern, score, lift)."""
    L, H, _ = scores.score.shape
    lift = scores.score / np.maximum(scores.chance, 1e-9)
    out = {}
    for layer in range(L):
        for h in range(H):
            ok = [(lift[layer, h, i], -importance[layer, h], name, scores.score[layer, h, i])
                  for i, name in enumerate(scores.patterns)
                  if name in SUGGESTED and scores.score[layer, h, i] >= threshold
                  and lift[layer, h, i] >= min_lift]
            if ok:
                best = max(ok)
                out[(layer, h)] = (best[2], float(best[3]), float(best[0]))
    return out


def suggest_plan(importance: np.ndarray, scores: PatternScores, threshold: float = 0.5,
                 min_lift: float = MIN_LIFT) -> HeadPlan:
    """Give a head the pattern it already follows: a head whose mass on a pattern is at least
    `threshold` and at least `min_lift` times the chance level takes that pattern (the one
    with the highest lift if several qualify), in the paper's mode for it (mask for matching
    token and intra-sentence, synthesize for previous/next token); only the patterns of
    `SUGGESTED` are suggested. Ties in lift go to the less important head; other heads stay
    learned."""
    L, H, _ = scores.score.shape
    return HeadPlan.from_assignments(L, H, {
        key: SUGGESTED[name] for key, (name, _, _) in
        _followed(importance, scores, threshold, min_lift).items()})


def by_importance(importance: np.ndarray) -> list[tuple[int, int]]:
    """Every (layer, head), the most important first."""
    return sorted(np.ndindex(importance.shape), key=lambda lh: (importance[lh], lh), reverse=True)


def explain_suggestion(importance: np.ndarray, scores: PatternScores, threshold: float = 0.5,
                       min_lift: float = MIN_LIFT, important: int = 5) -> dict:
    """Why `suggest_plan` gives what it gives, for the report: its thresholds, each patterned
    head with its score, lift and importance rank, and the `important` most important heads
    left learned with the best score and lift any suggested pattern has on them."""
    followed = _followed(importance, scores, threshold, min_lift)
    order = by_importance(importance)
    rank = {head: r + 1 for r, head in enumerate(order)}
    lift = scores.score / np.maximum(scores.chance, 1e-9)
    chosen = [{"layer": layer, "head": h, "pattern": SUGGESTED[name][0], "mode": SUGGESTED[name][1],
               "scored_as": name, "score": score, "lift": lf, "rank": rank[(layer, h)]}
              for (layer, h), (name, score, lf) in sorted(followed.items())]
    left = []
    for layer, h in order:
        if (layer, h) in followed:
            continue
        i = max((i for i, n in enumerate(scores.patterns) if n in SUGGESTED),
                key=lambda i: scores.score[layer, h, i])
        left.append({"layer": layer, "head": h, "rank": rank[(layer, h)],
                     "best": scores.patterns[i], "score": float(scores.score[layer, h, i]),
                     "lift": float(lift[layer, h, i])})
        if len(left) == important:
            break
    return {"threshold": threshold, "min_lift": min_lift, "heads": importance.size,
            "suggested": {name: "/".join(spec) for name, spec in SUGGESTED.items()},
            "chosen": chosen, "important_left": left}


def _training_settings(model: SummarizerModel) -> dict:
    """What the report's train command repeats of the model's training (none: saved outside)."""
    from .checkpoints import read_training_summary

    if model.checkpoint is None:
        return {}
    t = read_training_summary(model.checkpoint).get("train", {})
    return {**{k: t[k] for k in ("dataset", "steps", "batch_size", "lr") if k in t},
            **({"max_len": model.cfg.max_len} if t else {})}


def analyze(model: SummarizerModel, examples: Sequence[Example], out: str | Path, top_heads: int = 4,
            samples: int = 2, threshold: float = 0.5, title: str = "",
            pattern_files: Sequence[str] = (), progress: bool = False) -> dict:
    """Write the analysis of `model` on `examples` to `out` (see the module docstring);
    `pattern_files` are the --patterns files loaded, for the train command the report shows;
    `progress`: a bar of the documents done for each pass over them (stderr)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"cannot write the report folder {out}: {e.strerror}") from None
    if not examples:
        raise InputError("the validation split is empty: nothing to analyze")
    taylor = head_importance(model, examples, "taylor", progress=progress)
    gate = head_importance(model, examples, "gate", progress=progress)
    ps = pattern_scores(model, examples, progress=progress)
    profiles = head_profiles(model, examples, progress=progress)
    costs = plan_costs(examples)
    plan = suggest_plan(taylor, ps, threshold)
    explained = explain_suggestion(taylor, ps, threshold)
    L, H = taylor.shape
    heads = _map_heads(taylor, top_heads, explained)
    maps = _sample_maps(model, examples[:samples], heads, progress)
    result = {"layers": L, "heads": H, "documents": len(examples),
              "importance": {"taylor": taylor.tolist(), "gate": gate.tolist()},
              "patterns": list(ps.patterns), "pattern_scores": ps.score.tolist(),
              "chance": ps.chance.tolist(), "plan": plan.to_dict(), "plan_text": str(plan),
              "map_heads": heads, "suggestion": explained, "measured": measured_speeds(),
              "title": title or "attnsum analysis",
              "profiles": {k: v.tolist() for k, v in profiles.items()},
              "costs": costs, "preset": model.cfg.preset, "inject": model.cfg.inject,
              "pattern_files": [str(f) for f in pattern_files],
              "trained": _training_settings(model)}
    atomic_write_json(out / "analysis.json", result)
    write_plan_file(plan, out / "plan.json")
    atomic_write_text(out / "importance.csv", "layer,head,taylor,gate\n" + "".join(
        f"{layer},{h},{taylor[layer, h]:.6g},{gate[layer, h]:.6g}\n"
        for layer in range(L) for h in range(H)))
    atomic_write_text(out / "pattern_scores.csv", "layer,head,pattern,score,chance\n" + "".join(
        f"{layer},{h},{p},{ps.score[layer, h, i]:.6g},{ps.chance[i]:.6g}\n"
        for layer in range(L) for h in range(H) for i, p in enumerate(ps.patterns)))
    atomic_write_text(out / "maps.json", json.dumps(maps))
    write_report(out)
    return result


MAX_TOKENS = 128  # tokens of each sample document shown in the heatmaps
MAP_HEADS = 8  # heads with sample maps: the most important, then the suggested plan's


def _map_heads(importance: np.ndarray, top_heads: int, explained: dict) -> list[tuple[int, int]]:
    heads = by_importance(importance)[:top_heads]
    for c in sorted(explained["chosen"], key=lambda c: -c["lift"]):
        if len(heads) >= max(MAP_HEADS, top_heads):
            break
        if (c["layer"], c["head"]) not in heads:
            heads.append((c["layer"], c["head"]))
    return heads


@torch.no_grad()
def _sample_maps(model: SummarizerModel, examples: Sequence[Example], heads,
                 progress: bool = False) -> list[dict]:
    """Per sample document, its first `MAX_TOKENS` tokens: their text, the start of each
    sentence, the attention of each of `heads` in thousandths of a query's mass ("attn"), and
    the cells each scored pattern allows ("allowed": a row of "0"/"1" per query, the predicate
    the kernels run, `dense_mask`)."""
    from tqdm.auto import tqdm

    tok = load_tokenizer()
    docs = []
    for ex in tqdm(examples, desc="analyze: sample maps", unit="doc", disable=not progress,
                   file=sys.stderr):
        batch = collate([ex])
        maps = model.attention_maps(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                    batch.ctx)
        n = min(MAX_TOKENS, len(ex.input_ids))
        allowed = {name: dense_mask(get_pattern(name).mask_mod(batch.ctx), 1, batch.input_ids.shape[1])
                   [0, :n, :n].int().tolist() for name in SCORED_PATTERNS}
        docs.append({
            "id": ex.id, "tokens": tok.convert_ids_to_tokens(ex.input_ids[:n]),
            "sentences": [start for start, _ in ex.spans if start < n],
            "heads": [{"layer": layer, "head": h,
                       "attn": (maps[layer][0, h, :n, :n].float() * 1000).round().int().tolist()}
                      for layer, h in heads],
            "allowed": {k: ["".join(map(str, row)) for row in m] for k, m in allowed.items()}})
    return docs


def write_report(folder: str | Path, results: dict | None = None) -> Path:
    """(Re)write `folder`/report.html from the analysis.json and maps.json that `analyze` left
    there, with `results` (pipeline.py: ROUGE, curves, speed) when given."""
    folder = Path(folder)
    result, maps = (json.loads((folder / f"{k}.json").read_text()) for k in ("analysis", "maps"))
    atomic_write_text(folder / "report.html", render_html(result["title"], result, maps, results))
    return folder / "report.html"
