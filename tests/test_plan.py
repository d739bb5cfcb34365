"""Head plans: presets, text form, JSON, validation."""

import pytest

from attnsum.attention.patterns import PatternError
from attnsum.attention.plan import HeadPlan, HeadSpec
from attnsum.checkpoints import read_plan_file, write_plan_file
from attnsum.config import ModelConfig


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
    # The compact form round-trips, and so does the data form.
    assert HeadPlan.parse(str(plan), 2, 3) == plan
    assert HeadPlan.from_dict(plan.to_dict()) == plan


def test_text_form_names_presets():
    assert str(HeadPlan.parse("paper", 3, 12)) == "paper"
    assert str(HeadPlan.parse("none", 3, 12)) == "none"
    one_off = HeadPlan.parse("*:0,4,8=match/mask", 3, 12)  # part of the paper plan
    assert str(one_off) != "paper" and HeadPlan.parse(str(one_off), 3, 12) == one_off


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
])
def test_validation_errors(text, msg):
    with pytest.raises(PatternError, match=msg):
        HeadPlan.parse(text, 6, 12)


def test_plan_for_another_model_is_rejected(tmp_path):
    plan = HeadPlan.parse("paper", 2, 4)
    with pytest.raises(PatternError, match="2 layers x 4 heads"):
        HeadPlan.from_dict(plan.to_dict(), 6, 12)
    write_plan_file(plan, tmp_path / "plan.json")
    assert read_plan_file(tmp_path / "plan.json") == plan
    with pytest.raises(PatternError, match="the plan is for 2 layers x 4 heads"):
        ModelConfig.from_preset("minilm", read_plan_file(tmp_path / "plan.json"))


@pytest.mark.parametrize("text, msg", [('{"num_layers": 2', "bad JSON"),
                                       ('{"heads": []}', "bad plan")])
def test_bad_plan_files(tmp_path, text, msg):
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(PatternError, match=f"plan file .*plan.json: {msg}"):
        read_plan_file(tmp_path / "plan.json")
