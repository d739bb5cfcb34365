"""`attnsum pipeline`: the whole method in one command.

1. fine-tune the teacher (MiniLM, real weights);
2. analyze it: head importance, pattern scores, HTML report, suggested plan;
3. give the suggested patterns to the teacher's own heads and fine-tune it again;
4. train a student from scratch with the plan, and its unpatterned twin;
5. evaluate everything on the test split next to Lead-3 and the oracle, and time inference;
6. write a summary (Markdown and JSON).

Each finished stage leaves ``OUT/stages/<stage>.json``; a rerun skips finished stages and
training runs resume from their last checkpoint, so an interrupted pipeline loses little.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from .analysis import write_report
from .attention import HeadPlan
from .batching import length_batches, sentence_logits
from .checkpoints import load_model, resolve_checkpoint
from .config import ModelConfig, TrainConfig
from .errors import ConfigError
from .evaluate import METRICS, evaluate_system
from .experiment import FULL, QUICK, Settings, run_system
from .io import atomic_write_json, atomic_write_text
from .model import SummarizerModel
from .precision import Precision, Runtime
from .train import load_examples


class Stages:
    """Named stages whose results are kept as JSON, so a rerun skips finished ones."""

    def __init__(self, out: Path, total: int):
        self.dir, self.total, self.n = out / "stages", total, 0

    def run(self, name: str, title: str, fn):
        self.n += 1
        path = self.dir / f"{name}.json"
        if path.is_file():
            print(f"[{self.n}/{self.total}] {title}: done earlier, reused", flush=True)
            return json.loads(path.read_text())
        print(f"[{self.n}/{self.total}] {title}", flush=True)
        t0 = time.time()
        result = fn()
        atomic_write_json(path, result)
        print(f"      {time.time() - t0:.0f} s", flush=True)
        return result


@torch.no_grad()
def time_inference(model: SummarizerModel, examples, precision: Precision, device,
                   batch_size: int = 8) -> dict:
    """Documents and tokens per second of sentence scoring (batches grouped by length) on
    `device` in `precision`."""
    model.eval().to(device)
    batches = [b.to(device) for _, b in length_batches(examples, batch_size)]

    def run(bs):
        with precision.autocast():
            for b in bs:
                sentence_logits(model, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    run(batches[:1])  # warm-up
    t0 = time.perf_counter()
    run(batches)
    dt = time.perf_counter() - t0
    tokens = sum(len(e.input_ids) for e in examples)
    return {"docs_per_s": len(examples) / dt, "tokens_per_s": tokens / dt, "seconds": dt}


def run_pipeline(out: str | Path = "runs/pipeline", dataset: str = "embedded", full: bool = False,
                 limit: int | None = None, seed: int = 0, settings: Settings | None = None,
                 steps: int | None = None, max_len: int | None = None,
                 device: str | None = None) -> str:
    """Run (or resume) the pipeline on `device` (default: the GPU where there is one); returns
    the summary's Markdown. `steps` replaces the settings' training steps of every model (teacher
    and students alike), `max_len` their input length."""
    out = Path(out)
    # The student has the teacher's 6 x 12 heads, so the plan found on the teacher fits it.
    s = settings or replace(FULL if full else QUICK, student="student-6x12" if full else "student-mini")
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps {steps}: at least 1")
        s = replace(s, teacher_steps=steps, student_steps=steps, val_every=min(s.val_every, steps))
    if max_len is not None:
        s = replace(s, max_len=max_len)

    def model(preset, plan=None):
        return ModelConfig.from_preset(preset, plan, max_len=s.max_len)

    stages = Stages(out, 8)
    base = TrainConfig(model=model("minilm"), dataset=dataset, limit=limit, seed=seed,
                       val_every=s.val_every, batch_size=s.batch_size, accum=s.accum,
                       warmup=s.warmup)
    rt = Runtime.resolve(device, base.precision)
    dev, precision = rt.device, rt.precision
    data = {}

    def examples(split):
        if split not in data:
            data[split] = load_examples(base, split)
        return data[split]

    teacher_cfg = replace(base, steps=s.teacher_steps, optimizer="adamw",
                          lr=s.teacher_lr, out=str(out / "teacher"))

    def trained(cfg):
        def stage():
            scores = run_system(cfg, examples("train"), examples("val"), examples("test"),
                                precision, dev)
            return {"test": scores, "checkpoint": str(resolve_checkpoint(cfg.out))}

        return stage

    results = {"teacher": stages.run("teacher", "fine-tune the teacher (minilm)", trained(teacher_cfg))}

    def analyze_teacher():
        from .analysis import analyze

        model = load_model(teacher_cfg.out)
        r = analyze(model, examples("val"), out / "analysis", title="attnsum: teacher analysis")
        plan = HeadPlan.from_dict(r["plan"])
        fallback = plan.is_learned
        if fallback:  # nothing stood out: fall back to the paper's assignment
            plan = HeadPlan.parse("paper", plan.num_layers, plan.num_heads)
        return {"plan": plan.to_dict(), "plan_text": str(plan), "paper_fallback": fallback,
                "report": str(out / "analysis" / "report.html")}

    analysis = stages.run("analysis", "analyze the teacher, write the report", analyze_teacher)
    plan = HeadPlan.from_dict(analysis["plan"])
    runs = {
        "teacher+patterns": replace(teacher_cfg, model=model("minilm", plan),
                                    out=str(out / "teacher+patterns")),
        "student": replace(base, model=model(s.student), steps=s.student_steps,
                           optimizer=s.student_optimizer, lr=s.student_lr, out=str(out / "student")),
    }
    runs["student+patterns"] = replace(runs["student"], model=model(s.student, plan),
                                       out=str(out / "student+patterns"))
    titles = {"teacher+patterns": "fine-tune the teacher with the plan on its own heads",
              "student": "train the student from scratch (no patterns)",
              "student+patterns": "train the student from scratch with the plan"}
    for name, cfg in runs.items():
        results[name] = stages.run(name.replace("+", "_"), titles[name], trained(cfg))

    def baselines():
        return {b: {m: v.mean for m, v in
                    evaluate_system(b, examples("test"), out / "baselines").items()}
                for b in ("lead3", "oracle")}

    base_scores = stages.run("baselines", "Lead-3 and oracle on the test split", baselines)

    def timing():
        return {name: time_inference(load_model(r["checkpoint"]), examples("test"), precision, dev)
                for name, r in results.items()}

    speed = stages.run("timing", "time inference on the test split", timing)
    summary = _summary(out, results, base_scores, speed, analysis, s, dataset)
    write_report(out / "analysis", report_results(out, results, speed, analysis, dataset,
                                                  len(examples("test")), precision, s))
    stages.run("summary", "write the summary", lambda: {"path": str(out / "summary.md")})
    return summary


def _curves(run: Path) -> dict:
    """A run's training loss and validation score by step, from its metrics.jsonl (train.py)."""
    loss, val, metric = [], [], "rouge1"
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        record = json.loads(line)
        if "loss" in record:
            loss.append([record["step"], record["loss"]])
        elif "val" in record:
            metric = "rouge1" if "rouge1" in record["val"] else "loss"
            val.append([record["step"], record["val"][metric]])
    return {"loss": loss, "val": val, "val_metric": metric}


def report_results(out: Path, results: dict, speed: dict, analysis: dict, dataset: str,
                   documents: int, precision: Precision, s: Settings) -> dict:
    """What the report shows of a pipeline run (report.py `_results`): each system's test ROUGE
    with its interval (the scores files evaluate.py wrote), training curves, documents per
    second, and the plan's student against its dense twin, also as a measured speed of the plan
    for the plan editor."""
    def scores(path):
        return {m: v for m, v in json.loads(path.read_text()).items() if m in METRICS}

    rouge = {b: scores(out / "baselines" / f"{b}.scores.json") for b in ("lead3", "oracle")}
    rouge.update({name: scores(Path(r["checkpoint"]).parent / "test.scores.json")
                  for name, r in results.items()})
    docs_s = {name: f"{v['docs_per_s']:.1f}" for name, v in speed.items()}
    twin_speed = speed["student+patterns"]["docs_per_s"] / speed["student"]["docs_per_s"]
    return {
        "rouge": rouge, "speed": docs_s, "documents": documents, "dataset": dataset,
        "timing": f"{precision.name} on {precision.device_type}, batches of 8",
        "curves": {name: _curves(Path(r["checkpoint"]).parent) for name, r in results.items()},
        "twin": {"rouge1": rouge["student+patterns"]["rouge1"]["mean"]
                 - rouge["student"]["rouge1"]["mean"], "speed": twin_speed},
        "measured": [{"source": "this pipeline's timing stage", "device": "", "commit": "",
                      "model": f"{s.student} + plan", "plan": analysis["plan_text"],
                      "N": s.max_len, "batch": 8, "precision": precision.name,
                      "vs_teacher": speed["student+patterns"]["docs_per_s"]
                      / speed["teacher"]["docs_per_s"], "vs_twin": twin_speed}]}


def _summary(out, results, base_scores, speed, analysis, s, dataset) -> str:
    lines = ["| system | ROUGE-1 | ROUGE-2 | ROUGE-Lsum | docs/s | tokens/s |", "|---|---|---|---|---|---|"]
    for name, sc in base_scores.items():
        lines.append(f"| {name} | {sc['rouge1']:.2f} | {sc['rouge2']:.2f} | {sc['rougeLsum']:.2f} | | |")
    for name, r in results.items():
        t, sp = r["test"], speed[name]
        lines.append(f"| {name} | {t['rouge1']:.2f} | {t['rouge2']:.2f} | {t['rougeLsum']:.2f} | "
                     f"{sp['docs_per_s']:.1f} | {sp['tokens_per_s']:.0f} |")
    table = "\n".join(lines)
    note = " (nothing stood out: the paper's assignment was used)" if analysis["paper_fallback"] else ""
    text = (f"# attnsum pipeline on {dataset}\n\n{table}\n\nplan{note}: `{analysis['plan_text']}`\n\n"
            f"report: {analysis['report']}\n\nsettings: {json.dumps(vars(s))}\n")
    atomic_write_text(out / "summary.md", text)
    atomic_write_json(out / "summary.json", {"baselines": base_scores, "systems": results,
                                             "speed": speed, "analysis": analysis,
                                             "settings": vars(s), "dataset": dataset})
    return text
