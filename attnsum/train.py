"""Training of BERTSum summarizers: summed BCE over sentences (losses.py), AdamW with linear warmup and decay
or Adam + Noam (the paper; schedules in schedule.py), gradient accumulation, autocast precision
(precision.py), DDP under torchrun,
validation ROUGE every K steps keeping the best k checkpoints, resume from the last checkpoint,
and optional distillation from a teacher checkpoint. The run folder's layout: checkpoints.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .batching import collate, length_batches, sentence_logits
from .checkpoints import (
    METRICS_FILE,
    has_trainer_state,
    keep_best,
    last_checkpoint,
    load_model,
    load_trainer_state,
    save_trainer_state,
    trim_metrics,
)
from .config import PRESETS, ModelConfig, TrainConfig
from .data import DataError
from .distributed import local_device, process_group
from .errors import ConfigError
from .evaluate import evaluate_model
from .losses import distill_loss, sentence_loss
from .model import SummarizerModel, init_from_layers
from .precision import Precision, resolve_precision
from .preprocess import Example
from .schedule import Schedule, make_schedule
from .shards import examples_of

# --------------------------------------------------------------------------- training loop


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _init_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"bad --init-layers {text!r}: use comma-separated layer indices") from None


def _init_source(cfg: TrainConfig) -> SummarizerModel:
    """What `init_from` names: a preset with pretrained weights (e.g. minilm) or a checkpoint."""
    if cfg.init_from in PRESETS:
        source = ModelConfig.from_preset(cfg.init_from, classifier=cfg.model.classifier)
        if source.pretrained is None:
            raise ConfigError(f"--init-from {cfg.init_from}: that preset has no pretrained weights; "
                              "name a checkpoint or a pretrained preset")
        return SummarizerModel(source)
    return load_model(cfg.init_from)


def load_examples(cfg: TrainConfig, split: str) -> list[Example]:
    limit = cfg.val_limit if split == cfg.val_split and cfg.val_limit is not None else cfg.limit
    need_texts = split == cfg.val_split and cfg.val_metric == "rouge"
    examples = examples_of(cfg.dataset, split, cfg.max_len, limit, need_texts=need_texts).examples
    if not examples:
        raise DataError(f"{cfg.dataset}/{split}: no usable document")
    if not any(e.oracle or any(e.labels) for e in examples):  # shards of train keep labels only
        raise DataError(f"{cfg.dataset}/{split}: the oracle selects no sentence in any document "
                        "(references empty or unrelated?)")
    return examples


def validate(model, examples: list[Example], cfg: TrainConfig, device, precision: Precision
             ) -> dict:
    """Validation scores; "mean" ranks checkpoints (higher is better): the mean of ROUGE-1, -2
    and -Lsum, or minus the loss (summed BCE per document) with ``val_metric="loss"``."""
    if cfg.val_metric == "rouge":
        scores = evaluate_model(model, examples, precision, device=device)
        val = {m: s.mean for m, s in scores.items()}
        return {**val, "mean": sum(val.values()) / 3}
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _, batch in length_batches(examples, cfg.batch_size):
            batch = batch.to(device)
            with precision.autocast():
                logits = sentence_logits(model, batch).float()
            total += float(sentence_loss(logits, batch.labels, batch.sentence_mask))
    loss = total / len(examples)
    return {"loss": loss, "mean": -loss}


def train(cfg: TrainConfig, train_examples: list[Example] | None = None,
          val_examples: list[Example] | None = None, device=None) -> dict:
    """Train (or resume) a model on `device` (default: this process's GPU under torchrun, the
    GPU where there is one, else the CPU); returns the best validation scores and the run
    folder."""
    with process_group() as (rank, world):
        return _train(cfg, train_examples, val_examples,
                      local_device() if device is None else device, rank, world)


@dataclass
class _Run:
    """What a run's stages share: its settings, model, optimizer and where it stands."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    precision: Precision
    schedule: Schedule
    summary: dict
    model: SummarizerModel
    train_examples: list[Example]
    val_examples: list[Example]
    teacher: SummarizerModel | None = None
    opt: torch.optim.Optimizer | None = None
    ddp: torch.nn.Module | None = None
    step: int = 0
    best: list = field(default_factory=list)


def _train(cfg: TrainConfig, train_examples, val_examples, device, rank: int, world: int) -> dict:
    run = _setup(cfg, train_examples, val_examples, device, rank, world)
    _prepare(run)
    run.out.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # on every start: the lines of steps past the last save, and a torn line, go
        trim_metrics(run.out, run.step)
    with (open(run.out / METRICS_FILE, "a", encoding="utf-8") if rank == 0
          else contextlib.nullcontext()) as metrics:
        _loop(run, metrics)
    return {"best": [{**e, "path": str(run.out / Path(e["path"]).name)} for e in run.best],
            "out": str(run.out), "step": run.step, "schedule": run.schedule.describe(),
            "precision": run.precision.describe()}


def _setup(cfg: TrainConfig, train_examples, val_examples, device, rank: int, world: int) -> _Run:
    """Settings resolved, seeds set, the examples (loaded unless given) and the model: resumed
    from the run folder's last checkpoint, or new (started from `init_from`'s layers)."""
    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision, device)
    schedule = make_schedule(cfg.optimizer, cfg.steps, cfg.lr, cfg.warmup,
                             pretrained=(cfg.model.pretrained is not None
                                         or cfg.init_from is not None),
                             allow_short_warmup=cfg.allow_short_warmup)
    summary = {"train": cfg.record(), "schedule": schedule.to_dict(),
               "precision": precision.describe()}
    _seed_all(cfg.seed)
    train_examples = train_examples if train_examples is not None else load_examples(cfg, cfg.train_split)
    val_examples = val_examples if val_examples is not None else load_examples(cfg, cfg.val_split)
    if has_trainer_state(out):
        model = load_model(last_checkpoint(out))
        want = cfg.model
        if (model.cfg.preset, model.cfg.plan, model.cfg.inject) != (want.preset, want.plan,
                                                                      want.inject):
            raise ConfigError(f"{out}: the checkpoint is for another preset or plan; use another "
                              "--out or the same settings")
    else:
        model = SummarizerModel(cfg.model)
        if cfg.init_from:
            source = _init_source(cfg)
            summary["init_layers"] = init_from_layers(model, source, _init_layers(cfg.init_layers))
            if rank == 0:
                print(f"started from layers {summary['init_layers']} of "
                      f"{source.checkpoint or cfg.init_from}", file=sys.stderr)
    return _Run(cfg, out, device, rank, world, precision, schedule, summary, model,
                train_examples, val_examples)


def _prepare(run: _Run) -> None:
    """The model on its device (embeddings frozen if asked), the teacher, the optimizer with
    the resumed state, and DDP's wrapper on several processes."""
    cfg = run.cfg
    if cfg.freeze_embeddings:
        run.model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    run.model.to(run.device).set_backend(cfg.backend)
    if cfg.teacher:
        run.teacher = load_model(cfg.teacher).to(run.device).eval()
        if run.rank == 0:
            print(f"teacher {run.teacher.checkpoint}", file=sys.stderr)
        run.teacher.set_backend(cfg.backend)
    params = [p for p in run.model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam-noam":
        run.opt = torch.optim.Adam(params, lr=run.schedule.peak_lr, betas=(0.9, 0.999), eps=1e-9)
    else:
        run.opt = torch.optim.AdamW(params, lr=run.schedule.peak_lr, weight_decay=cfg.weight_decay)
    if has_trainer_state(run.out):
        run.step, run.best = load_trainer_state(run.out, run.opt)
    run.ddp = (torch.nn.parallel.DistributedDataParallel(run.model) if run.world > 1
               else run.model)


def _step(run: _Run) -> tuple[float, int]:
    """One optimizer step over `accum` batches: the step's loss and its tokens (this process)."""
    cfg, step, rank, world = run.cfg, run.step, run.rank, run.world
    run.model.train()
    for g in run.opt.param_groups:
        g["lr"] = run.schedule.lr(step + 1)
    run.opt.zero_grad(set_to_none=True)
    total, tokens = 0.0, 0
    # The step's documents and dropout masks follow from (seed, step, rank) alone: a resumed
    # run, on any number of processes, repeats the uninterrupted one exactly.
    rng = random.Random(cfg.seed * 1_000_003 + step)
    torch.manual_seed((cfg.seed * 1_000_003 + step) * 1_000_003 + rank)
    for _ in range(cfg.accum):
        docs = [run.train_examples[rng.randrange(len(run.train_examples))]
                for _ in range(cfg.batch_size * world)][rank::world]
        batch = collate(docs).to(run.device)
        mask = batch.sentence_mask
        with run.precision.autocast():
            logits = sentence_logits(run.ddp, batch).float()
            loss = sentence_loss(logits, batch.labels, mask)
            if run.teacher is not None:
                with torch.no_grad():
                    t_logits = sentence_logits(run.teacher, batch).float()
                loss = loss + cfg.distill_weight * distill_loss(logits, t_logits, mask)
        # The loss sums over documents and DDP averages gradients over ranks: scaled by the
        # world size, the update equals one process's on the whole global batch.
        (loss * world / cfg.accum).backward()
        total += loss.item() / cfg.accum
        tokens += int(batch.attention_mask.sum())
    return total, tokens


def _loop(run: _Run, metrics) -> None:
    """Steps to the end of the schedule or the time limit: a metrics line every `log_every`
    steps, validation and checkpoints every `val_every`, the resume state when time is up."""
    from tqdm.auto import tqdm

    cfg, rank, world = run.cfg, run.rank, run.world
    if rank == 0:
        print(f"schedule: {run.schedule.describe()}\n{run.precision.describe()}",
              file=sys.stderr, flush=True)
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.model.preset}", unit="step",
               disable=not (cfg.progress and rank == 0))
    params = [p for g in run.opt.param_groups for p in g["params"]]
    t0, seen_tokens, running = time.time(), 0, []
    while run.step < cfg.steps:
        total, tokens = _step(run)
        out_of_time = cfg.time_limit is not None and time.time() - t0 > 60 * cfg.time_limit
        if world > 1:  # the global batch's loss and tokens for the log; stop when any rank must
            sums = torch.tensor([total, float(tokens), float(out_of_time)])
            torch.distributed.all_reduce(sums)
            total, tokens, out_of_time = sums[0].item(), int(sums[1].item()), bool(sums[2] > 0)
        seen_tokens += tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.opt.step()
        run.step += 1
        running.append(total)
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            rate = seen_tokens / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{sum(running) / len(running):.3f}", tok_s=f"{rate:.0f}")
            if metrics:
                _write(metrics, {"step": run.step, "loss": sum(running) / len(running),
                                 "lr": run.opt.param_groups[0]["lr"], "tokens_per_s": rate})
            running = []
        _checkpoint(run, metrics, out_of_time)
        if out_of_time and run.step < cfg.steps:
            if rank == 0:
                print(f"\nstopped at step {run.step} of {cfg.steps} after the time limit of "
                      f"{cfg.time_limit:g} min; run the same command again to go on",
                      file=sys.stderr, flush=True)
            break
    bar.close()


def _checkpoint(run: _Run, metrics, out_of_time: bool) -> None:
    """Validation and the best checkpoints every `val_every` steps and at the end; the resume
    state alone when the time limit stops the run between them (rank 0 only)."""
    cfg = run.cfg
    if run.rank != 0:
        return
    if run.step % cfg.val_every == 0 or run.step == cfg.steps:
        val = validate(run.model, run.val_examples, cfg, run.device, run.precision)
        _write(metrics, {"step": run.step, "val": val})
        run.best = keep_best(run.out, run.model, run.step, val, run.best, cfg.keep_best,
                             run.summary)
        save_trainer_state(run.out, run.model, run.opt, run.step, run.summary, run.best)
    elif out_of_time and run.step < cfg.steps:
        save_trainer_state(run.out, run.model, run.opt, run.step, run.summary, run.best)


def _write(metrics, record: dict) -> None:
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
