"""Training of BERTSum summarizers: summed BCE over sentences, AdamW with linear warmup and decay
or Adam + Noam (the paper; schedules in schedule.py), gradient accumulation, autocast precision
(precision.py), DDP under torchrun,
validation ROUGE every K steps keeping the best k checkpoints, resume from the last checkpoint,
and optional distillation from a teacher checkpoint.

Run folder layout::

    OUT/last/            model.safetensors, config.json, optimizer.safetensors, trainer.json
    OUT/best-<step>/     the best k checkpoints by validation ROUGE (mean of R-1, R-2, R-Lsum)
    OUT/metrics.jsonl    one JSON object per logged step and per validation
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataError, load_corpus
from .evaluate import evaluate_selections, select_top_k
from .io import atomic_write_bytes, atomic_write_json
from .model import SummarizerModel, model_config
from .patterns import PatternContext
from .precision import resolve_precision
from .preprocess import Example, PreprocessConfig, prepare
from .schedule import OPTIMIZERS, make_schedule


@dataclass
class TrainConfig:
    preset: str = "tiny"
    plan: str = "none"
    inject: str = "heads"
    classifier: str = "linear"
    dataset: str = "embedded"
    train_split: str = "train"
    val_split: str = "val"
    limit: int | None = None  # documents per split (None: all)
    val_limit: int | None = None  # validation documents, if not `limit`
    max_len: int = 512
    steps: int = 1000
    batch_size: int = 4
    accum: int = 1
    optimizer: str = "adamw"  # or "adam-noam"; see schedule.py
    lr: float | None = None  # peak rate; None: schedule.default_peak_lr
    warmup: float | None = None  # steps (>= 1) or fraction of the run (< 1); None: by optimizer
    allow_short_warmup: bool = False  # let a run end inside its warmup
    weight_decay: float = 0.01
    val_every: int = 100
    keep_best: int = 3
    log_every: int = 10
    seed: int = 0
    out: str = "runs/train"
    teacher: str | None = None  # checkpoint folder of a teacher to distil from
    distill_weight: float = 1.0
    backend: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16, fp16: see precision.py
    progress: bool = True

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        for name in ("steps", "batch_size", "accum", "val_every", "keep_best", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, N)
    segment_ids: torch.Tensor  # (B, N)
    attention_mask: torch.Tensor  # (B, N)
    cls_positions: torch.Tensor  # (B, S), -1 at padding
    labels: torch.Tensor  # (B, S) float, 0 at padding
    ctx: PatternContext

    def to(self, device) -> Batch:
        t = [x.to(device) for x in (self.input_ids, self.segment_ids, self.attention_mask,
                                     self.cls_positions, self.labels)]
        c = self.ctx
        ctx = PatternContext(c.token_ids.to(device), c.valid.to(device), c.sentence_ids.to(device))
        return Batch(*t, ctx)


def collate(examples: Sequence[Example]) -> Batch:
    """Right-padded tensors and the batch's pattern context (built once, shared by layers)."""
    B = len(examples)
    N = max(len(e.input_ids) for e in examples)
    S = max(len(e.cls_positions) for e in examples)
    ids = torch.zeros(B, N, dtype=torch.long)
    seg = torch.zeros(B, N, dtype=torch.long)
    am = torch.zeros(B, N, dtype=torch.long)
    cls = torch.full((B, S), -1, dtype=torch.long)
    labels = torch.zeros(B, S)
    for b, e in enumerate(examples):
        n, s = len(e.input_ids), len(e.cls_positions)
        ids[b, :n] = torch.tensor(e.input_ids)
        seg[b, :n] = torch.tensor(e.segment_ids)
        am[b, :n] = 1
        cls[b, :s] = torch.tensor(e.cls_positions)
        labels[b, :s] = torch.tensor(e.labels, dtype=torch.float)
    ctx = PatternContext.from_spans(ids, am, [e.spans for e in examples])
    return Batch(ids, seg, am, cls, labels, ctx)


def sentence_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed binary cross-entropy over the real sentences (BERTSum)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (bce * mask).sum()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed binary KL(teacher || student) of the sentence probabilities: 0 when they agree."""
    p = torch.sigmoid(teacher)
    kl = (p * (F.logsigmoid(teacher) - F.logsigmoid(student))
          + (1 - p) * (F.logsigmoid(-teacher) - F.logsigmoid(-student)))
    return (kl * mask).sum()


# --------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_scores(model: SummarizerModel, examples: Sequence[Example], batch_size: int = 8,
                   device: str | torch.device = "cpu", precision: str | None = None
                   ) -> list[list[float]]:
    """Sentence probabilities of each example, batches grouped by length."""
    model.eval()
    autocast = resolve_precision(precision, device).autocast
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[list[float]] = [[] for _ in examples]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = collate([examples[j] for j in idx]).to(device)
        with autocast():
            logits = model(batch.input_ids, batch.segment_ids, batch.attention_mask,
                           batch.cls_positions, batch.ctx)
        probs = torch.sigmoid(logits.float())
        for row, j in enumerate(idx):
            out[j] = probs[row, :len(examples[j].cls_positions)].tolist()
    return out


def evaluate_model(model: SummarizerModel, examples: Sequence[Example], out_dir: Path | None = None,
                   name: str = "model", k: int = 3, trigram_blocking: bool = True,
                   device="cpu", extra: dict | None = None, precision: str | None = None):
    scores = predict_scores(model, examples, device=device, precision=precision)
    selections = [select_top_k(s, ex.sentences, k, trigram_blocking)
                  for s, ex in zip(scores, examples, strict=True)]
    return evaluate_selections(examples, selections,
                               lambda ex, sel: [ex.sentences[i] for i in sel], out_dir, name, extra)


# --------------------------------------------------------------------------- checkpoints


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, s in state["state"].items():
        meta["state"][str(pid)] = {}
        for key, val in s.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                meta["state"][str(pid)][key] = val
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {int(pid): dict(vals) for pid, vals in meta["state"].items()}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, model: SummarizerModel, optimizer, step: int, summary: dict,
                    best: list) -> None:
    """Write a resumable checkpoint: weights and config first, trainer state last, so a folder
    with trainer.json is complete. `summary` (settings, schedule, precision) goes into
    config.json."""
    from safetensors.torch import save

    model.save(folder, {**summary, "step": step})
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_write_bytes(folder / "optimizer.safetensors", save(tensors))
    atomic_write_json(folder / "trainer.json", {
        "step": step, "optimizer": meta, "best": best,
        "rng": {"python": list(random.getstate()[1]), "numpy": np.random.get_state()[1].tolist()}})


def load_trainer_state(folder: Path, optimizer) -> tuple[int, list]:
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "trainer.json").read_text())
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise RuntimeError(f"{folder}: cannot resume, trainer state unreadable ({e})") from None
    torch.set_rng_state(tensors.pop("rng.torch"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    state = random.getstate()
    random.setstate((state[0], tuple(meta["rng"]["python"]), state[2]))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(meta["rng"]["numpy"], dtype=np.uint32),
                         *np_state[2:]))
    return meta["step"], meta["best"]


# --------------------------------------------------------------------------- training loop


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _distributed() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_examples(cfg: TrainConfig, split: str) -> list[Example]:
    limit = cfg.val_limit if split == cfg.val_split and cfg.val_limit is not None else cfg.limit
    corpus = load_corpus(cfg.dataset, split, limit=limit)
    prepared = prepare(corpus, PreprocessConfig(max_len=cfg.max_len))
    if not prepared.examples:
        raise DataError(f"{cfg.dataset}/{split}: no usable document")
    if not any(e.oracle for e in prepared.examples):
        raise DataError(f"{cfg.dataset}/{split}: the oracle selects no sentence in any document "
                        "(references empty or unrelated?)")
    return prepared.examples


def train(cfg: TrainConfig, train_examples: list[Example] | None = None,
          val_examples: list[Example] | None = None) -> dict:
    """Train (or resume) a model; returns the best validation scores and the run folder."""
    rank, world = _distributed()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision, device)
    schedule = make_schedule(cfg.optimizer, cfg.steps, cfg.lr, cfg.warmup,
                             pretrained=model_config(cfg.preset).pretrained is not None,
                             allow_short_warmup=cfg.allow_short_warmup)
    summary = {"train": asdict(cfg), "schedule": schedule.to_dict(),
               "precision": precision.describe()}
    _seed_all(cfg.seed)
    train_examples = train_examples if train_examples is not None else load_examples(cfg, cfg.train_split)
    val_examples = val_examples if val_examples is not None else load_examples(cfg, cfg.val_split)

    last = out / "last"
    if (last / "trainer.json").is_file():
        model = SummarizerModel.load(last)
        if (model.cfg.preset, model.cfg.plan, model.cfg.inject) != (
                cfg.preset, model_config(cfg.preset, cfg.plan, cfg.inject).plan, cfg.inject):
            raise RuntimeError(f"{last}: the checkpoint is for another preset or plan; use another "
                               "--out or the same settings")
    else:
        model = SummarizerModel(model_config(cfg.preset, cfg.plan, cfg.inject,
                                        classifier=cfg.classifier,
                                        max_positions=max(512, cfg.max_len)))
    model.to(device).set_backend(cfg.backend)
    teacher = None
    if cfg.teacher:
        teacher = SummarizerModel.load(cfg.teacher).to(device).eval()
        teacher.set_backend(cfg.backend)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam-noam":
        opt = torch.optim.Adam(params, lr=schedule.peak_lr, betas=(0.9, 0.999), eps=1e-9)
    else:
        opt = torch.optim.AdamW(params, lr=schedule.peak_lr, weight_decay=cfg.weight_decay)
    step, best = (load_trainer_state(last, opt) if (last / "trainer.json").is_file() else (0, []))
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8") if rank == 0 else None

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
        total = 0.0
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the step's documents: resumable
        for _ in range(cfg.accum):
            docs = [train_examples[rng.randrange(len(train_examples))]
                    for _ in range(cfg.batch_size * world)][rank::world]
            batch = collate(docs).to(device)
            mask = (batch.cls_positions >= 0).float()
            with precision.autocast():
                logits = ddp(batch.input_ids, batch.segment_ids, batch.attention_mask,
                             batch.cls_positions, batch.ctx).float()
                loss = sentence_loss(logits, batch.labels, mask)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(batch.input_ids, batch.segment_ids,
                                           batch.attention_mask, batch.cls_positions,
                                           batch.ctx).float()
                    loss = loss + cfg.distill_weight * distill_loss(logits, t_logits, mask)
            (loss / cfg.accum).backward()
            total += loss.item() / cfg.accum
            seen_tokens += int(batch.attention_mask.sum())
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
            scores = evaluate_model(model, val_examples, device=device, precision=cfg.precision)
            val = {m: s.mean for m, s in scores.items()}
            val["mean"] = sum(val.values()) / 3
            metrics.write(json.dumps({"step": step, "val": val}) + "\n")
            metrics.flush()
            best = _keep_best(out, model, step, val, best, cfg.keep_best, summary)
            save_checkpoint(last, model, opt, step, summary, best)
    bar.close()
    if metrics:
        metrics.close()
    return {"best": best, "out": str(out), "step": step, "schedule": schedule.describe(),
            "precision": precision.describe()}


def _keep_best(out: Path, model: SummarizerModel, step: int, val: dict, best: list,
               keep_best: int, summary: dict) -> list:
    """Keep the best `keep_best` checkpoints by validation ROUGE; returns the updated list of
    {"step", "val", "path"} best first."""
    entry = {"step": step, "val": val, "path": str(out / f"best-{step}")}
    ranked = sorted(best + [entry], key=lambda e: -e["val"]["mean"])
    keep, drop = ranked[:keep_best], ranked[keep_best:]
    if entry in keep:
        model.save(entry["path"], {**summary, "step": step, "val": val})
    for e in drop:
        if e is not entry:
            shutil.rmtree(e["path"], ignore_errors=True)
    return keep


def best_checkpoint(run: str | Path) -> Path:
    """The best checkpoint of a run folder (or the folder itself if it is a checkpoint)."""
    run = Path(run)
    if (run / "model.safetensors").is_file():
        return run
    meta = run / "last" / "trainer.json"
    if meta.is_file():
        best = json.loads(meta.read_text())["best"]
        if best:
            return Path(best[0]["path"])
        return run / "last"
    raise RuntimeError(f"{run}: no checkpoint here (expected model.safetensors or last/)")
