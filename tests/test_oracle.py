"""The greedy oracle (BERTSum's: n-gram sets, R-1 + R-2 F, up to 3 rounds) against a hand-worked
example."""

import pytest

from attnsum.preprocess import _f1, _ngrams, oracle_indices

REFERENCE = ["The cat sat on the mat."]


def test_hand_worked_example():
    # Reference sets: unigrams {the, cat, sat, on, mat} (5), bigrams {the cat, cat sat, sat on,
    # on the, the mat} (5).
    # Round 1: "The cat sat ." -> R1 F 0.75 + R2 F 4/7 = 1.3214; "On the mat!" ties it, and the
    #          earlier sentence wins the tie; the dog sentence scores 0.
    # Round 2: adding "On the mat!" -> R1 1.0 + R2 F(4/4, 4/5) = 1.8889, the best.
    # Round 3: adding the dog -> R1 F(5/9, 1) + ... < 1.8889: stop.
    sents = ["A dog barked loudly .", "The cat sat .", "On the mat!"]
    assert oracle_indices(sents, REFERENCE) == [1, 2]


def test_scores_of_the_example():
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    cand = ["the", "cat", "sat"]
    assert _f1(_ngrams(cand, 1), _ngrams(ref, 1)) == pytest.approx(0.75)
    assert _f1(_ngrams(cand, 2), _ngrams(ref, 2)) == pytest.approx(4 / 7)


def test_stops_when_nothing_improves():
    assert oracle_indices(["nothing in common here at all"], REFERENCE) == []
    assert oracle_indices(["The cat sat on the mat.", "Cats sat on mats too."], REFERENCE) == [0]


def test_at_most_k_and_sorted():
    sents = [f"the cat sat on the mat word{i}" for i in range(6)] + ["the", "mat on"]
    got = oracle_indices(sents, REFERENCE, k=2)
    assert len(got) <= 2 and got == sorted(got)


def test_uses_sets_not_counts():
    # Repeating a word must not raise its overlap: both sentences score the same.
    assert oracle_indices(["cat cat cat cat", "cat"], ["cat"]) == [0]
