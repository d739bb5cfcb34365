"""BERTSum preprocessing invariants on the real vocabulary."""

import pytest

from attnsum.data import Corpus, Document
from attnsum.preprocess import (
    PreprocessConfig,
    filter_sentences,
    load_tokenizer,
    prepare,
    sentence_pieces,
    wordpiece_form,
)

SENTS = [
    "The first sentence of the article has enough words in it .",
    "Short one .",  # 3 words: dropped
    "A second long sentence follows the first one in this test document .",
    "The third sentence is here to be cut off by a tight length limit .",
]


def test_vocabulary_is_bert_base_uncased():
    tok = load_tokenizer()
    assert len(tok) == 30522
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]) == [0, 100, 101, 102]
    assert tok.tokenize("Hello World") == ["hello", "world"]  # uncased


def _prepare(sents, max_len=512, reference=("the first sentence has words",)):
    corpus = Corpus("t", "test", [Document("d", list(sents), list(reference))])
    return prepare(corpus, PreprocessConfig(max_len=max_len), use_cache=False)


def test_layout_segments_spans_and_cls():
    tok = load_tokenizer()
    ex = _prepare(SENTS).examples[0]
    assert ex.sentences == [SENTS[0], SENTS[2], SENTS[3]]
    assert len(ex.input_ids) == len(ex.segment_ids)
    assert ex.spans[0][0] == 0 and ex.spans[-1][1] == len(ex.input_ids)
    for i, (start, end) in enumerate(ex.spans):
        assert ex.cls_positions[i] == start
        assert ex.input_ids[start] == tok.cls_token_id and ex.input_ids[end - 1] == tok.sep_token_id
        assert set(ex.segment_ids[start:end]) == {i % 2}  # interval segments alternate
        if i:
            assert ex.spans[i - 1][1] == start  # spans tile the input
        body = tok.decode(ex.input_ids[start + 1:end - 1])
        assert body == tok.decode(tok(ex.sentences[i], add_special_tokens=False)["input_ids"])
    assert len(ex.labels) == len(ex.spans)
    assert ex.labels[0] == 1  # the oracle picks the sentence that matches the reference


def test_truncation_at_a_sentence_boundary():
    full = _prepare(SENTS).examples[0]
    cut_at = full.spans[1][1] + 3  # room for two sentences and a bit of the third
    ex = _prepare(SENTS, max_len=cut_at).examples[0]
    assert len(ex.spans) == 2 and len(ex.input_ids) == full.spans[1][1]
    assert ex.input_ids == full.input_ids[:full.spans[1][1]]
    assert len(ex.all_sentences) == 3  # the oracle saw every kept sentence


def test_overlong_first_sentence_is_cut_to_fit():
    ex = _prepare([" ".join(["word"] * 50)], max_len=16).examples[0]
    assert len(ex.input_ids) == 16 and len(ex.spans) == 1


def test_filters():
    cfg = PreprocessConfig()
    long = " ".join(f"w{i}" for i in range(300))
    kept = filter_sentences(["a b c d e", "a b c d e f", long] + ["x y z u v w"] * 200, cfg)
    assert kept[0] == (1, "a b c d e f")  # 5 words dropped, 6 kept
    assert kept[1][0] == 2 and len(kept[1][1].split()) == 200  # capped
    assert len(kept) == 99  # at most 100 sentences considered, one of them dropped


def test_document_without_usable_sentence_is_skipped_and_counted():
    prepared = _prepare(["too short .", "also short ."])
    assert prepared.examples == []
    assert sum(prepared.skipped.values()) == 1


def test_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSUM_CACHE", str(tmp_path))
    corpus = Corpus("t", "test", [Document("d", SENTS, ["the first sentence"])])
    first = prepare(corpus)
    files = list((tmp_path / "preprocessed").iterdir())
    assert len(files) == 1
    second = prepare(corpus)
    assert second.examples == first.examples
    prepare(corpus, PreprocessConfig(max_len=64))  # another setting, another entry
    assert len(list((tmp_path / "preprocessed").iterdir())) == 2


def test_bad_config():
    with pytest.raises(ValueError, match="max_len"):
        PreprocessConfig(max_len=2)


def test_raw_text_reads_as_the_training_text():
    """A raw sentence gets the word pieces of its form in the tokenized training data (negations
    split off, with either apostrophe), and text already in that form is left as it is."""
    tok = load_tokenizer()
    raw = "He didn\u2019t say \"we can't\"; it cannot wait and won't."
    tokenized = "he did n\u2019t say \" we ca n't \" ; it can not wait and wo n't ."
    want = tok(tokenized, add_special_tokens=False)["input_ids"]
    assert tok(raw, add_special_tokens=False)["input_ids"] != want  # what the fix is for
    assert sentence_pieces(tok, [raw]) == [want]
    assert wordpiece_form(tokenized) == tokenized
    assert wordpiece_form("The cannon's nation ran") == "The cannon's nation ran"
    ex = _prepare([raw + " Then more words came"]).examples[0]
    assert ex.sentences == [raw + " Then more words came"]  # the text itself is kept as sent
