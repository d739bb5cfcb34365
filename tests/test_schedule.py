"""Learning-rate schedules fit the run."""

import json

import pytest
from helpers import embedded_examples

from attnsum.config import TrainConfig
from attnsum.schedule import ScheduleError, make_schedule
from attnsum.train import train


@pytest.mark.parametrize("steps", [10, 250, 5000, 50000])
@pytest.mark.parametrize("optimizer", ["adamw", "adam-noam"])
def test_default_schedule_reaches_its_peak_inside_the_run(optimizer, steps):
    s = make_schedule(optimizer, steps, pretrained=True)
    lrs = [s.lr(t) for t in range(1, steps + 1)]
    top = max(lrs)
    assert top == pytest.approx(s.peak_lr)
    assert lrs.index(top) + 1 == s.warmup_steps <= steps
    if optimizer == "adamw":
        assert s.warmup_steps <= 0.1 * steps or steps < 20
        assert lrs[-1] <= 0.1 * top  # decays to (nearly) zero at the last step
        tail = lrs[s.warmup_steps - 1:]
        assert all(a >= b for a, b in zip(tail, tail[1:], strict=False))


def test_paper_recipe_is_the_noam_curve_at_50000_steps():
    s = make_schedule("adam-noam", 50_000)
    assert s.warmup_steps == 10_000
    for t in (1, 7, 500, 9_999, 10_000, 10_001, 31_415, 50_000):
        paper = 2e-3 * min(t ** -0.5, t * 10_000 ** -1.5)  # BERTSum's formula
        assert s.lr(t) == pytest.approx(paper, rel=1e-12)


def test_peak_lr_follows_the_optimizer_and_the_model():
    assert make_schedule("adamw", 100, pretrained=True).peak_lr == 5e-5
    assert make_schedule("adamw", 100, pretrained=False).peak_lr == 5e-4
    assert make_schedule("adam-noam", 100).peak_lr == pytest.approx(2e-5)
    assert make_schedule("adamw", 100, lr=1e-4).peak_lr == 1e-4


def test_warmup_in_steps_or_as_a_fraction():
    assert make_schedule("adamw", 250, warmup=0.1).warmup_steps == 25
    assert make_schedule("adamw", 250, warmup=40).warmup_steps == 40
    with pytest.raises(ScheduleError, match="whole number"):
        make_schedule("adamw", 250, warmup=2.5)
    with pytest.raises(ScheduleError, match="fraction"):
        make_schedule("adamw", 250, warmup=-1)


def test_a_run_that_ends_in_warmup_is_refused_or_allowed_on_request(tmp_path):
    with pytest.raises(ScheduleError, match=r"inside its 10000-step warmup.*2%"):
        make_schedule("adamw", 250, warmup=10_000)
    s = make_schedule("adamw", 250, warmup=10_000, allow_short_warmup=True)
    assert "never reached" in s.describe()
    cfg = TrainConfig(steps=3, warmup=10, out=str(tmp_path / "r"), progress=False)
    with pytest.raises(ValueError, match="inside its 10-step warmup"):
        train(cfg, [], [])


def test_training_records_its_schedule_and_precision(tmp_path, capsys):
    ex = embedded_examples("train", limit=4, max_len=64)
    out = tmp_path / "run"
    train(TrainConfig(steps=20, batch_size=2, val_every=20, log_every=1,
                      out=str(out), precision="fp32"), ex, ex[:2])
    printed = capsys.readouterr().err
    assert "schedule: adamw, linear warmup, linear decay to zero: peak lr 0.0005 reached at step 1" \
        in printed
    assert "precision fp32 on cpu (asked for)" in printed
    cfg = json.loads((out / "last" / "config.json").read_text())
    assert cfg["schedule"]["warmup_steps"] == 1 and cfg["precision"].startswith("precision fp32")
    lrs = [m["lr"] for m in map(json.loads, open(out / "metrics.jsonl")) if "lr" in m]
    assert lrs[:2] == pytest.approx([5e-4, 5e-4 * 19 / 20])
    assert lrs[-1] == pytest.approx(5e-4 / 20)


@pytest.mark.parametrize("settings", ["QUICK", "FULL"])
def test_experiment_settings_reach_their_peak(settings):
    from attnsum import experiment
    from attnsum.experiment import EXPERIMENT_SYSTEMS, system_config

    s = getattr(experiment, settings)
    for system in EXPERIMENT_SYSTEMS:
        if system.distill:  # same schedule as its undistilled twin; needs a teacher run
            continue
        cfg = system_config(system, s, 0, experiment.Path("unused"), "embedded")
        sched = make_schedule(cfg.optimizer, cfg.steps, cfg.lr, cfg.warmup)
        assert sched.warmup_steps <= 0.2 * cfg.steps
        if settings == "FULL" and system.preset == "student":
            assert sched.warmup_steps == 10_000 and sched.peak_lr == pytest.approx(2e-5)
