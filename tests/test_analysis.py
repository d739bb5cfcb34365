"""Head importance, pattern scores, plan suggestion, the HTML report and the pipeline."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from helpers import embedded_examples

from attnsum.analysis import (
    OFFSETS,
    analyze,
    head_importance,
    head_profiles,
    pattern_scores,
    suggest_plan,
)
from attnsum.attention.plan import HeadPlan
from attnsum.checkpoints import read_config, save_model
from attnsum.cli import main
from attnsum.errors import InputError
from attnsum.model import SummarizerModel, model_config


@pytest.fixture(scope="module")
def examples():
    return embedded_examples("val", limit=6, max_len=256)


def _tiny(plan="none"):
    torch.manual_seed(0)
    return SummarizerModel(model_config("tiny", plan))


@pytest.mark.parametrize("method", ["taylor", "gate"])
def test_an_irrelevant_head_ranks_last(examples, method):
    model = _tiny()
    d = model.cfg.hidden // model.cfg.heads
    with torch.no_grad():  # head 2 of layer 1 no longer reaches the output
        model.encoder.encoder.layer[1].attention.output.dense.weight[:, 2 * d:3 * d] = 0
    imp = head_importance(model, examples, method)
    assert imp.shape == (2, 4)
    assert imp[1, 2] == imp.min() and imp[1, 2] < 1e-6 * imp.max()
    assert np.isclose(imp.sum(), 1.0)


def test_a_hard_wired_head_scores_one_with_the_right_chance_level(examples):
    model = _tiny("0:1=sent/mask; 1:3=next/synth")
    ps = pattern_scores(model, examples)
    sent, nxt = ps.patterns.index("sent"), ps.patterns.index("next")
    assert ps.score[0, 1, sent] == pytest.approx(1.0, abs=1e-5)
    assert ps.score[1, 3, nxt] == pytest.approx(1.0, abs=1e-5)
    assert ps.score[0, 0, sent] < 0.9  # a learned head does not follow it exactly
    # Chance of "sent": a uniform row puts (sentence length / document length) on its sentence.
    rows = [(e - s) / len(ex.input_ids) for ex in examples for s, e in ex.spans for _ in range(e - s)]
    assert ps.chance[sent] == pytest.approx(np.mean(rows), rel=1e-6)
    # Chance of "next": one key of n, on every row but the last (which has no next token).
    rows = [1 / len(ex.input_ids) for ex in examples for _ in range(len(ex.input_ids) - 1)]
    assert ps.chance[nxt] == pytest.approx(np.mean(rows), rel=1e-6)
    plan = suggest_plan(head_importance(model, examples), ps)
    assert str(plan.layer(0)[1]) == "sent/mask" and str(plan.layer(1)[3]) == "next/synth"


def test_head_profiles_of_hard_wired_heads(examples):
    model = _tiny("0:1=sent/mask; 1:3=prev/synth")
    prof = head_profiles(model, examples)
    ids = [ex.input_ids for ex in examples]
    rows = sum(map(len, ids))
    has_prev = (rows - len(ids)) / rows  # every token but the first of each document
    assert prof["offsets"][1, 3, OFFSETS - 1] == pytest.approx(has_prev, rel=1e-5)
    assert prof["offsets"][1, 3].sum() + prof["far"][1, 3] == pytest.approx(has_prev, rel=1e-5)
    assert prof["entropy"][1, 3] == pytest.approx(0.0, abs=1e-5)  # one key per row
    after_cls = sum(t == 101 for doc in ids for t in doc[:-1]) / rows
    assert prof["[CLS]"][1, 3] == pytest.approx(after_cls, rel=1e-5)
    assert prof["same sentence"][0, 1] == pytest.approx(1.0, rel=1e-5)
    # a learned head's rows sum to one over the offset bins and the rest
    assert prof["offsets"][0, 0].sum() + prof["far"][0, 0] == pytest.approx(1.0, rel=1e-5)
    assert 0 < prof["entropy"][0, 0] <= np.log(max(map(len, ids)))


def test_report_structure_and_plan_round_trip(tmp_path, examples):
    model = _tiny("0:1=sent/mask; 1:3=prev/synth")
    save_model(model, tmp_path / "ckpt")
    assert main(["analyze", "--checkpoint", str(tmp_path / "ckpt"), "--limit", "4",
                 "--max-len", "96", "--out", str(tmp_path / "rep")]) == 0
    result = json.loads((tmp_path / "rep" / "analysis.json").read_text())
    plan = HeadPlan.from_dict(result["plan"])
    assert str(plan.layer(1)[3]) == "prev/synth"
    # The suggested plan goes straight into `attnsum train --plan`.
    assert main(["train", "--preset", "tiny", "--plan", str(tmp_path / "rep" / "plan.json"),
                 "--steps", "2", "--limit", "4", "--max-len", "96", "--val-every", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert read_config(tmp_path / "run" / "last").plan == plan

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.tables, self.external, self.canvases = set(), 0, [], 0
            self.script_json = None
            self._in_json = False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.ids.add(a.get("id"))
            self.tables += tag == "table"
            self.canvases += tag == "canvas"
            for key in ("src", "href"):
                if a.get(key):
                    self.external.append(a[key])
            self._in_json = tag == "script" and a.get("type") == "application/json"

        def handle_data(self, data):
            if self._in_json:
                self.script_json = json.loads(data)
                self._in_json = False

    html = (tmp_path / "rep" / "report.html").read_text()
    c = Collect()
    c.feed(html)
    assert {"importance", "patterns", "plan", "profiles", "heatmaps", "doc0", "plan-text",
            "download-plan", "reset-plan", "choice", "plan-cost", "analysis"} <= c.ids
    assert result["patterns"][:5] == ["match-self", "sent", "next", "prev", "sent-cls"]
    # two importance grids, a grid per pattern, the editor's grid and cost table, the profiles
    assert c.tables == 2 + len(result["patterns"]) + 3
    assert c.external == []  # self-contained: no script, style or link fetched
    assert c.canvases == len(c.script_json) >= 1
    first = c.script_json[0]
    assert len(first["heads"]) == 4 and len(first["tokens"]) == len(first["heads"][0]["attn"])
    for name in ("importance.csv", "pattern_scores.csv", "plan.json"):
        assert (tmp_path / "rep" / name).is_file()


def test_analysis_bad_input(tmp_path, examples):
    model = _tiny()
    with pytest.raises(InputError, match="empty"):
        analyze(model, [], tmp_path / "x")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write the report folder"):
        analyze(model, examples, blocker / "sub")


def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    from attnsum.experiment import Settings
    from attnsum.pipeline import run_pipeline

    s = Settings(max_len=64, teacher_steps=2, student_steps=2, batch_size=2, accum=1,
                 teacher_lr=5e-5, student_lr=5e-4, student_optimizer="adamw", warmup=1,
                 val_every=2, student="student-mini")
    text = run_pipeline(tmp_path / "p", limit=4, settings=s)
    for row in ("lead3", "oracle", "teacher", "teacher+patterns", "student", "student+patterns"):
        assert f"| {row} |" in text
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["speed"]["student"]["docs_per_s"] > 0
    assert (tmp_path / "p" / "analysis" / "report.html").is_file()
    capsys.readouterr()
    assert run_pipeline(tmp_path / "p", limit=4, settings=s) == text  # every stage reused
    assert capsys.readouterr().out.count("done earlier, reused") == 8


def test_analysis_reports_progress_pass_by_pass(capsys):
    """Each pass of the analysis over the documents has a progress bar counting them (stderr);
    none without `progress`."""
    from helpers import embedded_examples

    from attnsum.analysis import head_importance, pattern_scores
    from attnsum.model import SummarizerModel, model_config

    model = SummarizerModel(model_config("tiny"), load_pretrained=False)
    examples = embedded_examples("val", limit=5, max_len=64)
    head_importance(model, examples, "gate", progress=True)
    pattern_scores(model, examples, progress=True)
    err = capsys.readouterr().err
    assert "analyze: gate importance" in err and "analyze: pattern scores" in err
    assert "5/5" in err
    head_importance(model, examples, "taylor")
    assert "analyze" not in capsys.readouterr().err
