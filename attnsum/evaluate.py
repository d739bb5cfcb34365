"""ROUGE evaluation of extractive systems.

Convention (BERTSum and the paper): rouge-score with ``use_stemmer=True``; ROUGE-1, ROUGE-2 and
ROUGE-Lsum F1 over newline-joined sentences; corpus score = mean over documents, with a 95%
percentile bootstrap interval over documents.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import check_choice
from .errors import InputError
from .extras import need
from .io import atomic_write_json, atomic_write_text
from .preprocess import Example

if TYPE_CHECKING:
    from .precision import Precision

METRICS = ("rouge1", "rouge2", "rougeLsum")


def _scorer():
    need("eval", "ROUGE scoring")
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


def rouge_per_document(predictions: Sequence[Sequence[str]],
                       references: Sequence[Sequence[str]]) -> np.ndarray:
    """(n_docs, 3) F1 of ROUGE-1/2/Lsum, in percent."""
    scorer = _scorer()
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        s = scorer.score("\n".join(ref), "\n".join(pred))
        rows.append([100 * s[m].fmeasure for m in METRICS])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(METRICS))


@dataclass
class Score:
    mean: float
    low: float
    high: float

    def __str__(self):
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def bootstrap(per_doc: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict[str, Score]:
    """Mean of each column with its 95% percentile bootstrap interval (documents resampled)."""
    if len(per_doc) == 0:
        raise InputError("no document to score")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_doc), size=(n_resamples, len(per_doc)))
    means = per_doc[idx].mean(axis=1)  # (n_resamples, 3)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return {m: Score(float(per_doc[:, i].mean()), float(lo[i]), float(hi[i]))
            for i, m in enumerate(METRICS)}


# --------------------------------------------------------------------------- selection


def trigrams(sentence: str) -> set[tuple[str, ...]]:
    w = sentence.lower().split()
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def select_top_k(scores: Sequence[float], sentences: Sequence[str], k: int = 3,
                 trigram_blocking: bool = True, max_words: int | None = None) -> list[int]:
    """Indices (in document order) of the `k` best-scored sentences; with trigram blocking a
    sentence sharing a trigram with one already chosen is passed over (BERTSum), and with
    `max_words` one that would take the summary past that many words (the first pick is kept
    whatever its length)."""
    chosen: list[int] = []
    seen: set = set()
    words = 0
    for i in sorted(range(len(scores)), key=lambda j: (-scores[j], j)):
        tri = trigrams(sentences[i])
        if trigram_blocking and tri & seen:
            continue
        n = len(sentences[i].split())
        if max_words is not None and chosen and words + n > max_words:
            continue
        chosen.append(i)
        seen |= tri
        words += n
        if len(chosen) == k:
            break
    return sorted(chosen)


def select_summary(scores: Sequence[float], sentences: Sequence[str], k: int = 3,
                   trigram_blocking: bool = True, max_words: int | None = None,
                   selector=None) -> list[int]:
    """The one rule of what a model's summary is: a candidate selector's choice
    (attnsum/candidates.py) for the default shape (k=3, trigram blocking, no word budget) where
    the model has one, else `select_top_k`."""
    if selector is not None and k == 3 and trigram_blocking and max_words is None:
        return selector.select(scores, sentences)
    return select_top_k(scores, sentences, k, trigram_blocking, max_words)


BASELINES = ("lead3", "oracle")


def system_selection(system: str, ex: Example) -> list[int]:
    """Indices (into the example's kept sentences) a baseline system picks."""
    check_choice("system", system, BASELINES)
    if system == "lead3":
        return list(range(min(3, len(ex.all_sentences))))
    return list(ex.oracle)


def evaluate_selections(examples: Sequence[Example], selections: Sequence[list[int]],
                        sentences_of, out_dir: Path | None, name: str,
                        extra: dict | None = None) -> dict[str, Score]:
    """Score selections and, with `out_dir`, write ``<name>.predictions.jsonl`` and
    ``<name>.scores.json`` there."""
    preds = [sentences_of(ex, sel) for ex, sel in zip(examples, selections, strict=True)]
    per_doc = rouge_per_document(preds, [ex.reference for ex in examples])
    scores = bootstrap(per_doc)
    if out_dir is not None:
        lines = [json.dumps({"id": ex.id, "selected": sel, "summary": p, "reference": ex.reference,
                             **dict(zip(METRICS, map(float, row), strict=True))})
                 for ex, sel, p, row in zip(examples, selections, preds, per_doc, strict=True)]
        atomic_write_text(out_dir / f"{name}.predictions.jsonl", "\n".join(lines) + "\n")
        atomic_write_json(out_dir / f"{name}.scores.json", {
            "system": name, "documents": len(examples),
            **{m: vars(s) for m, s in scores.items()}, **(extra or {})})
    return scores


def evaluate_system(system: str, examples: Sequence[Example], out_dir: Path | None = None,
                    extra: dict | None = None) -> dict[str, Score]:
    selections = [system_selection(system, ex) for ex in examples]
    return evaluate_selections(examples, selections,
                               lambda ex, sel: [ex.all_sentences[i] for i in sel],
                               out_dir, system, extra)


def evaluate_model(model, examples: Sequence[Example], precision: Precision,
                   out_dir: Path | None = None, name: str = "model", k: int = 3,
                   trigram_blocking: bool = True, device="cpu", extra: dict | None = None,
                   progress: bool = False) -> dict[str, Score]:
    """ROUGE of a model's top-k selections (trigram blocking by default)."""
    from .batching import predict_scores

    scores = predict_scores(model, examples, precision, device=device, progress=progress)
    return evaluate_scores(examples, scores, out_dir, name, k, trigram_blocking, extra,
                           model.selector)


def evaluate_scores(examples: Sequence[Example], scores: Sequence[Sequence[float]],
                    out_dir: Path | None = None, name: str = "model", k: int = 3,
                    trigram_blocking: bool = True, extra: dict | None = None,
                    selector=None) -> dict[str, Score]:
    """ROUGE of the top-k selections by per-sentence scores (one list per example), or of a
    candidate selector's choices (candidates.py) where one is given and the shape is its own."""
    selections = [select_summary(s, ex.sentences, k, trigram_blocking, None, selector)
                  for s, ex in zip(scores, examples, strict=True)]
    return evaluate_selections(examples, selections,
                               lambda ex, sel: [ex.sentences[i] for i in sel], out_dir, name, extra)


def read_scores(path: str | Path, examples: Sequence[Example]) -> list[list[float]]:
    """The scores of `attnsum score` for `examples`, matched by id; every example needs its
    scores, one per sentence of its input."""
    from .data import DataError

    by_id = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                by_id[str(record["id"])] = [float(x) for x in record["scores"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a scores file of `attnsum score` ({e})") from None
    out = []
    for ex in examples:
        if ex.id not in by_id:
            raise DataError(f"{path}: no scores for document {ex.id!r}")
        if len(by_id[ex.id]) != len(ex.sentences):
            raise DataError(f"{path}: document {ex.id!r} has {len(by_id[ex.id])} scores for "
                            f"{len(ex.sentences)} sentences (another --max-len?)")
        out.append(by_id[ex.id])
    return out


def format_table(rows: dict[str, dict[str, Score]]) -> str:
    head = f"{'system':<12} {'ROUGE-1':>22} {'ROUGE-2':>22} {'ROUGE-Lsum':>22}"
    lines = [head, "-" * len(head)]
    for name, s in rows.items():
        lines.append(f"{name:<12} " + " ".join(f"{str(s[m]):>22}" for m in METRICS))
    return "\n".join(lines)
