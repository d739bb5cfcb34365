"""Each pattern against a hand-drawn example; range tables against the predicates; user
pattern files."""

from pathlib import Path

import pytest
import torch
from helpers import CLS_ID

from attnsum.attention.patterns import (
    Pattern,
    PatternContext,
    PatternError,
    and_masks,
    dense_mask,
    or_masks,
)
from attnsum.attention.registry import get_pattern, load_pattern_file, register_pattern


def _ctx(tokens, spans, n_valid=None):
    ids = torch.tensor([tokens])
    am = torch.ones_like(ids)
    if n_valid is not None:
        am[0, n_valid:] = 0
    return PatternContext.from_spans(ids, am, [spans])


def _dense(name, ctx):
    B, N = ctx.shape
    return dense_mask(get_pattern(name).mask_mod(ctx), B, N)[0].int().tolist()


def _dense_from_ranges(name, ctx):
    """Expand a range table into a dense mask with plain loops (independent of the pattern)."""
    r = ctx.ranges(get_pattern(name))
    B, N = ctx.shape
    out = [[0] * N for _ in range(N)]
    perm = r.perm[0].tolist() if r.perm is not None else list(range(N))
    for p in range(N):
        for t in range(int(r.lo[0, p]), int(r.hi[0, p])):
            if t == p and bool(r.exclude_self[0, p]):
                continue
            out[perm[p]][perm[t]] = 1
    return out


# Tokens: 7 a b a c 8 | 7 c d 8 | pad pad  (7 = [CLS], 8 = [SEP]; two sentences, two pads)
TOKENS = [7, 1, 2, 1, 3, 8, 7, 3, 4, 8, 0, 0]
SPANS = [(0, 6), (6, 10)]


def test_matching_token_hand_drawn():
    ctx = _ctx(TOKENS, SPANS, n_valid=10)
    X = 1
    full = [1] * 10 + [0, 0]
    want = [
        [0, 0, 0, 0, 0, 0, X, 0, 0, 0, 0, 0],  # [CLS] <-> the other [CLS]
        [0, 0, 0, X, 0, 0, 0, 0, 0, 0, 0, 0],  # a -> a
        full,                                   # b: no match -> full (self included)
        [0, X, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # a -> a
        [0, 0, 0, 0, 0, 0, 0, X, 0, 0, 0, 0],  # c -> c
        [0, 0, 0, 0, 0, 0, 0, 0, 0, X, 0, 0],  # [SEP] -> [SEP]
        [X, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, X, 0, 0, 0, 0, 0, 0, 0],
        full,                                   # d: no match
        [0, 0, 0, 0, 0, X, 0, 0, 0, 0, 0, 0],
        [0] * 12, [0] * 12,                     # padding queries attend nothing
    ]
    assert _dense("match", ctx) == want
    assert _dense_from_ranges("match", ctx) == want
    want_self = [row[:] for row in want]
    want_self[2] = [0, 0, X] + [0] * 9
    want_self[8] = [0] * 8 + [X] + [0] * 3
    assert _dense("match-self", ctx) == want_self
    assert _dense_from_ranges("match-self", ctx) == want_self


def test_intra_sentence_hand_drawn():
    ctx = _ctx(TOKENS, SPANS, n_valid=10)
    s1 = [1] * 6 + [0] * 6
    s2 = [0] * 6 + [1] * 4 + [0] * 2
    want = [s1] * 6 + [s2] * 4 + [[0] * 12] * 2
    assert _dense("sent", ctx) == want
    assert _dense_from_ranges("sent", ctx) == want


def test_next_and_previous_hand_drawn():
    ctx = _ctx([7, 1, 2, 8, 0], [(0, 4)], n_valid=4)
    nxt = [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0] * 5, [0] * 5]
    prev = [[0] * 5, [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0] * 5]
    assert _dense("next", ctx) == nxt == _dense_from_ranges("next", ctx)
    assert _dense("prev", ctx) == prev == _dense_from_ranges("prev", ctx)
    two = _dense("offset:-2", ctx)
    assert two[2][0] == 1 and two[3][1] == 1 and sum(map(sum, two)) == 2


def test_window_and_sentence_cls_hand_drawn():
    ctx = _ctx([7, 1, 7, 8, 0], [(0, 2), (2, 4)], n_valid=4)
    window = [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0] * 5]
    assert _dense("window:1", ctx) == window == _dense_from_ranges("window:1", ctx)
    own_cls = [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0] * 5]
    assert _dense("sent-cls", ctx) == own_cls == _dense_from_ranges("sent-cls", ctx)
    with pytest.raises(PatternError, match="at least 1"):
        get_pattern("window:0")
    gap = PatternContext(torch.tensor([[7, 1, 2]]), torch.tensor([[True, False, True]]),
                         torch.tensor([[0, -1, 0]]))
    with pytest.raises(PatternError, match="padding at the end"):
        gap.ranges(get_pattern("window:1"))


@pytest.mark.parametrize("n", [1, 17, 113])
@pytest.mark.parametrize("name", ["match", "match-self", "sent", "next", "prev", "offset:3",
                                  "window:2", "sent-cls"])
def test_ranges_equal_predicates_on_random_batches(name, n):
    g = torch.Generator().manual_seed(n)
    B = 3
    ids = torch.randint(0, 6, (B, n), generator=g)
    am = torch.ones_like(ids)
    am[1, max(1, n // 2):] = 0  # padding
    spans = []
    for b in range(B):
        length = int(am[b].sum())
        cuts = sorted({0, length, *torch.randint(1, max(2, length), (3,), generator=g).tolist()})
        cuts = [c for c in cuts if c <= length]
        spans.append(list(zip(cuts[:-1], cuts[1:], strict=True)))
    spans[2] = [(0, int(am[2].sum()))]  # a one-sentence document
    ctx = PatternContext.from_spans(ids, am, spans)
    got = dense_mask(get_pattern(name).mask_mod(ctx), B, n)
    r = ctx.ranges(get_pattern(name))
    for b in range(B):
        sub = PatternContext(ids[b:b + 1], am[b:b + 1].bool(), ctx.sentence_ids[b:b + 1])
        assert _dense_from_ranges(name, sub) == got[b].int().tolist()
    assert ctx.ranges(get_pattern(name)) is r  # cached per batch


def test_from_bertsum_matches_spans():
    ids = torch.tensor([[101, 5, 6, 102, 101, 7, 102, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    a = PatternContext.from_bertsum(ids, am, cls_id=CLS_ID)
    b = PatternContext.from_spans(ids, am, [[(0, 4), (4, 7)]])
    assert torch.equal(a.sentence_ids, b.sentence_ids)
    assert a.sentence_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, -1]]


def test_spans_that_do_not_fit_are_errors():
    ids = torch.zeros(1, 5, dtype=torch.long)
    am = torch.tensor([[1, 1, 1, 0, 0]])
    with pytest.raises(PatternError, match="does not fit its 3 tokens"):
        PatternContext.from_spans(ids, am, [[(0, 2), (2, 5)]])
    with pytest.raises(PatternError, match="overlapping"):
        PatternContext.from_spans(ids, am, [[(0, 2), (1, 3)]])
    with pytest.raises(PatternError, match="2 documents"):
        PatternContext.from_spans(ids, am, [[(0, 1)], [(0, 1)]])


def test_unknown_and_bad_patterns():
    with pytest.raises(PatternError, match="unknown pattern 'diag'"):
        get_pattern("diag")
    with pytest.raises(PatternError, match="offset:K"):
        get_pattern("offset:x")
    with pytest.raises(PatternError, match="offset 0"):
        get_pattern("offset:0")


def test_user_pattern_without_ranges_and_combinators():
    def first_token(ctx):
        def to_first(b, h, q, kv):
            return kv == 0

        return to_first

    p = register_pattern(Pattern("to-first", first_token, modes=("mask", "synth")))
    ctx = _ctx([7, 1, 2], [(0, 3)])
    assert _dense("to-first", ctx) == [[1, 0, 0]] * 3
    assert not p.has_ranges
    with pytest.raises(PatternError, match="no range form"):
        ctx.ranges(p)
    # or/and of predicates: previous token or first token, and not self.
    prev = get_pattern("prev").predicate(ctx)
    first = p.predicate(ctx)
    not_self = lambda b, h, q, kv: q != kv
    m = dense_mask(and_masks(or_masks(prev, first), not_self), 1, 3)[0].int().tolist()
    assert m == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]


def _documented_pattern_file() -> str:
    """The user pattern file of docs/commands.md (section "User patterns"), so the example is
    tested."""
    text = (Path(__file__).parents[1] / "docs" / "commands.md").read_text(encoding="utf-8")
    start = text.index("```python\n# mine.py")
    return text[start + len("```python\n"):text.index("```", start + 3)]


USER_FILE = _documented_pattern_file()


def test_pattern_files_register_patterns_and_fail_clearly(tmp_path):
    good = tmp_path / "mine.py"
    good.write_text(USER_FILE)
    assert load_pattern_file(good) == ["parity", "second"]
    ctx = _ctx([7, 1, 2, 8], [(0, 4)])
    assert _dense("parity", ctx) == [[1, 0, 1, 0], [0, 1, 0, 1]] * 2
    assert _dense("second", ctx) == _dense_from_ranges("second", ctx) == [[0, 1, 0, 0]] * 4
    assert get_pattern("parity").modes == ("mask",) and not get_pattern("parity").has_ranges
    cases = {"raises.py": ("raise KeyError('oops')", "raised KeyError"),
             "empty.py": ("x = 1", "registers no pattern"),
             "shadow.py": ("from attnsum.attention import Pattern, register_pattern\n"
                           "register_pattern(Pattern('sent', lambda ctx: None))", "shadows a built-in"),
             "family.py": ("from attnsum.attention import Pattern, register_pattern\n"
                           "register_pattern(Pattern('window:9', lambda ctx: None))", "shadows"),
             "syntax.py": ("def (", "raised SyntaxError"),
             "notes.txt": ("", "no such pattern file")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(PatternError, match=message) as e:
            load_pattern_file(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
