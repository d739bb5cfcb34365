"""Checkpoints: every file name and every read and write of a model or a training run.

A checkpoint is a folder with ``model.safetensors`` (weights) and ``config.json`` (the model
config under "attnsum", and what training recorded beside it: settings, schedule, precision,
step). A run folder holds::

    RUN/last/            a checkpoint plus optimizer.safetensors and trainer.json (resume state)
    RUN/best-<step>/     the best k checkpoints by validation ROUGE
    RUN/metrics.jsonl    one JSON object per logged step and per validation

Nothing is pickled; every file is written atomically (io.py), trainer.json last, so a folder with
trainer.json is complete.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_bytes, atomic_write_json
from .model import ModelConfig, SummarizerModel

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
OPTIMIZER_FILE, TRAINER_FILE, METRICS_FILE = "optimizer.safetensors", "trainer.json", "metrics.jsonl"
LAST = "last"


def best_dir(run: Path, step: int) -> Path:
    return run / f"best-{step}"


# --------------------------------------------------------------------------- models


def save_model(model: SummarizerModel, folder: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
    atomic_write_json(folder / CONFIG_FILE, {"attnsum": asdict(model.cfg), **(extra or {})})


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise RuntimeError(f"{folder}: not an attnsum checkpoint (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig(**data["attnsum"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RuntimeError(f"{path}: not an attnsum checkpoint config ({e})") from None
    except ValueError as e:  # a plan naming a pattern not registered here, say
        raise RuntimeError(f"checkpoint {folder}: {e}") from None


def read_training_summary(folder: str | Path) -> dict:
    """What training recorded beside the model config (settings, schedule, precision, step);
    empty for a checkpoint saved outside training."""
    data = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k != "attnsum"}


def best_checkpoint(run: str | Path) -> Path:
    """The best checkpoint of a run folder (or the folder itself if it is a checkpoint)."""
    run = Path(run)
    if (run / WEIGHTS_FILE).is_file():
        return run
    meta = run / LAST / TRAINER_FILE
    if meta.is_file():
        best = json.loads(meta.read_text())["best"]
        return Path(best[0]["path"]) if best else run / LAST
    raise RuntimeError(f"{run}: no checkpoint here (expected {WEIGHTS_FILE} or {LAST}/)")


def load_model(path: str | Path, map_location="cpu") -> SummarizerModel:
    """The model of a checkpoint folder, or of a run folder's best checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = best_checkpoint(path) if not (Path(path) / CONFIG_FILE).is_file() else Path(path)
    model = SummarizerModel(read_config(folder), load_pretrained=False)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise RuntimeError(f"{folder}: cannot read {WEIGHTS_FILE} ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{folder}: weights do not match the config (missing "
                           f"{len(missing)}, unexpected {len(unexpected)} tensors)")
    return model


# --------------------------------------------------------------------------- training runs


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


def has_trainer_state(run: Path) -> bool:
    return (run / LAST / TRAINER_FILE).is_file()


def save_trainer_state(run: Path, model: SummarizerModel, optimizer, step: int, summary: dict,
                       best: list) -> None:
    """Write RUN/last: weights and config first (with `summary`: settings, schedule,
    precision), trainer state last."""
    from safetensors.torch import save

    folder = run / LAST
    save_model(model, folder, {**summary, "step": step})
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_write_bytes(folder / OPTIMIZER_FILE, save(tensors))
    atomic_write_json(folder / TRAINER_FILE, {
        "step": step, "optimizer": meta, "best": best,
        "rng": {"python": list(random.getstate()[1]), "numpy": np.random.get_state()[1].tolist()}})


def load_trainer_state(run: Path, optimizer) -> tuple[int, list]:
    """Restore the optimizer and RNG states of RUN/last; returns (step, best list)."""
    from safetensors.torch import load_file

    folder = run / LAST
    try:
        meta = json.loads((folder / TRAINER_FILE).read_text())
        tensors = load_file(str(folder / OPTIMIZER_FILE))
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


def keep_best(run: Path, model: SummarizerModel, step: int, val: dict, best: list, k: int,
              summary: dict) -> list:
    """Keep the best `k` checkpoints by validation ROUGE (mean of R-1, R-2, R-Lsum); returns the
    updated list of {"step", "val", "path"}, best first."""
    entry = {"step": step, "val": val, "path": str(best_dir(run, step))}
    ranked = sorted(best + [entry], key=lambda e: -e["val"]["mean"])
    keep, drop = ranked[:k], ranked[k:]
    if entry in keep:
        save_model(model, entry["path"], {**summary, "step": step, "val": val})
    for e in drop:
        if e is not entry:
            shutil.rmtree(e["path"], ignore_errors=True)
    return keep
