"""Checkpoints: every file name and every read and write of a model or a training run.

A checkpoint is a folder with ``model.safetensors`` (weights) and ``config.json`` (the model
config under "attnsum", and what training recorded beside it: settings, schedule, precision,
step). A run folder holds::

    RUN/last -> last-<step>/   a checkpoint plus optimizer.safetensors and trainer.json (resume
                               state); `last` is a symbolic link, moved in one atomic rename
    RUN/best-<step>/           the best k checkpoints by validation ROUGE
    RUN/metrics.jsonl          one JSON object per logged step and per validation

A release (`save_release`, ``attnsum release``) is a checkpoint made small for git: weights in
bf16, and word embeddings left frozen at MiniLM's referenced instead of stored (config.json
"release": {"word_embeddings": "minilm"}); `load_model` fills them from the MiniLM package.

Nothing is pickled; every file is written atomically (io.py), trainer.json last, so a folder with
trainer.json is complete. A kill at any moment leaves RUN/last complete: the next resume state is
written whole into a fresh last-<step>/ before the link moves to it, and folders that the link
or the best list no longer name are removed only after that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path

import torch

from .attention import HeadPlan, PatternError
from .candidates import load_selector
from .config import MAX_LEN, ModelConfig
from .errors import CheckpointError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import SummarizerModel
from .preprocess import minilm_dir

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# config.json's "model_type", the key Hugging Face tools read first (the settings are under "attnsum")
MODEL_TYPE = "attnsum"
OPTIMIZER_FILE, TRAINER_FILE, METRICS_FILE = "optimizer.safetensors", "trainer.json", "metrics.jsonl"
LAST = "last"


def best_dir(run: Path, step: int) -> Path:
    return run / f"best-{step}"


# --------------------------------------------------------------------------- models


def config_record(cfg: ModelConfig) -> dict:
    """The model config as JSON data (config.json "attnsum"): the plan in `HeadPlan.to_dict`
    form."""
    return {**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, "plan": cfg.plan.to_dict()}


def save_model(model: SummarizerModel, folder: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
    atomic_write_json(folder / CONFIG_FILE, {"model_type": MODEL_TYPE, "attnsum": config_record(model.cfg),
                                             **(extra or {})})


def read_json(path: Path):
    """A JSON file of a checkpoint or run; a RuntimeError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# The JSON types of ModelConfig's fields, by their annotations (bool is no int here).
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,),
                "int | None": (int, type(None)), "str | None": (str, type(None))}


def _check_field_types(record: dict, path: Path) -> None:
    for f in fields(ModelConfig):
        want = _FIELD_TYPES.get(f.type)
        value = record.get(f.name)
        if f.name in record and want and (isinstance(value, bool) or not isinstance(value, want)):
            raise CheckpointError(f"{path}: \"{f.name}\" is {value!r}, not {f.type}")


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not an attnsum checkpoint (no {CONFIG_FILE})")
    data = read_json(path)
    try:
        record = dict(data["attnsum"])
        if record.get("max_len") is None:  # older checkpoints: the length training recorded,
            # else their positions, at most MAX_LEN
            record["max_len"] = (data.get("train", {}).get("max_len")
                                 or min(record.get("max_positions", MAX_LEN), MAX_LEN))
        _check_field_types(record, path)
        if record.get("plan") is not None:  # null: every head learned (older checkpoints)
            record["plan"] = HeadPlan.from_dict(record["plan"])
        return ModelConfig(**record)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not an attnsum checkpoint config ({e})") from None
    except ValueError as e:  # a plan naming a pattern not registered here, say
        raise CheckpointError(f"checkpoint {folder}: {e}") from None


def read_plan_file(path: str | Path) -> HeadPlan:
    """A plan file (`write_plan_file`, the report's download): `HeadPlan.to_dict` as JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PatternError(f"cannot read plan file {path}: {e.strerror}") from None
    try:
        return HeadPlan.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise PatternError(f"plan file {path}: bad JSON ({e})") from None
    except PatternError as e:
        raise PatternError(f"plan file {path}: {e}") from None


def write_plan_file(plan: HeadPlan, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(plan.to_dict()) + "\n")


def weights_digest(folder: str | Path | None) -> str | None:
    """The first 16 hex digits of the SHA-256 of a checkpoint's weights file: names a model
    without saying where it lies."""
    import hashlib

    if folder is None or not (Path(folder) / WEIGHTS_FILE).is_file():
        return None
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_training_summary(folder: str | Path) -> dict:
    """What training recorded beside the model config (settings, schedule, precision, step);
    empty for a checkpoint saved outside training."""
    data = read_json(Path(folder) / CONFIG_FILE)
    return {k: v for k, v in data.items() if k not in ("model_type", "attnsum")}


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # "owner/name" of a Hugging Face Hub repository


def hub_id(path: str | Path) -> str | None:
    """`path` as a Hub repository id where it names no file or folder here and has that form."""
    return str(path) if not Path(path).exists() and HUB_ID.fullmatch(str(path)) else None


def hub_checkpoint(repo_id: str, download: bool = False) -> Path:
    """The folder of Hub repository `repo_id` in the local Hugging Face cache (HF_HUB_CACHE);
    fetched first only with `download` (the Python API's choice: nothing is fetched otherwise)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, "*.md"],
                                        local_files_only=not download))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such checkpoint (no file or folder, nor a repository "
                           f"in the Hugging Face cache; fetch one once with `hf download "
                           f"{repo_id}` or Summarizer.from_pretrained({repo_id!r}, "
                           f"download=True))") from None
    return resolve_checkpoint(folder)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder that `path` names, for every command and the Python API: a weights
    file (``model.safetensors``), a checkpoint folder, a run folder (its best checkpoint, else
    its last), or a Hub repository id ("owner/name") already in the local Hugging Face cache
    (`hub_checkpoint`). A run folder works wherever it was made or moved to: trainer.json names
    its checkpoints relative to the run folder."""
    path = Path(path)
    if path.name == WEIGHTS_FILE and path.is_file():
        path = path.parent
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    last = last_checkpoint(path)
    if last is not None:
        best = read_json(last / TRAINER_FILE).get("best", [])
        # older runs wrote the path as made ("runs/x/best-2"): its last part names the folder
        return path / Path(best[0]["path"]).name if best else last
    if hub_id(path):
        return hub_checkpoint(hub_id(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (no file or folder)")
    raise CheckpointError(f"{path}: not an attnsum checkpoint (expected {CONFIG_FILE} and "
                       f"{WEIGHTS_FILE}, or a run folder with {LAST}/)")


def load_model(path: str | Path, map_location="cpu") -> SummarizerModel:
    """The model of a checkpoint (see `resolve_checkpoint`); `model.checkpoint` is its folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_checkpoint(path)
    model = SummarizerModel(read_config(folder), load_pretrained=False)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read {WEIGHTS_FILE} ({e})") from None
    release = read_training_summary(folder).get("release", {})
    if release.get("word_embeddings") == "minilm" and WORD_EMBEDDINGS not in state:
        state[WORD_EMBEDDINGS] = minilm_word_embeddings()
    _check_weights(folder, state, model.state_dict())
    model.load_state_dict(state)
    model.checkpoint = folder
    model.selector = load_selector(folder)
    return model


WORD_EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"


def _check_weights(folder: Path, state: dict, want: dict) -> None:
    """One line naming the folder and the first tensor that is missing, extra, of another
    shape than config.json makes, or not finite (NaN or infinite weights score NaN)."""
    where = f"{folder / WEIGHTS_FILE}"
    missing = [k for k in want if k not in state]
    if missing:
        raise CheckpointError(f"{where}: no tensor {missing[0]!r} that {CONFIG_FILE} calls for "
                           f"({len(missing)} missing)")
    extra = [k for k in state if k not in want]
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]!r} is not in the model {CONFIG_FILE} "
                           f"describes ({len(extra)} such)")
    for k, t in state.items():
        if t.shape != want[k].shape:
            raise CheckpointError(f"{where}: {k} is {tuple(t.shape)}, {CONFIG_FILE} makes it "
                               f"{tuple(want[k].shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: {k} holds NaN or infinite values")


def minilm_word_embeddings() -> torch.Tensor:
    """MiniLM's word embeddings (30,522 x 384, fp32) from the package that ships it."""
    from safetensors import safe_open

    with safe_open(str(minilm_dir() / WEIGHTS_FILE), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


def save_release(model: SummarizerModel, folder: str | Path, extra: dict) -> int:
    """Write a release: bf16 weights without the word embeddings when they are MiniLM's exactly
    (trained with --freeze-embeddings from minilm), and config.json. Returns the weights file's
    size in bytes."""
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    release = {"dtype": "bfloat16"}
    mine, theirs = state[WORD_EMBEDDINGS], minilm_word_embeddings()
    if mine.shape == theirs.shape and torch.equal(mine, theirs):
        del state[WORD_EMBEDDINGS]
        release["word_embeddings"] = "minilm"
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    data = save(state)
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    atomic_write_json(folder / CONFIG_FILE, {"model_type": MODEL_TYPE, "attnsum": config_record(model.cfg),
                                             **extra, "release": release})
    return len(data)


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


def last_checkpoint(run: str | Path) -> Path | None:
    """RUN/last when complete; else (a kill between moving the old folder aside and linking the
    new one) the newest complete last-<step>/; None for a run with no resume state."""
    run = Path(run)
    if (run / LAST / TRAINER_FILE).is_file():
        return run / LAST
    done = [p for p in run.glob(f"{LAST}-*") if (p / TRAINER_FILE).is_file()]
    return max(done, key=lambda p: read_json(p / TRAINER_FILE).get("step", 0), default=None)


def has_trainer_state(run: Path) -> bool:
    return last_checkpoint(run) is not None


def _point_last(run: Path, target: str) -> None:
    """Make RUN/last a symbolic link to RUN/`target` with one atomic rename."""
    link, tmp = run / LAST, run / f".{LAST}.link"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    if link.is_dir() and not link.is_symlink():  # a run folder written before links
        os.rename(link, run / f"{LAST}-moved")
    os.replace(tmp, link)


def save_trainer_state(run: Path, model: SummarizerModel, optimizer, step: int, summary: dict,
                       best: list) -> None:
    """Write the resume state into a fresh RUN/last-<step>/ (weights and config with `summary`:
    settings, schedule, precision; then the optimizer; trainer.json last), point RUN/last at it,
    then remove the last-*/ and best-*/ folders no longer named (by the link or by `best`)."""
    from safetensors.torch import save

    folder = run / f"{LAST}-{step}"
    shutil.rmtree(folder, ignore_errors=True)  # a torn earlier attempt at this step
    save_model(model, folder, {**summary, "step": step})
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    atomic_write_bytes(folder / OPTIMIZER_FILE, save(tensors))
    atomic_write_json(folder / TRAINER_FILE, {"step": step, "optimizer": meta, "best": best})
    _point_last(run, folder.name)
    named = {folder.name} | {Path(e["path"]).name for e in best}
    for old in [*run.glob(f"{LAST}-*"), *run.glob("best-*")]:
        if old.name not in named:
            shutil.rmtree(old, ignore_errors=True)


def trim_metrics(run: Path, step: int) -> None:
    """Keep the whole lines of RUN/metrics.jsonl up to `step`: a resumed run logs the later
    steps again, and a kill mid-write leaves a torn last line."""
    path = run / METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n"):
            break
        if record.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(keep))


def load_trainer_state(run: Path, optimizer) -> tuple[int, list]:
    """Restore the optimizer state of RUN/last; returns (step, best list). Random state needs
    no saving: train.py seeds every step from (seed, step, rank)."""
    from safetensors.torch import load_file

    folder = last_checkpoint(run)
    try:
        meta = read_json(folder / TRAINER_FILE)
        tensors = load_file(str(folder / OPTIMIZER_FILE))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot resume, trainer state unreadable ({e})") from None
    tensors.pop("rng.torch", None)  # written by earlier versions; steps now seed themselves
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return meta["step"], meta["best"]


def keep_best(run: Path, model: SummarizerModel, step: int, val: dict, best: list, k: int,
              summary: dict) -> list:
    """Keep the best `k` checkpoints by validation ROUGE (mean of R-1, R-2, R-Lsum); returns the
    updated list of {"step", "val", "path"}, best first, for `save_trainer_state`; "path" is the
    folder's name inside the run folder."""
    entry = {"step": step, "val": val, "path": best_dir(run, step).name}
    keep = sorted(best + [entry], key=lambda e: -e["val"]["mean"])[:k]
    if entry in keep:
        save_model(model, run / entry["path"], {**summary, "step": step, "val": val})
    return keep  # the folders dropped go once the trainer state names the new list
