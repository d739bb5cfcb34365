"""Candidate-level selection: the summary chosen as a whole among a few candidates, instead of
the top three sentences one by one (MatchSum's idea, at the cost of a few hundred
multiply-adds a document).

The extractive model's best `TOP` sentences make the candidates: every set of 2 or 3 of them
(`SIZES`) with no trigram shared inside (BERTSum's blocking). Each candidate is described by
numbers from the model's sentence probabilities and the candidates' lengths (`FEATURES`), and a
small network (`CandidateSelector`) scores them; it is trained to rank candidates by their
ROUGE against the reference with a pairwise margin loss (`train_selector`). Lengths count
runs of letters and digits, so that tokenized text ("it 's") and raw text ("it's") read alike.

A model folder may hold one (`selector.safetensors`, `selector.json`; `save_selector`,
`load_selector`); `load_model` attaches it, and summaries of the default shape (3 sentences,
trigram blocking, no word budget: `select_summary` in evaluate.py) are then its choice. Measured in
bench/results/cnndm/levers.md ("Candidate-level selection").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .evaluate import rouge_per_document, select_top_k, trigrams
from .io import atomic_write_bytes, atomic_write_json

TOP, SIZES = 5, (2, 3)
SELECTOR_WEIGHTS, SELECTOR_CONFIG = "selector.safetensors", "selector.json"
FEATURES = ("sum_prob", "mean_prob", "min_prob", "three", "words", "words_sq", "mean_index",
            "first_index", "has_lead", "third_best_prob", "prob_gap", "max_words", "min_words",
            "sentences")
_WORD = re.compile(r"\w+")


def candidates(probs: Sequence[float], sentences: Sequence[str]) -> list[tuple[int, ...]]:
    """Index sets (sorted) of the candidates: 2 or 3 of the `TOP` best-scored sentences, no
    trigram shared between two of them."""
    top = sorted(sorted(range(len(probs)), key=lambda j: (-probs[j], j))[:TOP])
    grams = {i: trigrams(sentences[i]) for i in top}
    return [c for size in SIZES for c in itertools.combinations(top, size)
            if all(not grams[a] & grams[b] for a, b in itertools.combinations(c, 2))]


def features(probs: Sequence[float], sentences: Sequence[str],
             cands: Sequence[tuple[int, ...]]) -> np.ndarray:
    """(len(cands), len(FEATURES)) float64: what the selector knows of each candidate."""
    p = np.asarray(probs, dtype=np.float64)
    best = np.sort(p)[::-1]
    size = np.array([len(c) for c in cands])
    idx = np.array([(*c, c[0]) if len(c) == 2 else c for c in cands], dtype=np.int64).reshape(-1, 3)
    words = np.zeros(len(p))
    for i in set(idx.flat):  # the candidates' sentences only
        words[i] = len(_WORD.findall(sentences[i]))
    real = np.arange(3)[None, :] < size[:, None]  # the third slot of a pair repeats its first
    cp, cw = p[idx], words[idx]
    total_p, total_w = (cp * real).sum(1), (cw * real).sum(1)
    top_sum = np.cumsum(best)[np.minimum(size, len(best)) - 1]
    return np.stack([
        total_p, total_p / size, cp.min(1), size == 3, total_w, total_w ** 2 / 100,
        (idx * real).sum(1) / size, idx[:, 0], (idx == 0).any(1),
        np.full(len(cands), best[2] if len(best) > 2 else 0.0), total_p - top_sum,
        cw.max(1), cw.min(1), np.full(len(cands), len(p))], axis=1)


class CandidateSelector:
    """A 2-hidden-layer ReLU network over standardized `FEATURES`, in numpy (inference only;
    `train_selector` makes one). `info`: how it was trained, written to selector.json."""

    def __init__(self, mean, std, weights: list[tuple[np.ndarray, np.ndarray]], info: dict):
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.weights = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in weights]
        self.info = info

    def scores(self, x: np.ndarray) -> np.ndarray:
        h = (x - self.mean) / self.std
        for i, (w, b) in enumerate(self.weights):
            h = h @ w.T + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h[:, 0]

    def select(self, probs: Sequence[float], sentences: Sequence[str]) -> list[int]:
        """The chosen candidate's indices, in document order; a document with no candidate (a
        single sentence, or every pair sharing a trigram) keeps `select_top_k`'s choice."""
        cands = candidates(probs, sentences)
        if not cands:
            return select_top_k(probs, sentences, 3, True)
        return list(cands[int(np.argmax(self.scores(features(probs, sentences, cands))))])


def save_selector(selector: CandidateSelector, folder: str | Path) -> None:
    """selector.safetensors (the layers, float32) and selector.json, each written atomically."""
    from safetensors.numpy import save

    tensors = {}
    for i, (w, b) in enumerate(selector.weights):
        tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"] = w.astype(np.float32), b.astype(np.float32)
    folder = Path(folder)
    atomic_write_bytes(folder / SELECTOR_WEIGHTS, save(tensors))
    atomic_write_json(folder / SELECTOR_CONFIG, {
        "features": list(FEATURES), "top": TOP, "sizes": list(SIZES),
        "mean": selector.mean.tolist(), "std": selector.std.tolist(),
        "layers": len(selector.weights), **selector.info})


def load_selector(folder: str | Path) -> CandidateSelector | None:
    """The folder's selector, or None where it has none."""
    import json

    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / SELECTOR_CONFIG).is_file():
        return None
    try:
        cfg = json.loads((folder / SELECTOR_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / SELECTOR_WEIGHTS))
        if (cfg["features"], cfg["top"], cfg["sizes"]) != (list(FEATURES), TOP, list(SIZES)):
            raise ValueError("it was trained on other features or candidates than this version's")
        weights = [(tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"])
                   for i in range(cfg["layers"])]
        selector = CandidateSelector(cfg["mean"], cfg["std"], weights,
                                     {k: v for k, v in cfg.items() if k not in (
                                         "features", "top", "sizes", "mean", "std", "layers")})
        shapes_ok = all(w.shape[0] == b.shape[0] for w, b in weights) and \
            weights[0][0].shape[1] == len(FEATURES) and weights[-1][0].shape[0] == 1
        if not shapes_ok or not all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in weights):
            raise ValueError("its layers do not fit the features, or hold NaN")
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: cannot read its candidate selector ({e})") from None
    return selector


def train_selector(probs: Sequence[Sequence[float]], sentences: Sequence[Sequence[str]],
                   references: Sequence[Sequence[str]], epochs: int = 10, hidden: int = 64,
                   margin: float = 0.01, seed: int = 0, info: dict | None = None,
                   progress: bool = False) -> CandidateSelector:
    """A selector trained on documents' sentence probabilities (the model's), sentences and
    reference summaries: for every pair of a document's candidates whose ROUGE-1 F1 (percent)
    differ by d > 0, the better one's score should exceed the other's by `margin` x d (a hinge
    loss, each document weighing the same), 32 documents a step, Adam at 1e-3."""
    import torch
    from tqdm.auto import tqdm

    xs, ys = [], []
    for p, s, ref in tqdm(list(zip(probs, sentences, references, strict=True)), desc="candidates",
                          unit="doc", disable=not progress):
        cands = candidates(p, s)
        if len(cands) < 2:
            continue
        xs.append(features(p, s, cands))
        ys.append(rouge_per_document([[s[i] for i in c] for c in cands], [ref] * len(cands))[:, 0])
    if not xs:
        raise ValueError("no document with two candidates or more to learn from")
    flat = np.concatenate(xs)
    mean, std = flat.mean(0), flat.std(0) + 1e-9
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 1)).double()
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    x_all = torch.from_numpy((flat - mean) / std)
    y_all = torch.from_numpy(np.concatenate(ys))
    starts = np.cumsum([0] + [len(x) for x in xs])
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(epochs), desc="selector", unit="epoch", disable=not progress):
        order = rng.permutation(len(xs))
        for first in range(0, len(order), 32):
            docs = order[first:first + 32]
            rows = torch.from_numpy(np.concatenate([np.arange(starts[j], starts[j + 1]) for j in docs]))
            owner = torch.from_numpy(np.repeat(np.arange(len(docs)), starts[docs + 1] - starts[docs]))
            s, y = net(x_all[rows]).squeeze(-1), y_all[rows]
            d = y[:, None] - y[None, :]
            better = ((d > 0) & (owner[:, None] == owner[None, :])).double()
            per_doc = torch.zeros(len(docs), dtype=torch.float64).index_add_(0, owner, better.sum(1))
            weight = better / per_doc.clamp_min(1)[owner][:, None]  # each document weighs the same
            loss = (weight * torch.relu(margin * d - (s[:, None] - s[None, :]))).sum() / len(docs)
            opt.zero_grad()
            loss.backward()
            opt.step()
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in layers]
    return CandidateSelector(mean, std, weights, {
        "documents": len(xs), "epochs": epochs, "hidden": hidden, "margin": margin, "seed": seed,
        **(info or {})})
