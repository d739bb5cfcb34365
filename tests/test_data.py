"""Corpora, loaders on small files, bad inputs, and the sentence splitter on real text."""

import gzip
import json

import pytest

from attnsum.data import DataError, Fields, format_skips, load_corpus
from attnsum.sentences import split_sentences


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


RECORDS = [
    {"id": "a", "article": "Mr. Brown went to Washington. He met the U.S. president.",
     "highlights": "Brown met the president.\nIt was brief."},
    {"id": "b", "article": ["First sentence .", "Second sentence ."], "highlights": ["One ."]},
]


def test_embedded_splits_are_real_documents():
    sizes = {s: len(load_corpus("embedded", s).documents) for s in ("train", "val", "test")}
    assert sizes == {"train": 100, "val": 50, "test": 100}
    doc = load_corpus("embedded", "test").documents[0]
    assert len(doc.reference) == 3  # challenge, approach, outcome
    assert len(doc.sentences) > 10


def test_jsonl_raw_text_and_presplit(tmp_path):
    corpus = load_corpus(str(_write_jsonl(tmp_path / "d.jsonl", RECORDS)), "test")
    a, b = corpus.documents
    assert a.id == "a" and a.sentences == ["Mr. Brown went to Washington.",
                                           "He met the U.S. president."]
    assert a.reference == ["Brown met the president.", "It was brief."]
    assert b.sentences == ["First sentence .", "Second sentence ."] and b.reference == ["One ."]


def test_gzip_parquet_and_folder_with_splits(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    with gzip.open(folder / "train.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(RECORDS[0]) + "\n")
    recs = [{"doc": "x", "text": "One sentence here. Another one there.", "summ": "Here."}]
    pq.write_table(pa.Table.from_pylist(recs), folder / "test.parquet")
    train = load_corpus(str(folder), "train")
    assert [d.id for d in train.documents] == ["a"]
    test = load_corpus(str(folder), "test", fields=Fields("text", "summ", "doc"))
    assert test.documents[0].id == "x" and len(test.documents[0].sentences) == 2
    # A file named exactly after the split wins over its variants (the shared CNN/DM folder has
    # train.jsonl.gz beside train-original-cnn-1859.jsonl.gz); dash-numbered shards still count.
    _write_jsonl(folder / "train-original.jsonl", [dict(RECORDS[1], id="variant")])
    assert [d.id for d in load_corpus(str(folder), "train").documents] == ["a"]
    _write_jsonl(folder / "val-00000.jsonl", [RECORDS[0]])
    _write_jsonl(folder / "val-00001.jsonl", [RECORDS[1]])
    assert [d.id for d in load_corpus(str(folder), "val").documents] == ["a", "b"]


def test_empty_documents_are_skipped_and_counted(tmp_path):
    recs = RECORDS + [{"id": "e", "article": "", "highlights": "x."},
                      {"id": "f", "article": "Text here.", "highlights": "  "}]
    corpus = load_corpus(str(_write_jsonl(tmp_path / "d.jsonl", recs)), "test")
    assert [d.id for d in corpus.documents] == ["a", "b"]
    assert corpus.skipped == {"empty article": 1, "empty reference": 1}
    assert format_skips(corpus.skipped) == "skipped 2 document(s): 1 empty article, 1 empty reference"


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(RECORDS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        load_corpus(str(p), "test")


def test_missing_field_names_file_line_and_fields(tmp_path):
    p = _write_jsonl(tmp_path / "m.jsonl", [{"id": "x", "text": "a"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: missing field 'article'.*text"):
        load_corpus(str(p), "test")


def test_wrong_type_field(tmp_path):
    p = _write_jsonl(tmp_path / "w.jsonl", [{"article": 3, "highlights": "x"}])
    with pytest.raises(DataError, match=r"w\.jsonl:1: field 'article' must be"):
        load_corpus(str(p), "test")


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n" + b'{"article": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_corpus(str(p), "test")


def test_unknown_dataset_split_and_type(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_corpus("no-such-corpus", "test")
    with pytest.raises(DataError, match="unknown split"):
        load_corpus("embedded", "dev2")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_corpus(str(tmp_path / "x.csv"), "test")


def test_cnn_dailymail_offline_gives_a_clear_error(monkeypatch):
    import attnsum.data as data

    monkeypatch.setattr(data, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(DataError, match="--dataset embedded"):
        load_corpus("cnn_dailymail", "test", limit=1)


# Real news sentences (CNN), each with a trap for a naive splitter.
REAL_TEXT = (
    'The U.S. Supreme Court ruled 5-4 on Friday. Mr. Obama called it "a victory for America." '
    "Shares rose 2.5 percent to $41.80 by 4 p.m. in New York. "
    "\"Is this the end?\" she asked. Nobody answered."
)


def test_splitter_on_real_sentences():
    assert split_sentences(REAL_TEXT) == [
        "The U.S. Supreme Court ruled 5-4 on Friday.",
        'Mr. Obama called it "a victory for America."',
        "Shares rose 2.5 percent to $41.80 by 4 p.m. in New York.",
        '"Is this the end?" she asked.',
        "Nobody answered.",
    ]


def test_splitter_on_tokenized_news():
    # CNN/DailyMail's pointer-generator form: lowercased, punctuation split off, quotes as ".
    text = ('( cnn ) the u.s. army said it had 2.5 million troops . " we are ready . " '
            'he asked : " why now ? " nobody knew !')
    assert split_sentences(text) == [
        "( cnn ) the u.s. army said it had 2.5 million troops .",
        '" we are ready . "',
        'he asked : " why now ? "',
        "nobody knew !",
    ]


def test_shared_cnndm_original_text(cnndm_dir):
    corpus = load_corpus(str(cnndm_dir / "val-original-1000.jsonl.gz"), "validation", limit=50)
    assert len(corpus.documents) == 50
    lens = [len(d.sentences) for d in corpus.documents]
    assert sum(lens) / len(lens) > 10  # news articles hold tens of sentences
    for d in corpus.documents:
        assert 1 <= len(d.reference) <= 10  # highlights: one sentence a line
        assert all(len(s) < 2000 for s in d.sentences)  # no runaway unsplit sentence


def test_shared_cnndm_tokenized(cnndm_dir):
    corpus = load_corpus(str(cnndm_dir / "val.jsonl.gz"), "validation", limit=20)
    for d in corpus.documents:
        assert len(d.sentences) > 5
        assert sum(s.endswith((".", "?", "!", "'", '"', ")")) for s in d.sentences) > len(
            d.sentences) // 2


def test_splitter_is_right_on_many_threads():
    """The service splits documents on several threads at once: each thread gets the same
    sentences as a lone caller (the splitter keeps no state between calls)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(0)
    words = "the markets in the U.S. rose 3.5 percent as Mr. Smith said on Friday".split()
    docs = [" ".join(" ".join(rng.choice(words) for _ in range(8)).capitalize()
                     + f" in story {d}, part {i}." for i in range(5)) for d in range(64)]
    alone = [split_sentences(d) for d in docs]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(split_sentences, docs * 5))
    assert together == alone * 5


def test_splitter_on_the_faults_of_raw_news():
    """What raw CNN text does to a naive splitter: the dateline glued to the first word, e-mail
    addresses and URLs, a closing quote after the mark, titles, initials, list numbers."""
    text = ('WASHINGTON (CNN) -- The U.S. Senate met Sen. John Smith at 10 a.m. on Monday. '
            'E-mail him at john.smith@senate.gov. Visit www.senate.gov/news for more. '
            'He said: "We are done." Then he left. J.K. Rowling, George W. Bush and Lt. '
            'Michael Blassie were there. 1. It started with a war. "Why now?" she asked. '
            'Nobody knew!')
    assert split_sentences(text) == [
        "The U.S. Senate met Sen. John Smith at 10 a.m. on Monday.",
        "E-mail him at john.smith@senate.gov.",
        "Visit www.senate.gov/news for more.",
        'He said: "We are done."',
        "Then he left.",
        "J.K. Rowling, George W. Bush and Lt. Michael Blassie were there.",
        "1. It started with a war.",
        '"Why now?" she asked.',
        "Nobody knew!",
    ]
    assert split_sentences("(CNN)Share, and your gift will be multiplied. It was.")[0] == (
        "Share, and your gift will be multiplied.")
    daily = ("By . Daily Mail Reporter . PUBLISHED: . 12:21 EST, 3 March 2013 . | . UPDATED: . "
             "13:05 EST, 3 March 2013 . A man was arrested on Sunday. Police said so.")
    assert split_sentences(daily) == ["A man was arrested on Sunday.", "Police said so."]


def test_splitting_time_grows_linearly_with_length():
    """Punctuation-dense text (pysbd's worst case: 45 s at 100k characters) takes about ten
    times as long at ten times the length, never a second at the service's 100k limit."""
    import time

    def seconds(n):
        text = "Hi?! " * (n // 5)
        t0 = time.perf_counter()
        split_sentences(text)
        return time.perf_counter() - t0

    small, large = min(seconds(10_000) for _ in range(3)), min(seconds(100_000) for _ in range(3))
    assert large < 1.0 and large < 30 * small  # linear: ~10x; quadratic would be ~100x


def test_news_boilerplate_is_never_a_candidate():
    """Page furniture stays in the split (indices name the document's sentences) but is never
    a candidate, in raw and in tokenized form; the story's sentences are."""
    from attnsum.preprocess import PreprocessConfig, filter_sentences

    story = ["Police said the man was arrested on Tuesday near the border crossing.",
             "He faces charges of fraud and money laundering in two states."]
    furniture = ["Scroll down for video.", "Click here to access the transcript of today's show.",
                 "E-mail to a friend", "Copyright 2015 The Associated Press.", "All rights reserved.",
                 "The opinions expressed in this commentary are solely those of Jane Doe.",
                 "CNN's John Smith and Ann Lee contributed to this report.",
                 "click here for all the latest arsenal news .", "scroll down for video ."]
    text = "\n".join([story[0], *furniture[:5], story[1], *furniture[5:]])
    sentences = split_sentences(text)
    assert len(sentences) == len(story) + len(furniture)
    kept = filter_sentences(sentences, PreprocessConfig())
    assert [s for _, s in kept] == story
    assert [i for i, _ in kept] == [0, 6]


def test_shared_cnndm_boilerplate(cnndm_dir):
    """On real raw articles: sentences holding the furniture's phrases (plain substrings, not
    the splitter's rule) are never candidates, and the CNN stories' own highlights (what a
    summary should read like) are almost never taken for furniture."""
    from attnsum.preprocess import PreprocessConfig, filter_sentences
    from attnsum.sentences import is_boilerplate

    phrases = ("click here", "scroll down for video", "e-mail to a friend", "all rights reserved",
               "contributed to this report", "the opinions expressed in this commentary")
    corpus = load_corpus(str(cnndm_dir / "val-original-1000.jsonl.gz"), "validation", limit=400)
    seen = 0
    for d in corpus.documents:
        kept = {s for _, s in filter_sentences(d.sentences, PreprocessConfig(max_sentence_words=10**6))}
        for s in d.sentences:
            if any(p in s.lower() for p in phrases):
                seen += 1
                assert s not in kept, s
    assert seen >= 50
    highlights = [h for d in corpus.documents for h in d.reference]
    assert sum(map(is_boilerplate, highlights)) <= 0.01 * len(highlights)
