"""Sentence splitting for news, raw or tokenized, in time linear in the text's length.

Raw text (as a user sends it, or CNN/DailyMail's original form): a sentence ends at ``.``, ``?``,
``!`` or ``...`` (with the closing quotes and brackets that follow it) when whitespace and then a
capital letter, a digit or an opening quote or bracket come next, except after an abbreviation
that never ends a sentence ("Mr.", "Gen.", "No. 1") or a list number ("1. It started"); after
one that may ("U.S.", "Jr.", "p.m.", an initial), only when the next word is one that starts
sentences ("The", "He", "But"). Dots inside a word (URLs, e-mail addresses, decimals) are no
candidates at all, so nothing glues sentences together around them. A news dateline at the
start ("(CNN)", "WASHINGTON (CNN) --", "(The Hollywood Reporter)", "By . Daily Mail Reporter .
PUBLISHED: ... UPDATED: ...") is cut off before splitting. Newlines are hard boundaries
(highlights are one sentence a line).

Tokenized lowercased text (CNN/DailyMail's pointer-generator form, ``he said . then``) is split
at its sentence-final tokens.

Boilerplate sentences of news pages ("Click here ...", "Scroll down for video", "E-mail to a
friend", "All rights reserved.", "The opinions expressed in this commentary are solely those of
...", "... contributed to this report.") are kept in the split, so indices still name the
document's sentences, and `is_boilerplate` tells them apart: they are never candidates
(preprocess.filter_sentences, in training and serving alike).

bench/splitters.py compares this splitter with pysbd and others on speed and on boundary
accuracy against a reference segmentation (bench/results/splitters/).
"""

from __future__ import annotations

import re

# Never the end of a sentence when followed by a capital: titles and the like ("Mr. Smith").
TITLES = frozenset("""
mr mrs ms messrs dr prof rev fr sen rep reps gov lt col gen maj sgt capt cpl pvt cmdr adm brig
insp supt det pres hon st mt ft vs v
""".split())
# Not the end before a number ("No. 1", "Jan. 5"); elsewhere as MAY_BE_FINAL ("in Jan. The").
BEFORE_NUMBER = frozenset("no nos vol pp art fig jan feb mar apr jun jul aug sep sept oct nov dec"
                          .split())
# May end a sentence: the end only when the next word starts sentences ("in the U.S. The").
# Initials and dotted letters ("J.", "U.S.", "p.m.") count as these too.
MAY_BE_FINAL = frozenset("jr sr inc ltd co corp bros plc llc etc al esq".split())
STARTERS = frozenset("""
the a an he she it they we i you his her its their our my this that these those there here
but and so yet or if when while after before as at in on for from with by to of since although
though because meanwhile however now then still also instead today yesterday last next some
many most one two three all no not what who why how where which police officials authorities
""".split())

_CANDIDATE = re.compile(r"""(?:\.\.\.|…|[.?!])[.?!]*["'”’)\]]*(?=\s|$)""")
_OPENERS = "\"'“‘(["
_DOTTED_LETTERS = re.compile(r"(?:[a-z]\.)*[a-z]")
_DATELINE = re.compile(
    r"""^\s*(?:[A-Z][A-Za-z.,'’ -]{0,60}\s)?\((?:CNN|[A-Z][\w.&' -]{1,40})\)\s*(?:--\s*|—\s*)?"""
    r"""|^\s*By\s\.\s[^.]{1,100}?\s\.\s(?:\|\s\.\s)?"""
    r"""(?:(?:PUBLISHED|UPDATED|Last updated)\s*:\s*\.\s[^.|]{1,60}?\s\.\s(?:\|\s\.\s)?)*""")
_TOKENIZED_PUNCT = re.compile(r"[A-Za-z]{2,}[.?!,]")
# Page furniture of CNN and Daily Mail articles, raw or tokenized (their most repeated sentences
# across the shared original-text files, tests/test_data.py): matched case-insensitively.
_BOILERPLATE = re.compile(
    r"""\bclick\s+here\b|^\W*(?:scroll\s+down|watch\s+the\s+video|read\s+more\s*:|share\s+this\s+article"""
    r"""|e-?mail\s+to\s+a\s+friend|follow\s+@|follow\s+us\s+on|social\s+media\s*\.?\s*$"""
    r"""|this\s+copy\s+may\s+not\s+be|the\s+opinions\s+expressed\s+in\s+this)"""
    r"""|\ball\s+rights\s+reserved\b|copyright\s+(?:\d{4}|\(c\)|©)|©\s*\d{4}"""
    r"""|\bcontributed\s+to\s+this\s+(?:report|story)\b""", re.IGNORECASE)


def looks_tokenized(text: str) -> bool:
    """True for PTB-style text whose punctuation stands apart (``he said . then``)."""
    tokens = text.split()
    apart = sum(t in (".", "?", "!", ",") for t in tokens)
    attached = sum(bool(_TOKENIZED_PUNCT.fullmatch(t)) for t in tokens)
    return apart > 2 * attached


def strip_dateline(text: str) -> str:
    """`text` without a news dateline at its start ("(CNN)", "LONDON, England (CNN) --",
    "By . Daily Mail Reporter . PUBLISHED: ... | . UPDATED: ... ."); text without one as is."""
    m = _DATELINE.match(text)
    return text[m.end():] if m and m.end() < len(text) else text


def is_boilerplate(sentence: str) -> bool:
    """A sentence of a news page's furniture rather than of its story (module docstring)."""
    return bool(_BOILERPLATE.search(sentence))


def split_sentences(text: str) -> list[str]:
    """Sentences of news text, raw or tokenized (the module's docstring); newlines are hard
    boundaries. The article's dateline is not part of its first sentence."""
    out = []
    for paragraph in text.split("\n"):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if looks_tokenized(paragraph):
            out.extend(_split_tokenized(paragraph))
        else:
            out.extend(_split_raw(strip_dateline(paragraph) if not out else paragraph))
    return out


def _is_boundary(text: str, start: int, end: int) -> bool:
    """Whether the candidate ending at text[start:end] ends a sentence."""
    j = end
    while j < len(text) and text[j].isspace():
        j += 1
    if j == len(text):
        return True
    nxt = text[j]
    if nxt.islower():
        return False
    if not (nxt.isupper() or nxt.isdigit() or nxt in "\"'“‘([" or not nxt.isalnum()):
        return False
    mark = text[start:end]
    if mark[0] in "?!…" or mark.startswith("..."):
        return True
    i = start  # the word before the mark, read backwards: its own length, not the text's
    while i > 0 and not text[i - 1].isspace() and text[i - 1] not in _OPENERS:
        i -= 1
    word = text[i:start].lower()
    if not word:  # a lone period (" . "): CNN/DailyMail's trace of a line break
        return True
    if word in TITLES:
        return False
    if word.isdigit() and len(word) <= 2:  # a list number ("... Cemetery. 1. It started")
        k = i
        while k > 0 and text[k - 1].isspace():
            k -= 1
        if k == 0 or text[k - 1] in ".?!\"'”’)»•":
            return False
    if word in BEFORE_NUMBER and nxt.isdigit():
        return False
    if word in MAY_BE_FINAL or word in BEFORE_NUMBER or _DOTTED_LETTERS.fullmatch(word):
        m = re.match(r"[\"'“‘(\[]*([A-Za-z]+)", text[j:j + 40])
        return bool(m) and m.group(1).lower() in STARTERS
    return True


def _split_raw(text: str) -> list[str]:
    out, begin = [], 0
    for m in _CANDIDATE.finditer(text):
        if _is_boundary(text, m.start(), m.end()):
            sentence = text[begin:m.end()].strip()
            if sentence:
                out.append(sentence)
            begin = m.end()
    rest = text[begin:].strip()
    if rest:
        out.append(rest)
    return out


def _split_tokenized(text: str) -> list[str]:
    """Sentences of tokenized text end at a ``.``/``?``/``!`` token, taking along a closing
    quote or bracket (a ``"`` closes when the sentence has an odd number of them)."""
    out, cur = [], []
    tokens = text.split()
    for i, tok in enumerate(tokens):
        cur.append(tok)
        ends = tok in (".", "?", "!") or (len(cur) > 1 and cur[-2] in (".", "?", "!"))
        if not ends:
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok in (".", "?", "!") and (
                nxt in (")", "'", "''") or (nxt == '"' and cur.count('"') % 2 == 1)):
            continue  # the closing mark belongs to this sentence
        out.append(" ".join(cur))
        cur = []
    if cur:
        out.append(" ".join(cur))
    return out
