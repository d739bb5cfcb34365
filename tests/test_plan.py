"""Head plans: presets, text form, JSON, validation."""

import pytest

from attnsum.attention.patterns import PatternError
from attnsum.attention.plan import HeadPlan, HeadSpec


def test_paper_preset_groups_of_four():
    plan = HeadPlan.parse("paper", 6, 12)
    for layer in range(6):
        row = plan.layer(layer)
        assert [str(s) for s in row[:4]] == ["match/mask", "sent/mask", "next/synth", "prev/synth"]
        assert row[:4] == row[4:8] == row[8:12]


def test_none_and_text_form():
    assert HeadPlan.parse("none", 2, 3).is_learned
    plan = HeadPlan.parse("*:0=match/mask; 1:1-2=sent/synth; 0:2=offset:2/mask", 2, 3)
    assert [str(s) if s else None for s in plan.layer(0)] == ["match/mask", None, "offset:2/mask"]
    assert [str(s) if s else None for s in plan.layer(1)] == ["match/mask", "sent/synth",
                                                             "sent/synth"]
    # The compact form round-trips, and so does JSON.
    assert HeadPlan.parse(str(plan), 2, 3) == plan
    assert HeadPlan.from_json(plan.to_json()) == plan
    assert HeadPlan.parse(plan.to_json(), 2, 3) == plan


def test_from_assignments():
    plan = HeadPlan.from_assignments(2, 4, {(1, 3): ("prev", "synth")})
    assert plan.layer(1)[3] == HeadSpec("prev", "synth")
    assert sum(s is not None for row in plan.heads for s in row) == 1


@pytest.mark.parametrize("text, msg", [
    ("*:12=match/mask", "head index 12 is out of range"),
    ("6:0=match/mask", "layer index 6 is out of range"),
    ("*:0=diagonal/mask", "unknown pattern 'diagonal'"),
    ("*:0=match/soft", "unknown mode 'soft'"),
    ("*:0 match", "bad plan item"),
    ("*:a=match/mask", "bad head list"),
    ('{"num_layers": 2', "bad plan JSON"),
])
def test_validation_errors(text, msg):
    with pytest.raises(PatternError, match=msg):
        HeadPlan.parse(text, 6, 12)


def test_json_for_another_model_is_rejected():
    plan = HeadPlan.parse("paper", 2, 4)
    with pytest.raises(PatternError, match="2 layers x 4 heads"):
        HeadPlan.from_json(plan.to_json(), 6, 12)
