"""Training, checkpoints, resume, distillation, and the fused path's loss curve."""

import json
from dataclasses import replace

import pytest
import torch
from helpers import embedded_examples

import attnsum.train
from attnsum.attention.patterns import PatternError
from attnsum.batching import collate, predict_scores
from attnsum.checkpoints import load_model, read_config, save_model
from attnsum.config import ModelConfig, TrainConfig
from attnsum.data import Corpus, Document
from attnsum.errors import ConfigError
from attnsum.losses import distill_loss
from attnsum.model import SummarizerModel, init_from_layers, spread_layers
from attnsum.precision import resolve_precision
from attnsum.preprocess import prepare
from attnsum.train import train

FP32 = resolve_precision("fp32", "cpu")


@pytest.fixture(scope="module")
def examples():
    return embedded_examples("train", limit=12, max_len=128)


def _cfg(tmp_path, **kw):
    model = {k: kw.pop(k) for k in ("preset", "plan", "inject", "pooling") if k in kw}
    base = dict(steps=12, batch_size=4, optimizer="adamw", lr=2e-3, warmup=2, val_every=6,
                log_every=1, out=str(tmp_path / "run"), progress=False)
    base.update(kw)
    model = ModelConfig.from_preset(model.pop("preset", "tiny"), model.pop("plan", "paper"),
                                    max_len=128, **model)
    return TrainConfig(model=model, **base)


def _losses(run):
    return [m["loss"] for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "loss" in m]


def test_tiny_model_learns(tmp_path, examples):
    train(_cfg(tmp_path, steps=40, val_every=40), examples, examples[:4])
    losses = _losses(tmp_path / "run")
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.6 * sum(losses[:8]) / 8


def test_save_load_gives_identical_scores(tmp_path, examples):
    model = SummarizerModel(ModelConfig.from_preset("tiny", "paper"))
    before = predict_scores(model, examples[:5], FP32)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert predict_scores(loaded, examples[:5], FP32) == before
    assert read_config(tmp_path / "ckpt").plan == model.cfg.plan


def test_mean_pooling_averages_each_sentence_span(examples):
    """Mean-pooled sentence vectors equal the mean of the token vectors over each sentence's
    span as preprocessing recorded it ([CLS] to [SEP]); padding sentences read zeros."""
    from attnsum.model import sentence_vectors

    batch = collate(examples[:4])
    h = torch.randn(*batch.input_ids.shape, 8, dtype=torch.float64)
    got = sentence_vectors(h, batch.cls_positions, batch.attention_mask, "mean")
    for b, e in enumerate(examples[:4]):
        want = torch.stack([h[b, s:t].mean(0) for s, t in e.spans])
        torch.testing.assert_close(got[b, :len(e.spans)], want)
        assert not got[b, len(e.spans):].any()
    at_cls = sentence_vectors(h, batch.cls_positions, batch.attention_mask, "cls")
    torch.testing.assert_close(at_cls[0, :len(examples[0].spans)],
                               h[0, examples[0].cls_positions])


def test_pooling_is_kept_by_checkpoints_and_older_ones_read_cls(tmp_path, examples):
    model = SummarizerModel(ModelConfig.from_preset("tiny", "paper", pooling="mean"))
    save_model(model, tmp_path / "ckpt")
    assert read_config(tmp_path / "ckpt").pooling == "mean"
    loaded = load_model(tmp_path / "ckpt")
    assert predict_scores(loaded, examples[:3], FP32) == predict_scores(model, examples[:3], FP32)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["attnsum"]["pooling"]  # a checkpoint from before pooling was a setting
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    older = load_model(tmp_path / "ckpt")
    assert older.cfg.pooling == "cls"
    assert predict_scores(older, examples[:3], FP32) != predict_scores(model, examples[:3], FP32)
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        ModelConfig.from_preset("tiny", pooling="max")


def test_resume_continues_with_the_same_state(tmp_path, examples, monkeypatch):
    straight = tmp_path / "a"
    train(_cfg(tmp_path, out=str(straight), steps=8, val_every=4), examples, examples[:3])
    resumed = tmp_path / "b"
    # A crash while building step 5's batch (the training loop's 5th collate), after the
    # checkpoint of step 4.
    calls = {"n": 0}
    real_collate = attnsum.train.collate

    def crashing_collate(docs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_collate(docs)

    monkeypatch.setattr(attnsum.train, "collate", crashing_collate)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, out=str(resumed), steps=8, val_every=4), examples, examples[:3])
    monkeypatch.setattr(attnsum.train, "collate", real_collate)
    state = json.loads((resumed / "last" / "trainer.json").read_text())
    assert state["step"] == 4
    train(_cfg(tmp_path, out=str(resumed), steps=8, val_every=4), examples, examples[:3])
    logged = [m["step"] for m in map(json.loads, open(resumed / "metrics.jsonl")) if "loss" in m]
    assert logged == list(range(1, 9))
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    a = load_model(straight / "last").state_dict()
    b = load_model(resumed / "last").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("precision, rel", [
    ("fp32", 1e-4),
    # bf16 autocast: the kernel under the CPU interpreter computes in fp32 (triton_path.py
    # upcasts what it is given); room for bf16 rounding of its inputs and outputs.
    ("bf16", 1e-3),
])
def test_fused_kernel_and_torch_path_give_the_same_loss_curve(tmp_path, examples, precision, rel):
    short = [e for e in examples if len(e.input_ids) <= 128][:6]
    runs = {}
    for backend in ("torch", "triton"):
        out = tmp_path / backend
        train(_cfg(tmp_path, out=str(out), steps=3, batch_size=2, val_every=100, backend=backend,
                   precision=precision), short, short[:1])
        runs[backend] = _losses(out)
    assert runs["triton"] == pytest.approx(runs["torch"], rel=rel)


def test_time_limit_stops_after_a_step_and_a_rerun_goes_on(tmp_path, examples):
    straight = train(_cfg(tmp_path, out=str(tmp_path / "straight"), steps=5, val_every=5),
                     examples, examples)
    cut = _cfg(tmp_path, out=str(tmp_path / "cut"), steps=5, val_every=5, time_limit=1e-9)
    first = train(cut, examples, examples)
    assert first["step"] == 1  # one step, then the resume state, then a stop
    assert json.loads((tmp_path / "cut" / "last" / "trainer.json").read_text())["step"] == 1
    rest = train(replace(cut, time_limit=None), examples, examples)
    assert rest["step"] == 5 and straight["step"] == 5
    a = load_model(tmp_path / "straight" / "last").state_dict()
    b = load_model(tmp_path / "cut" / "last").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "straight")


def test_distillation_loss():
    s = torch.randn(3, 7)
    mask = torch.ones(3, 7)
    assert distill_loss(s, s, mask).abs().item() < 1e-5
    assert distill_loss(s, s + 1.0, mask).item() > 0.1


def test_side_layers_start_identical_to_the_original(examples):
    torch.manual_seed(0)
    plain = SummarizerModel(ModelConfig.from_preset("tiny", "none"))
    side = SummarizerModel(ModelConfig.from_preset("tiny", "paper", inject="side"))
    missing, _ = side.load_state_dict(plain.state_dict(), strict=False)
    assert all(".side." in k for k in missing)
    plain.eval()
    side.eval()
    for a, b in zip(predict_scores(side, examples[:3], FP32),
                    predict_scores(plain, examples[:3], FP32),
                    strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_layer_dropping_copies_the_chosen_teacher_layers():
    assert spread_layers(6, 3) == [1, 3, 5] and spread_layers(6, 2) == [2, 5]
    assert spread_layers(6, 6) == list(range(6)) and spread_layers(2, 1) == [1]
    torch.manual_seed(0)
    teacher = SummarizerModel(ModelConfig.from_preset("tiny"))
    student = SummarizerModel(ModelConfig.from_preset("tiny-student", "paper"))
    assert init_from_layers(student, teacher) == [1]
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in s.items():
        source = name.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(value, t[source]), name
    assert init_from_layers(student, teacher, [0]) == [0]
    assert torch.equal(student.state_dict()["encoder.encoder.layer.0.output.dense.weight"],
                       t["encoder.encoder.layer.0.output.dense.weight"])
    with pytest.raises(ConfigError, match="need 1 source layers"):
        init_from_layers(student, teacher, [0, 1])
    with pytest.raises(ConfigError, match="width"):
        init_from_layers(SummarizerModel(ModelConfig.from_preset("student-mini-2")), teacher)


def test_bad_checkpoints_and_plans(tmp_path, examples):
    with pytest.raises(PatternError, match="head index 7 is out of range"):
        ModelConfig.from_preset("tiny", "*:7=sent/mask")
    with pytest.raises(RuntimeError, match="not an attnsum checkpoint .expected config.json"):
        load_model(tmp_path)
    with pytest.raises(RuntimeError, match="no such checkpoint"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(RuntimeError, match="not an attnsum checkpoint config"):
        load_model(tmp_path / "bad")
    model = SummarizerModel(ModelConfig.from_preset("tiny", "paper"))
    save_model(model, tmp_path / "c")
    # the weights file names its checkpoint too
    assert load_model(tmp_path / "c" / "model.safetensors").checkpoint == tmp_path / "c"
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read"):
        load_model(tmp_path / "c")
    train(_cfg(tmp_path, steps=2, val_every=2), examples, examples[:2])
    with pytest.raises(ConfigError, match="another preset or plan"):
        train(_cfg(tmp_path, steps=4, plan="none"), examples, examples[:2])


def test_hand_edited_plan_files_are_one_line_errors_naming_the_file(tmp_path, capsys):
    from attnsum.cli import main

    row = [None] * 4
    cases = {
        "unknown.json": ([[{"pattern": "diag", "mode": "mask"}] + row[1:], row], 4,
                         "unknown pattern 'diag'"),
        "mode.json": ([[{"pattern": "match", "mode": "average"}] + row[1:], row], 4,
                      "unknown mode 'average'"),
        "wide.json": ([row + [None], row + [None]], 5, "the plan is for 2 layers x 5 heads"),
        "shape.json": ([row], 4, "plan is not 2 layers x 4 heads"),
    }
    for name, (heads, num_heads, message) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps({"num_layers": 2, "num_heads": num_heads, "heads": heads}))
        assert main(["train", "--preset", "tiny", "--plan", str(path), "--steps", "1",
                     "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"plan file {path}" in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_collate_layout(examples):
    batch = collate(examples[:3])
    for b, e in enumerate(examples[:3]):
        n = len(e.input_ids)
        assert batch.attention_mask[b].sum() == n
        assert batch.input_ids[b, batch.cls_positions[b, 0]] == 101
        assert batch.ctx.sentence_ids[b, :n].max() == len(e.spans) - 1


def test_dataset_without_labels(tmp_path):
    from attnsum.data import DataError
    from attnsum.train import load_examples

    corpus = Corpus("x", "test", [Document("d", ["a sentence that has enough words in it ."],
                                           ["zzz qqq"])])
    assert not any(prepare(corpus, use_cache=False).examples[0].labels)
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"article": ["a sentence that has enough words in it ."],
                             "highlights": ["zzz"]}) + "\n")
    with pytest.raises(DataError, match="oracle selects no sentence"):
        load_examples(TrainConfig(dataset=str(p)), "test")


def test_a_run_folder_with_a_plain_last_folder_is_converted_on_its_next_save(tmp_path):
    from attnsum.checkpoints import last_checkpoint, save_trainer_state

    model = SummarizerModel(ModelConfig.from_preset("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    run = tmp_path / "run"
    save_trainer_state(run, model, opt, 2, {}, [])
    (run / "last").unlink()  # the layout of earlier versions: a plain last/ folder
    (run / "last-2").rename(run / "last")
    assert last_checkpoint(run) == run / "last" and not (run / "last").is_symlink()
    save_trainer_state(run, model, opt, 4, {}, [])
    assert (run / "last").is_symlink() and last_checkpoint(run).resolve() == run / "last-4"
    assert sorted(p.name for p in run.iterdir()) == ["last", "last-4"]
    assert json.loads((run / "last" / "trainer.json").read_text())["step"] == 4


def test_settings_are_parsed_once_and_carried_typed(tmp_path, examples, monkeypatch):
    """The plan is parsed where it enters (ModelConfig.from_preset) and travels as a HeadPlan
    in the model config the run holds; precision is resolved once per run, not again at each
    validation; a checkpoint records each setting once (the plan with the model's)."""
    from attnsum.attention import HeadPlan

    calls = []
    real = attnsum.train.resolve_precision
    monkeypatch.setattr(attnsum.train, "resolve_precision",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = _cfg(tmp_path, steps=4, val_every=2, precision="fp32")
    assert cfg.model.plan == HeadPlan.parse("paper", 2, 4)
    train(cfg, examples, examples[:2])
    assert len(calls) == 1
    saved = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert HeadPlan.from_dict(saved["attnsum"]["plan"]) == cfg.model.plan
    model_keys = set(saved["attnsum"])
    assert not model_keys & set(saved["train"])  # nothing recorded twice
    assert {"preset", "plan", "max_len", "classifier", "pooling", "dropout"} <= model_keys
    assert read_config(tmp_path / "run" / "last").plan == cfg.model.plan
    learned = ModelConfig.from_preset("tiny")
    assert learned.plan == HeadPlan.none(2, 4)  # one default for "no patterns"
    assert ModelConfig.from_preset("tiny", inject="side").plan == HeadPlan.none(2, learned.side_heads)


def test_a_checkpoint_is_checked_when_it_loads(tmp_path, capsys):
    """Weights that are not finite, config values of the wrong type, tensors whose shapes
    disagree with config.json, and a garbled trainer.json: each one line from the CLI naming
    the file and the first fault, never a traceback."""
    import shutil

    from safetensors.torch import load_file, save_file

    from attnsum.cli import main

    good = tmp_path / "good"
    save_model(SummarizerModel(ModelConfig.from_preset("tiny"), load_pretrained=False), good)
    doc = tmp_path / "doc.txt"
    doc.write_text("The council approved the budget on Tuesday after a long debate. " * 3)

    def error_of(folder) -> str:
        assert main(["summarize", "--checkpoint", str(folder), str(doc)]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    nan = tmp_path / "nan"
    shutil.copytree(good, nan)
    state = load_file(str(nan / "model.safetensors"))
    state["score.weight"] = torch.full_like(state["score.weight"], float("nan"))
    save_file(state, str(nan / "model.safetensors"))
    assert "score.weight holds NaN" in error_of(nan)

    typed = tmp_path / "typed"
    shutil.copytree(good, typed)
    cfg = json.loads((typed / "config.json").read_text())
    cfg["attnsum"]["hidden"] = "64"
    (typed / "config.json").write_text(json.dumps(cfg))
    assert f"{typed / 'config.json'}: \"hidden\" is '64', not int" in error_of(typed)

    shaped = tmp_path / "shaped"
    shutil.copytree(good, shaped)
    cfg = json.loads((shaped / "config.json").read_text())
    cfg["attnsum"]["ffn"] = 96
    (shaped / "config.json").write_text(json.dumps(cfg))
    err = error_of(shaped)
    assert str(shaped / "model.safetensors") in err and "config.json makes it" in err

    run = tmp_path / "run" / "last"
    shutil.copytree(good, run)
    (run / "trainer.json").write_text("not json")
    assert f"{run / 'trainer.json'}: not valid JSON" in error_of(tmp_path / "run")


def test_metrics_survive_kills_before_the_first_checkpoint(tmp_path, examples):
    """A run killed before its first save leaves metrics lines (and maybe a torn one) but no
    resume state: the next start drops them, so the log equals an uninterrupted run's."""
    clean = train(_cfg(tmp_path, out=str(tmp_path / "clean")), examples, examples)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n'
                                       '{"step": 3, "lo')
    train(_cfg(tmp_path, out=str(run)), examples, examples)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [
        json.loads(x)["step"] for x in open(f"{clean['out']}/metrics.jsonl")]
    assert _losses(run) == pytest.approx(_losses(clean["out"]))
