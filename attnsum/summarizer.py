"""Python API for extractive summaries from a trained checkpoint.

    from attnsum import Summarizer
    s = Summarizer.from_pretrained()  # the released news model; or a checkpoint folder
    [summary] = s.summarize(["Text of a news article. ..."], k=3)
    summary.sentences, summary.indices, summary.scores

Documents are split into sentences (`split_sentences`), filtered as in training (sentences of
5 words or fewer are not candidates), and scored in batches grouped by length.

Long documents: the input stops at the last whole sentence that fits ``max_len`` word pieces
(by default the length the checkpoint was trained at, `ModelConfig.input_length`); later
sentences are not candidates. ``max_len`` may go up to the model's position count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .batching import length_batches, sentence_logits
from .checkpoints import load_model
from .cpu_linear import fuse_add_norms, pack_linears
from .errors import InputError
from .evaluate import select_summary
from .model import SummarizerModel
from .precision import DEFAULT_PRECISION, Precision, Runtime
from .preprocess import (
    Example,
    PreprocessConfig,
    build_example,
    filter_sentences,
    load_tokenizer,
    sentence_pieces,
)
from .sentences import split_sentences


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap and keep what is freed, instead of
    mapping each block of 128 KiB or more afresh and unmapping it when freed (its defaults).
    A model's activations are such blocks, freed and asked for again on every call; a fresh
    mapping costs a page fault per 4 KiB on first touch, which made the elementwise ops of a
    batch of 32 documents (GELU, LayerNorm, dtype casts) several times slower than the same ops
    on reused memory (docs/results.md). The process keeps its peak memory instead of returning
    it. Process-wide, once; False where the C library has no `mallopt` (not glibc)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    limit = 2**31 - 1  # the largest int: blocks below it come from the heap, which never shrinks
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


def prepare_for_serving(model: SummarizerModel, device, precision: Precision,
                        backend: str = "auto", pack: bool = True) -> SummarizerModel:
    """The model as it is served (and as bench/bench_students.py times it): on `device`, in eval
    mode, each layer's heads of one pattern made consecutive and the q and k projections that
    synthesized heads ignore cut (attention/hf.py), and the weights of every matrix product
    (the encoder's and the sentence classifier's) cast to the inference precision once, instead
    of by autocast on every call (the same rounding; no per-call copies of the weights); on
    CPU, freed memory kept for reuse (`keep_freed_memory`) and the encoder's products on weights
    packed once, its GELU inside the product, each residual add and LayerNorm one pass of a CPU
    kernel where one is built (attnsum/cpu_linear.py; `pack=False` keeps them `nn.Linear`, for
    a quantizer that replaces those)."""
    cpu = torch.device(device).type == "cpu"
    if cpu:
        keep_freed_memory()
    model.to(device).eval().set_backend(backend)
    model.group_heads()
    model.drop_synth_projections()
    if precision.dtype is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(precision.dtype)
            elif isinstance(m, torch.nn.MultiheadAttention):
                for p in (m.in_proj_weight, m.in_proj_bias):
                    if p is not None:
                        p.data = p.data.to(precision.dtype)
    if cpu and pack:
        pack_linears(model.encoder)
        fuse_add_norms(model.encoder)
    return model


ERRORS = ("raise", "return")  # what `Summarizer.prepare` and `summarize` do with a bad document


@dataclass
class DocumentError:
    """In place of a summary: why the document could not be summarized."""

    error: str

    def to_dict(self) -> dict:
        return {"error": self.error}


@dataclass
class Summary:
    sentences: list[str]  # the chosen sentences, in document order
    indices: list[int]  # their indices among the document's sentences (split_sentences)
    scores: list[float]  # the model's probability for each chosen sentence

    def to_dict(self) -> dict:
        return {"sentences": self.sentences, "indices": self.indices, "scores": self.scores}


_WHITESPACE_CONTROLS = str.maketrans("", "", "\n\t\r")


def check_text(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"a document must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. "\ud800" from a JSON escape
        raise InputError(f"the text is not valid Unicode (character {e.start}: "
                         f"{text[e.start]!r})") from None
    if not text.strip():
        raise InputError("empty document")
    # the common case at C speed: every character printable but line breaks and tabs
    if text.translate(_WHITESPACE_CONTROLS).isprintable():
        return text
    printable = sum(c.isprintable() or c in "\n\t\r" for c in text)
    if printable < 0.9 * len(text):
        raise InputError("the document does not look like text (too many control characters)")
    return text


class Summarizer:
    """A trained extractive summarizer ready for inference on CPU or GPU, in the precision of
    precision.py (``auto``: bf16 autocast where the hardware has it natively)."""

    PAD_TO = 64  # inputs padded to a multiple of this: a service sees a few shapes, not every length

    def __init__(self, model: SummarizerModel, device: torch.device, max_len: int,
                 precision: Precision):
        self.model, self.device, self.precision = model.eval(), device, precision
        self.cfg = PreprocessConfig(max_len=max_len)
        self.tokenizer = load_tokenizer()

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint folder the model was loaded from."""
        return self.model.checkpoint

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | None = None,
                        precision: str = DEFAULT_PRECISION, max_len: int | None = None,
                        backend: str = "auto", download: bool = False) -> Summarizer:
        """Load a checkpoint folder (or a run folder: its best checkpoint, or a Hub repository
        id "owner/name" from the local Hugging Face cache, fetched first with `download`); by
        default the released news model (release.py)."""
        from .checkpoints import hub_checkpoint, hub_id
        from .release import default_checkpoint

        rt = Runtime.resolve(device, precision)  # a mistake in either before the model loads
        if download and folder is not None and hub_id(folder):
            folder = hub_checkpoint(hub_id(folder), download=True)
        model = load_model(default_checkpoint() if folder is None else folder)
        length = model.cfg.input_length(max_len)
        return cls(prepare_for_serving(model, rt.device, rt.precision, backend), rt.device, length,
                   rt.precision)

    def prepare(self, texts: Sequence[str], cancelled: threading.Event | None = None,
                errors: str = "raise") -> list[tuple[Example, list[str], list[int]] | DocumentError]:
        """For each of `texts`: its model input, its sentences, and the indices of the
        candidates. A document that cannot be summarized raises InputError naming it
        (``errors="raise"``) or takes a `DocumentError` in its place (``"return"``). Raises
        TimeoutError between documents once `cancelled` is set (the service's deadline)."""
        if errors not in ERRORS:
            raise InputError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
        split: list[tuple[list[str], list] | DocumentError] = []
        for i, t in enumerate(texts):
            if cancelled is not None and cancelled.is_set():
                raise TimeoutError("preparation cancelled")
            try:
                sentences = split_sentences(check_text(t))
                kept = filter_sentences(sentences, self.cfg)
                if not kept:
                    raise InputError("no sentence longer than 5 words to choose from")
                split.append((sentences, kept))
            except InputError as e:
                if errors == "raise":
                    raise InputError(f"document {i}: {e}") from None
                split.append(DocumentError(str(e)))
        # one tokenizer call for the sentences of every document: 256 raw CNN articles took
        # 0.27 s so against 0.41-0.46 s a document at a time (bench/bench_served.py's documents)
        flat = [s for d in split if not isinstance(d, DocumentError) for _, s in d[1]]
        pieces = iter(sentence_pieces(self.tokenizer, flat))
        prepared = []
        for d in split:
            if isinstance(d, DocumentError):
                prepared.append(d)
                continue
            sentences, kept = d
            chosen = [s for _, s in kept]
            ex = build_example("", chosen, [], [next(pieces) for _ in kept], self.cfg,
                               self.tokenizer.cls_token_id, self.tokenizer.sep_token_id)
            prepared.append((ex, sentences, [i for i, _ in kept[:len(ex.spans)]]))
        return prepared

    @torch.no_grad()
    def score(self, prepared, k: int = 3, trigram_blocking: bool = True, batch_size: int = 16,
              max_words: int | None = None, ratio: float | None = None
              ) -> list[Summary | DocumentError]:
        """Summaries of prepared documents, in their order (batches grouped by length);
        `DocumentError` entries stay in their places. Budgets: `summarize`."""
        if k < 1:
            raise InputError("k must be at least 1")
        if max_words is not None and ratio is not None:
            raise InputError("give max_words or ratio, not both")
        if max_words is not None and max_words < 1:
            raise InputError(f"max_words must be at least 1, got {max_words}")
        if ratio is not None and not 0 < ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {ratio}")
        out: list[Summary | DocumentError | None] = [
            p if isinstance(p, DocumentError) else None for p in prepared]
        docs = [i for i, p in enumerate(prepared) if not isinstance(p, DocumentError)]
        for chunk, batch in length_batches([prepared[i][0] for i in docs], batch_size,
                                           self.PAD_TO, self.cfg.max_len):
            with self.precision.autocast():
                logits = sentence_logits(self.model, batch.to(self.device))
            probs = torch.sigmoid(logits.float()).cpu()
            for row, j in enumerate(chunk):
                i = docs[j]
                ex, sentences, idx = prepared[i]
                scores = probs[row, :len(ex.sentences)].tolist()
                budget = max_words
                if ratio is not None:
                    budget = max(1, round(ratio * sum(len(t.split()) for t in sentences)))
                chosen = select_summary(scores, ex.sentences, k, trigram_blocking, budget,
                                        self.model.selector)
                out[i] = Summary([sentences[idx[c]] for c in chosen], [idx[c] for c in chosen],
                                 [scores[c] for c in chosen])
        return out

    def summarize(self, texts: str | Sequence[str], k: int = 3, trigram_blocking: bool = True,
                  batch_size: int = 16, errors: str = "raise", max_words: int | None = None,
                  ratio: float | None = None) -> list[Summary | DocumentError]:
        """Summaries of `texts` (one string or a list), in input order: at most `k` sentences,
        and with a budget at most `max_words` words, or `ratio` of the document's words (the
        best-scored sentence is kept even when it alone is longer); a model with a candidate
        selector chooses summaries of the default shape (k=3, trigram blocking, no budget) as
        its best pair or triple (candidates.py). A document that cannot be summarized raises
        InputError naming it (``errors="raise"``) or gets a `DocumentError` in its place
        (``"return"``)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.score(self.prepare(texts, errors=errors), k, trigram_blocking, batch_size,
                          max_words, ratio)
