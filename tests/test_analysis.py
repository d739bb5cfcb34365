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
    explain_suggestion,
    head_importance,
    head_profiles,
    pattern_scores,
    suggest_plan,
)
from attnsum.attention.plan import HeadPlan
from attnsum.checkpoints import read_config, save_model
from attnsum.cli import main
from attnsum.config import ModelConfig
from attnsum.errors import InputError
from attnsum.model import SummarizerModel
from attnsum.plan_costs import measured_speeds


@pytest.fixture(scope="module")
def examples():
    return embedded_examples("val", limit=6, max_len=256)


def _tiny(plan="none"):
    torch.manual_seed(0)
    return SummarizerModel(ModelConfig.from_preset("tiny", plan))


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
    # The report's reasons: the same heads, each over both thresholds, and the most important
    # of the others in order of importance, each under at least one of them.
    imp = head_importance(model, examples)
    why = explain_suggestion(imp, ps)
    assert [(c["layer"], c["head"], c["pattern"], c["mode"]) for c in why["chosen"]] == [
        (layer, h, s.pattern, s.mode) for layer, row in enumerate(plan.heads)
        for h, s in enumerate(row) if s is not None]
    assert all(c["score"] >= 0.5 and c["lift"] >= 2 for c in why["chosen"])
    left = [(c["layer"], c["head"]) for c in why["important_left"]]
    by_importance = sorted((-imp[layer, h], layer, h) for layer in range(2) for h in range(4)
                            if (layer, h) not in {(0, 1), (1, 3)})
    assert left == [(layer, h) for _, layer, h in by_importance][:5]
    assert all(c["score"] < 0.5 or c["lift"] < 2 for c in why["important_left"])


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
    # the average map: all of the intra-sentence head's mass is in its sentence, and the
    # previous-token head's is there except at each sentence's first token
    assert np.allclose(prof["offsets_same"][0, 1], prof["offsets"][0, 1], atol=1e-6)
    in_sentence = sum(e - s - 1 for ex in examples for s, e in ex.spans) / rows
    assert prof["offsets_same"][1, 3, OFFSETS - 1] == pytest.approx(in_sentence, rel=1e-5)
    assert prof["offsets_same"][1, 3].sum() == pytest.approx(in_sentence, rel=1e-5)
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
    # two importance grids, a grid per pattern, the plan's chosen and left heads, the editor's
    # grid and cost table, the profiles, the average map
    assert c.tables == 2 + len(result["patterns"]) + 6
    assert "results" not in c.ids  # no pipeline results for a bare analysis
    assert c.external == []  # self-contained: no script, style or link fetched
    assert c.canvases == len(c.script_json) >= 1
    first = c.script_json[0]
    # the 4 most important heads, then the suggestion's heads
    imp = np.asarray(result["importance"]["taylor"])
    top = sorted((-imp[layer, h], layer, h) for layer in range(2) for h in range(4))[:4]
    shown = [(h["layer"], h["head"]) for h in first["heads"]]
    assert shown[:4] == [(layer, h) for _, layer, h in top]
    assert set(shown[4:]) == {(1, 3)} - set(shown[:4])
    assert len(first["tokens"]) == len(first["heads"][0]["attn"]) == len(first["allowed"]["sent"])
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
    report = (tmp_path / "p" / "analysis" / "report.html").read_text()
    assert len(report) < 3_000_000
    # the report holds the results: each system's ROUGE with its interval, read from the test
    # scores files, and one loss and one validation plot with a line per trained system
    assert 'id="results"' in report and report.count('<svg class="curve"') == 2
    for name in ("lead3", "teacher", "student+patterns"):
        folder = tmp_path / "p" / ("baselines" if name == "lead3" else name)
        sc = json.loads((folder / f"{'lead3' if name == 'lead3' else 'test'}.scores.json").read_text())
        r1 = sc["rouge1"]
        assert f"<th>{name}</th><td>{r1['mean']:.2f} [{r1['low']:.2f}, {r1['high']:.2f}]</td>" in report
    assert report.count('class="line"') == 2 * 4
    capsys.readouterr()
    assert run_pipeline(tmp_path / "p", limit=4, settings=s) == text  # every stage reused
    assert capsys.readouterr().out.count("done earlier, reused") == 8


def test_analysis_reports_progress_pass_by_pass(capsys):
    """Each pass of the analysis over the documents has a progress bar counting them (stderr);
    none without `progress`."""
    from helpers import embedded_examples

    from attnsum.analysis import head_importance, pattern_scores
    from attnsum.config import ModelConfig
    from attnsum.model import SummarizerModel

    model = SummarizerModel(ModelConfig.from_preset("tiny"), load_pretrained=False)
    examples = embedded_examples("val", limit=5, max_len=64)
    head_importance(model, examples, "gate", progress=True)
    pattern_scores(model, examples, progress=True)
    err = capsys.readouterr().err
    assert "analyze: gate importance" in err and "analyze: pattern scores" in err
    assert "5/5" in err
    head_importance(model, examples, "taylor")
    assert "analyze" not in capsys.readouterr().err


def test_measured_speeds_of_a_plan(tmp_path):
    """A students.csv of bench_students.py: the patterned rows of its last commit, each with its
    speedup over the teacher (the file's) and over its dense twin (computed here)."""
    head = ("model,plan,N,batch,precision,p50_ms,p95_ms,docs_per_s,speedup,gflop_per_s,"
            "matmul_bound_fraction,peak_mib,device,torch,commit\n")
    rows = ["teacher,none,512,1,bf16,,,10,1.0,,,,cpu-X,2,old",
            "student3-paper-tx,paper,512,1,bf16,,,99,9.9,,,,cpu-X,2,old",
            "teacher,none,512,1,bf16,,,10,1.0,,,,cpu-X,2,new",
            "student3-dense-tx,none,512,1,bf16,,,16,1.6,,,,cpu-X,2,new",
            "student3-paper-tx,paper,512,1,bf16,,,24,2.4,,,,cpu-X,2,new",
            "student3-paper-tx,paper,512,32,bf16,,,30,2.5,,,,cpu-X,2,new"]
    path = tmp_path / "cpu-X" / "students.csv"
    path.parent.mkdir()
    path.write_text(head + "\n".join(rows) + "\n")
    got = measured_speeds([path])
    assert [(r["batch"], r["vs_teacher"], r["vs_twin"]) for r in got] == [(1, 2.4, 1.5),
                                                                           (32, 2.5, None)]
    assert {r["commit"] for r in got} == {"new"} and got[0]["source"] == "cpu-X/students.csv"
