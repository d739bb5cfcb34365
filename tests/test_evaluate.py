"""ROUGE evaluation, bootstrap intervals, selection, and the evaluate command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from attnsum.cli import main
from attnsum.evaluate import bootstrap, rouge_per_document, select_top_k


def test_rouge_extremes_and_stemming():
    per_doc = rouge_per_document(
        [["the cats were running ."], ["completely unrelated words"], ["a b", "c d"]],
        [["The cat was running."], ["the cat sat"], ["a b\nc d"]])
    assert per_doc.shape == (3, 3)
    assert per_doc[0, 0] == pytest.approx(100 * 2 * (3 / 4) * (3 / 4) / 1.5)  # cats~cat, running
    assert np.all(per_doc[1] == 0)
    assert np.allclose(per_doc[2], 100)  # newline-joined sentences, Lsum sees the same split


def test_bootstrap_interval():
    rng = np.random.default_rng(1)
    per_doc = rng.normal(40, 10, size=(400, 3))
    s = bootstrap(per_doc)["rouge1"]
    assert s.low < s.mean < s.high
    # The interval's half-width is close to 1.96 standard errors.
    se = per_doc[:, 0].std() / np.sqrt(len(per_doc))
    assert (s.high - s.low) / 2 == pytest.approx(1.96 * se, rel=0.15)
    const = bootstrap(np.full((5, 3), 7.0))["rouge2"]
    assert (const.mean, const.low, const.high) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        bootstrap(np.zeros((0, 3)))


def test_select_top_k_with_trigram_blocking():
    sents = ["the cat sat on the mat", "a dog saw the cat sat down", "birds fly", "fish swim"]
    scores = [0.9, 0.8, 0.1, 0.5]
    assert select_top_k(scores, sents, k=3, trigram_blocking=False) == [0, 1, 3]
    # Sentence 1 shares "the cat sat" with sentence 0: blocked, the next ones are taken.
    assert select_top_k(scores, sents, k=3) == [0, 2, 3]
    assert select_top_k([0.1], ["only one"], k=3) == [0]


def test_select_top_k_within_a_word_budget():
    sents = [" ".join(["a"] * 10), " ".join(["b"] * 30), " ".join(["c"] * 5), "d d"]
    scores = [0.9, 0.8, 0.7, 0.1]
    # 10 words, then 30 do not fit in 20 and are passed over, 5 and 2 do
    assert select_top_k(scores, sents, k=4, max_words=20) == [0, 2, 3]
    assert select_top_k(scores, sents, k=2, max_words=20) == [0, 2]
    # the first pick stays whatever its length; nothing else fits in 5 words
    assert select_top_k(scores, sents, k=4, max_words=5) == [0]
    assert select_top_k(scores, sents, k=4, max_words=None) == [0, 1, 2, 3]


def test_evaluate_command_on_embedded_test(tmp_path):
    assert main(["evaluate", "--system", "lead3,oracle", "--out", str(tmp_path)]) == 0
    lead = json.loads((tmp_path / "lead3.scores.json").read_text())
    oracle = json.loads((tmp_path / "oracle.scores.json").read_text())
    # Measured independently of this code when the embedded corpus was chosen:
    # 40.72/14.84/34.89 and 52.71/28.17/46.31.
    for got, want in ((lead, (40.72, 14.84, 34.89)), (oracle, (52.71, 28.17, 46.31))):
        assert got["documents"] == 100
        for m, w in zip(("rouge1", "rouge2", "rougeLsum"), want, strict=True):
            assert got[m]["mean"] == pytest.approx(w, abs=0.5)
            assert got[m]["low"] < got[m]["mean"] < got[m]["high"]
    lines = (tmp_path / "lead3.predictions.jsonl").read_text().splitlines()
    assert len(lines) == 100
    first = json.loads(lines[0])
    assert first["selected"] == [0, 1, 2] and len(first["summary"]) == 3


def test_user_mistakes_give_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article": "x"\n')
    for args, msg in ((["--dataset", str(bad)], "bad.jsonl:1: malformed JSON"),
                      (["--system", "best"], "unknown system 'best'"),
                      (["--dataset", str(tmp_path / "none")], "unknown dataset")):
        r = subprocess.run([sys.executable, "-m", "attnsum", "evaluate", *args,
                            "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr
