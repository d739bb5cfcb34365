"""Candidate-level selection (attnsum/candidates.py): the candidates against a brute-force
reading of their definition, lengths that read tokenized and raw text alike, a selector that
learns which candidate ROUGE prefers, its files, and its use by `Summarizer` and `evaluate`."""

import itertools
import json
import random
import shutil

import numpy as np
import pytest

from attnsum.candidates import (
    FEATURES,
    SELECTOR_CONFIG,
    SELECTOR_WEIGHTS,
    CandidateSelector,
    candidates,
    features,
    load_selector,
    save_selector,
    train_selector,
)
from attnsum.errors import CheckpointError
from attnsum.evaluate import evaluate_scores, rouge_per_document, select_top_k
from attnsum.release import DEFAULT_MODEL, MODELS_DIR

WORDS = [f"w{i}" for i in range(400)]


def _sentence(rng, n=12):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + " ."


def test_candidates_are_the_trigram_free_pairs_and_triples_of_the_five_best():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 9)
        sentences = [_sentence(rng, rng.randint(3, 8)) for _ in range(n)]
        if n > 3:  # a repeated sentence shares its trigrams with its copy
            sentences[rng.randrange(n)] = sentences[0]
        probs = [rng.choice([0.1, 0.5, 0.9, rng.random()]) for _ in range(n)]
        best = set(np.lexsort((np.arange(n), -np.asarray(probs)))[:5].tolist())

        def words3(s):
            w = s.lower().split()
            return {" ".join(w[i:i + 3]) for i in range(len(w) - 2)}

        want = [c for size in (2, 3) for c in itertools.combinations(range(n), size)
                if set(c) <= best and all(not words3(sentences[a]) & words3(sentences[b])
                                          for a, b in itertools.combinations(c, 2))]
        assert candidates(probs, sentences) == want


def test_lengths_read_tokenized_and_raw_text_alike():
    raw = ["It's 5 o'clock, said Mr. Smith's wife.", "The U.S. team won 3-1 on Sunday."]
    tokenized = ["it 's 5 o'clock , said mr. smith 's wife .", "the u.s. team won 3-1 on sunday ."]
    probs = [0.9, 0.4]
    a = features(probs, raw, [(0, 1)])
    b = features(probs, tokenized, [(0, 1)])
    assert np.array_equal(a, b)
    row = dict(zip(FEATURES, a[0], strict=True))
    assert row["words"] == 10 + 9 and row["three"] == 0 and row["sum_prob"] == pytest.approx(1.3)


def _documents(rng, n):
    """Documents whose reference is their two best-scored sentences (well above the others):
    that pair beats every other candidate on ROUGE-1, and select_top_k takes three."""
    docs = []
    for _ in range(n):
        sentences = [_sentence(rng) for _ in range(7)]
        top2 = sorted(rng.sample(range(7), 2))
        probs = [rng.uniform(0.6, 1.0) if i in top2 else rng.uniform(0.0, 0.5) for i in range(7)]
        docs.append((probs, sentences, [sentences[i] for i in top2]))
    return docs


def test_a_trained_selector_picks_the_candidate_rouge_prefers(tmp_path):
    rng = random.Random(0)
    selector = train_selector(*zip(*_documents(rng, 100), strict=True), epochs=20)
    held_out = _documents(rng, 20)
    picks = [[s[i] for i in selector.select(p, s)] for p, s, _ in held_out]
    top3 = [[s[i] for i in select_top_k(p, s)] for p, s, _ in held_out]
    references = [r for *_, r in held_out]
    assert sum(p == r for p, r in zip(picks, references, strict=True)) >= 18
    gain = rouge_per_document(picks, references)[:, 0].mean() \
        - rouge_per_document(top3, references)[:, 0].mean()
    assert gain > 15  # a third sentence costs a pair's precision a third
    # its files give the same scores; a changed feature list is refused in one line
    save_selector(selector, tmp_path)
    again = load_selector(tmp_path)
    x = features(*held_out[0][:2], candidates(*held_out[0][:2]))
    assert np.allclose(again.scores(x), selector.scores(x), atol=1e-4)  # stored as float32
    assert again.info["documents"] == 100
    cfg = json.loads((tmp_path / SELECTOR_CONFIG).read_text())
    cfg["features"] = cfg["features"][:-1]
    (tmp_path / SELECTOR_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="other features"):
        load_selector(tmp_path)
    assert load_selector(tmp_path / "nowhere") is None


def _pairs_selector():
    """Prefers pairs, then the best-scored ones: the two best sentences (no trigram shared)."""
    w = np.zeros((1, len(FEATURES)))
    w[0, FEATURES.index("sum_prob")], w[0, FEATURES.index("three")] = 1.0, -10.0
    return CandidateSelector(np.zeros(len(FEATURES)), np.ones(len(FEATURES)),
                             [(w, np.zeros(1))], {"documents": 0})


def test_evaluation_scores_the_selectors_choice_in_the_default_shape_only():
    from helpers import embedded_examples

    examples = embedded_examples("val", limit=4, max_len=256)
    rng = random.Random(1)
    scores = [[rng.random() for _ in ex.sentences] for ex in examples]
    picks = [select_top_k(s, ex.sentences, 2) for s, ex in zip(scores, examples, strict=True)]
    want = evaluate_scores(examples, [[1.0 if i in p else 0.0 for i in range(len(ex.sentences))]
                                      for p, ex in zip(picks, examples, strict=True)], k=2)
    got = evaluate_scores(examples, scores, selector=_pairs_selector())
    assert {m: s.mean for m, s in got.items()} == {m: s.mean for m, s in want.items()}
    three = evaluate_scores(examples, scores, k=3, trigram_blocking=False, selector=_pairs_selector())
    assert three == evaluate_scores(examples, scores, k=3, trigram_blocking=False)


@pytest.mark.skipif(not (MODELS_DIR / DEFAULT_MODEL / "config.json").is_file(),
                    reason="the released model is not in this checkout")
def test_a_model_folder_with_a_selector_summarizes_with_it(tmp_path):
    from attnsum.summarizer import Summarizer

    bare, folder = tmp_path / "bare", tmp_path / "model"
    shutil.copytree(MODELS_DIR / DEFAULT_MODEL, bare,
                    ignore=shutil.ignore_patterns(SELECTOR_CONFIG, SELECTOR_WEIGHTS))
    shutil.copytree(bare, folder)
    save_selector(_pairs_selector(), folder)
    text = ("the city council approved a new budget for public schools on tuesday night . "
            "teachers had asked for smaller classes and better equipment for many years . "
            "the mayor said the plan would be paid for by a small rise in property taxes . "
            "some residents argued that the rise would hurt families with low incomes . "
            "the budget also includes money for three new libraries across the city .")
    plain = Summarizer.from_pretrained(bare, precision="fp32")
    with_selector = Summarizer.from_pretrained(folder, precision="fp32")
    assert with_selector.model.selector is not None and plain.model.selector is None
    two = plain.summarize(text, k=2)[0]
    assert with_selector.summarize(text)[0].indices == two.indices
    # other shapes: the top sentences as before
    for kwargs in ({"k": 4}, {"max_words": 40}, {"trigram_blocking": False}):
        assert with_selector.summarize(text, **kwargs)[0] == plain.summarize(text, **kwargs)[0]
