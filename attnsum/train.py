"""Training of BERTSum summarizers: summed BCE over sentences (losses.py), AdamW with linear warmup and decay
or Adam + Noam (the paper; schedules in schedule.py), gradient accumulation, autocast precision
(precision.py), DDP under torchrun,
validation ROUGE every K steps keeping the best k checkpoints, resume from the last checkpoint,
and optional distillation from a teacher checkpoint. The run folder's layout: checkpoints.py.
"""

from __future__ import annotations

import json
import random
import sys
import time
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
from .data import DataError
from .distributed import local_device, process_group
from .errors import ConfigError
from .evaluate import evaluate_model
from .losses import distill_loss, sentence_loss
from .model import MODEL_PRESETS, SummarizerModel, init_from_layers, model_config
from .precision import Precision, resolve_precision
from .preprocess import Example
from .schedule import make_schedule
from .settings import TrainConfig
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
    if cfg.init_from in MODEL_PRESETS:
        source = model_config(cfg.init_from, classifier=cfg.classifier)
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


def _train(cfg: TrainConfig, train_examples, val_examples, device, rank: int, world: int) -> dict:
    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision, device)
    schedule = make_schedule(cfg.optimizer, cfg.steps, cfg.lr, cfg.warmup,
                             pretrained=(model_config(cfg.preset).pretrained is not None
                                         or cfg.init_from is not None),
                             allow_short_warmup=cfg.allow_short_warmup)
    summary = {"train": cfg.record(), "schedule": schedule.to_dict(),
               "precision": precision.describe()}
    _seed_all(cfg.seed)
    train_examples = train_examples if train_examples is not None else load_examples(cfg, cfg.train_split)
    val_examples = val_examples if val_examples is not None else load_examples(cfg, cfg.val_split)

    resume = has_trainer_state(out)
    if resume:
        model = load_model(last_checkpoint(out))
        want = cfg.model_config()
        if (model.cfg.preset, model.cfg.plan, model.cfg.inject) != (want.preset, want.plan,
                                                                      want.inject):
            raise ConfigError(f"{out}: the checkpoint is for another preset or plan; use another "
                              "--out or the same settings")
    else:
        model = SummarizerModel(cfg.model_config())
        if cfg.init_from:
            layers = _init_layers(cfg.init_layers)
            source = _init_source(cfg)
            summary["init_layers"] = init_from_layers(model, source, layers)
            if rank == 0:
                print(f"started from layers {summary['init_layers']} of "
                      f"{source.checkpoint or cfg.init_from}", file=sys.stderr)
    if cfg.freeze_embeddings:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    model.to(device).set_backend(cfg.backend)
    teacher = None
    if cfg.teacher:
        teacher = load_model(cfg.teacher).to(device).eval()
        if rank == 0:
            print(f"teacher {teacher.checkpoint}", file=sys.stderr)
        teacher.set_backend(cfg.backend)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam-noam":
        opt = torch.optim.Adam(params, lr=schedule.peak_lr, betas=(0.9, 0.999), eps=1e-9)
    else:
        opt = torch.optim.AdamW(params, lr=schedule.peak_lr, weight_decay=cfg.weight_decay)
    step, best = load_trainer_state(out, opt) if resume else (0, [])
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # on every start: the lines of steps past the last save, and a torn line, go
        trim_metrics(out, step)
    metrics = open(out / METRICS_FILE, "a", encoding="utf-8") if rank == 0 else None

    from tqdm.auto import tqdm

    if rank == 0:
        print(f"schedule: {schedule.describe()}\n{precision.describe()}", file=sys.stderr,
              flush=True)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.preset}", unit="step",
               disable=not (cfg.progress and rank == 0))
    t0, seen_tokens, running = time.time(), 0, []
    while step < cfg.steps:
        model.train()
        for g in opt.param_groups:
            g["lr"] = schedule.lr(step + 1)
        opt.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        # The step's documents and dropout masks follow from (seed, step, rank) alone: a resumed
        # run, on any number of processes, repeats the uninterrupted one exactly.
        rng = random.Random(cfg.seed * 1_000_003 + step)
        torch.manual_seed((cfg.seed * 1_000_003 + step) * 1_000_003 + rank)
        for _ in range(cfg.accum):
            docs = [train_examples[rng.randrange(len(train_examples))]
                    for _ in range(cfg.batch_size * world)][rank::world]
            batch = collate(docs).to(device)
            mask = batch.sentence_mask
            with precision.autocast():
                logits = sentence_logits(ddp, batch).float()
                loss = sentence_loss(logits, batch.labels, mask)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = sentence_logits(teacher, batch).float()
                    loss = loss + cfg.distill_weight * distill_loss(logits, t_logits, mask)
            # The loss sums over documents and DDP averages gradients over ranks: scaled by
            # the world size, the update equals one process's on the whole global batch.
            (loss * world / cfg.accum).backward()
            total += loss.item() / cfg.accum
            tokens += int(batch.attention_mask.sum())
        out_of_time = cfg.time_limit is not None and time.time() - t0 > 60 * cfg.time_limit
        if world > 1:  # the global batch's loss and tokens for the log; stop when any rank must
            sums = torch.tensor([total, float(tokens), float(out_of_time)])
            torch.distributed.all_reduce(sums)
            total, tokens, out_of_time = sums[0].item(), int(sums[1].item()), bool(sums[2] > 0)
        seen_tokens += tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        running.append(total)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = seen_tokens / max(time.time() - t0, 1e-9)
            avg = sum(running) / len(running)
            bar.set_postfix(loss=f"{avg:.3f}", tok_s=f"{rate:.0f}")
            if metrics:
                metrics.write(json.dumps({"step": step, "loss": avg, "lr": opt.param_groups[0]["lr"],
                                          "tokens_per_s": rate}) + "\n")
                metrics.flush()
            running = []
        if rank == 0 and (step % cfg.val_every == 0 or step == cfg.steps):
            val = validate(model, val_examples, cfg, device, precision)
            metrics.write(json.dumps({"step": step, "val": val}) + "\n")
            metrics.flush()
            best = keep_best(out, model, step, val, best, cfg.keep_best, summary)
            save_trainer_state(out, model, opt, step, summary, best)
        elif out_of_time and step < cfg.steps and rank == 0:
            save_trainer_state(out, model, opt, step, summary, best)
        if out_of_time and step < cfg.steps:
            if rank == 0:
                print(f"\nstopped at step {step} of {cfg.steps} after the time limit of "
                      f"{cfg.time_limit:g} min; run the same command again to go on",
                      file=sys.stderr, flush=True)
            break
    bar.close()
    if metrics:
        metrics.close()
    return {"best": [{**e, "path": str(out / Path(e["path"]).name)} for e in best],
            "out": str(out), "step": step, "schedule": schedule.describe(),
            "precision": precision.describe()}
