"""attnsum: extractive summaries with human-guided attention patterns.

The command line, ``attnsum <command> ...``: argparse and dispatch only; each command's body is
``cmd_<command>`` of commands.py, which reads the parsed options and calls the package's
functions. A user mistake prints one clear ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import MAX_LEN
from .errors import AttnsumError
from .extras import need
from .preprocess import MAX_CHARS


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _number(kind, low=None, high=None, low_open: bool = False, what: str = ""):
    """An argparse type: `kind` (int or float) within [low, high] (low excluded when
    `low_open`), so a mistyped option is one line of argparse's, not a failure later."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_positive_int = _number(int, 1, what="a whole number of at least 1")
_port = _number(int, 1, 65535, what="a TCP port (1 to 65535)")
_positive_float = _number(float, 0, low_open=True, what="a number above 0")
_nonneg_float = _number(float, 0, what="a number of at least 0")
_fraction = _number(float, 0, 1, what="a number from 0 to 1")


def _add_dataset_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("--dataset", default="embedded",
                   help="embedded (250 ACL papers with summaries, shipped by the aclsum package), "
                        "cnn_dailymail, a JSON Lines / Parquet file or folder, or a shard folder "
                        "(attnsum shard)")
    if split:
        p.add_argument("--split", default="test", help="train, val or test")
    p.add_argument("--article-field", default="article", help="field of a local file's article")
    p.add_argument("--summary-field", default="highlights", help="field of a local file's summary")
    p.add_argument("--id-field", default="id", help="field of a local file's document id")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N documents")
    _add_max_len_arg(p)


def _add_max_len_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-len", dest="max_len", type=_positive_int, default=None,
                   help="input length in word pieces (default: the length the checkpoint was "
                        f"trained at; {MAX_LEN} without a checkpoint)")


def _add_precision_arg(p: argparse.ArgumentParser) -> None:
    from .precision import DEFAULT_PRECISION, PRECISIONS

    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help="auto: bf16 where the GPU or CPU has it natively, else fp32; fp16 on "
                        "CUDA only")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the options of that command alone (the others are listed, with
    none of their options): `attnsum --help` and most commands' help then import no model code."""
    parser = argparse.ArgumentParser(
        prog="attnsum", description=__doc__.splitlines()[0],
        epilog="Start with `attnsum summarize ARTICLE.txt` (the released news model) or "
               "`attnsum pipeline` (the whole method on a small embedded corpus); "
               "`attnsum COMMAND --help` shows a command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"attnsum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, (text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Help)
        if only is None or only == name:
            options(p)
    return parser


def _summarize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*",
                   help=".txt files (one document each), .jsonl(.gz) and .parquet files, "
                        "folders of them, dataset:NAME:SPLIT (a corpus as evaluate reads it); "
                        "- or nothing: stdin")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint or run folder (default: the released news model in attnsum/models/)")
    p.add_argument("--field", default="text", help="the text field of JSON Lines input")
    p.add_argument("--jsonl", action="store_true", help="stdin is JSON Lines")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "text"],
                   help="jsonl: a record per document (summary, indices, scores); text: the "
                        "summary's sentences, a blank line between documents")
    p.add_argument("--out", default=None, help="output file (default: stdout)")
    p.add_argument("-k", type=_positive_int, default=3, help="sentences per summary")
    p.add_argument("--no-trigram-blocking", action="store_true",
                   help="allow sentences that repeat a trigram of one already chosen")
    p.add_argument("--chunk", type=_positive_int, default=32,
                   help="documents held in memory and written at once")
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N documents")
    p.add_argument("--max-chars", dest="max_chars", type=_positive_int, default=MAX_CHARS,
                   help="longest document in characters (the service's default); a longer one "
                        "gets an error record")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUT over even where OUT.partial was begun with other inputs or "
                        "options")
    _add_max_len_arg(p)
    _add_device_arg(p)
    _add_precision_arg(p)
    _add_patterns_arg(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .serve import TOKEN_ENV, ServeConfig

    d = ServeConfig()

    p.add_argument("--checkpoint", default=None,
                   help="checkpoint or run folder (default: the released news model in attnsum/models/)")
    p.add_argument("--host", default=d.host,
                   help="bind address; the default answers this machine only")
    p.add_argument("--port", type=_port, default=d.port, help="TCP port")
    p.add_argument("--max-body", dest="max_body", type=_positive_int, default=d.max_body,
                   help="largest request body in bytes (413 beyond)")
    p.add_argument("--max-docs", dest="max_docs", type=_positive_int, default=d.max_docs,
                   help="most documents in one request")
    p.add_argument("--max-chars", dest="max_chars", type=_positive_int, default=d.max_chars,
                   help="longest document in characters")
    p.add_argument("--max-batch", dest="max_batch", type=_positive_int, default=d.max_batch,
                   help="most documents scored together (requests are batched)")
    p.add_argument("--max-wait-ms", dest="max_wait_ms", type=_nonneg_float, default=d.max_wait_ms,
                   help="how long the batcher waits to fill a batch")
    p.add_argument("--timeout", type=_positive_float, default=d.timeout_s,
                   help="seconds per request, reading to answer (504 beyond)")
    p.add_argument("--header-timeout", dest="header_timeout", type=_positive_float,
                   default=d.header_timeout_s,
                   help="seconds a client has to send a request's headers (the connection is "
                        "closed beyond)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes serving the port, each with its own model (memory: one model "
                        "each)")
    p.add_argument("--max-queue", dest="max_queue", type=_positive_int, default=d.max_queue,
                   help="most documents accepted and not yet answered (429 with Retry-After "
                        "beyond)")
    p.add_argument("--api-token", dest="api_token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on /summarize (default: the "
                        f"environment variable {TOKEN_ENV}; none: open)")
    p.add_argument("--cors-origin", dest="cors_origin", action="append", default=[],
                   help="a browser origin allowed to call the service (repeatable; none by "
                        "default)")
    _add_max_len_arg(p)
    _add_device_arg(p)
    _add_precision_arg(p)
    _add_patterns_arg(p)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default="lead3,oracle",
                   help="baselines to score: lead3, oracle, a comma-separated list, or '' for none")
    _add_dataset_args(p)
    p.add_argument("--checkpoint", default=None,
                   help="also evaluate a trained model (checkpoint or run folder)")
    p.add_argument("--scores", default=None,
                   help="also evaluate sentence scores written by `attnsum score` (selection "
                        "and ROUGE here, the model elsewhere)")
    p.add_argument("-k", type=_positive_int, default=3, help="sentences per model summary")
    p.add_argument("--no-trigram-blocking", action="store_true",
                   help="model selections without trigram blocking")
    _add_precision_arg(p)
    _add_device_arg(p)
    p.add_argument("--out", default="runs/evaluate",
                   help="folder for per-document predictions and scores")
    _add_patterns_arg(p)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .config import BACKENDS, CLASSIFIERS, INJECTIONS, POOLINGS, PRESETS, VAL_METRICS, TrainConfig
    from .schedule import OPTIMIZERS

    d = TrainConfig.defaults()

    p.add_argument("--preset", default=d["preset"], choices=list(PRESETS),
                   help="model shape (attnsum/config.py): minilm and bert-base are pretrained; "
                        "student-* and tiny start from random weights or --init-from")
    p.add_argument("--plan", default="none",
                   help="head plan: none, paper, LAYERS:HEADS=PATTERN/MODE;... or a plan "
                        "file (.json, from `attnsum analyze` or the report)")
    p.add_argument("--inject", default=d["inject"], choices=INJECTIONS,
                   help="patterns on the encoder's own heads, or on side layers (pretrained)")
    p.add_argument("--classifier", default=d["classifier"], choices=CLASSIFIERS,
                   help="sentence scorer: a linear layer, or BERTSum's 2-layer inter-sentence "
                        "transformer")
    p.add_argument("--pooling", default=d["pooling"], choices=POOLINGS,
                   help="a sentence's vector: its [CLS] output, or the mean of its word pieces' "
                        "outputs")
    p.add_argument("--dropout", type=_fraction, default=None, help="dropout (default: the preset's)")
    p.add_argument("--dataset", default=d["dataset"],
                   help="embedded, cnn_dailymail, a JSON Lines / Parquet file or folder, or a "
                        "shard folder (attnsum shard)")
    p.add_argument("--train-split", dest="train_split", default=d["train_split"],
                   help="the split trained on")
    p.add_argument("--val-split", dest="val_split", default=d["val_split"],
                   help="the split validated on")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="documents per split (default: all)")
    p.add_argument("--val-limit", dest="val_limit", type=_positive_int, default=None,
                   help="validation documents (default: --limit)")
    p.add_argument("--max-len", dest="max_len", type=_positive_int, default=d["max_len"],
                   help="input length in word pieces")
    p.add_argument("--steps", type=_positive_int, default=d["steps"], help="optimizer steps")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=d["batch_size"],
                   help="documents per step and process")
    p.add_argument("--accum", type=_positive_int, default=d["accum"],
                   help="gradient accumulation: batches per optimizer step")
    p.add_argument("--optimizer", default=d["optimizer"], choices=OPTIMIZERS,
                   help="adamw: linear warmup and decay to zero; adam-noam: the paper's Adam + "
                        "Noam (its exact recipe with --steps 50000)")
    p.add_argument("--lr", type=_positive_float, default=d["lr"],
                   help="peak learning rate (default: 5e-5 AdamW on a pretrained encoder, 5e-4 "
                        "AdamW from scratch, 2e-5 Noam)")
    p.add_argument("--warmup", type=_nonneg_float, default=d["warmup"],
                   help="warmup steps (>= 1) or fraction of the run (< 1); default 6%% of the "
                        "run for AdamW, min(10000, 20%%) for Noam")
    p.add_argument("--allow-short-warmup", dest="allow_short_warmup", action="store_true",
                   help="let a run end before its warmup does")
    _add_precision_arg(p)
    p.add_argument("--val-every", dest="val_every", type=_positive_int, default=d["val_every"],
                   help="steps between validations (each keeps the checkpoint if among the best)")
    p.add_argument("--keep-best", dest="keep_best", type=_positive_int, default=d["keep_best"],
                   help="best checkpoints kept")
    p.add_argument("--log-every", dest="log_every", type=_positive_int, default=d["log_every"],
                   help="steps between lines of metrics.jsonl")
    p.add_argument("--val-metric", dest="val_metric", default=d["val_metric"],
                   choices=VAL_METRICS,
                   help="what ranks checkpoints: validation ROUGE, or the validation loss (no "
                        "texts or rouge-score needed)")
    p.add_argument("--time-limit", dest="time_limit", type=_positive_float, default=None,
                   help="minutes: after a step past this, save the resume state and stop with exit "
                        "status 3 (a rerun goes on): for jobs with a time limit")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seed of the documents drawn and of the initial weights")
    p.add_argument("--teacher", default=None, help="checkpoint to distil sentence scores from")
    p.add_argument("--init-from", dest="init_from", default=None,
                   help="checkpoint, or pretrained preset (minilm), to start from by layer "
                        "dropping (same width and heads)")
    p.add_argument("--init-layers", dest="init_layers", default=None,
                   help="its layers to take, e.g. 1,3,5 (default: evenly spaced, ending at the "
                        "last)")
    p.add_argument("--distill-weight", dest="distill_weight", type=_nonneg_float, default=d["distill_weight"],
                   help="weight of the distillation loss beside the oracle labels' (--teacher)")
    p.add_argument("--freeze-embeddings", dest="freeze_embeddings", action="store_true",
                   help="keep the word embeddings as initialised (a release then references the "
                        "pretrained package's instead of storing them)")
    p.add_argument("--backend", default=d["backend"],  # checked by TrainConfig: one error line
                   help=f"attention path (attention/dispatch.py): {', '.join(BACKENDS)} (auto: the "
                        "fused Triton kernel on a GPU, the PyTorch path on CPU)")
    p.add_argument("--out", default=d["out"], help="run folder (resumed if it holds a checkpoint)")
    _add_patterns_arg(p)


def _score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    _add_dataset_args(p)
    p.set_defaults(split="val")
    _add_precision_arg(p)
    _add_device_arg(p)
    p.add_argument("--out", required=True, help="JSON Lines file: {id, scores} per document")
    _add_patterns_arg(p)


def _shard_options(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p, split=False)
    p.add_argument("--splits", default="train,val", help="comma-separated splits")
    p.add_argument("--out", required=True, help="shard folder (shards/ is ignored by git)")


def _analyze_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    _add_dataset_args(p)
    p.set_defaults(split="val")
    p.add_argument("--top-heads", dest="top_heads", type=_positive_int, default=4,
                   help="most important heads shown in the attention maps (the suggested "
                   "plan's heads are shown as well, up to 8 in all)")
    p.add_argument("--threshold", type=_fraction, default=0.5,
                   help="least attention mass on a pattern for a head to take it")
    p.add_argument("--out", default="runs/analysis",
                   help="folder for report.html, plan.json and the tables")
    _add_patterns_arg(p)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="embedded",
                   help="embedded, cnn_dailymail, or a JSON Lines / Parquet file or folder")
    p.add_argument("--full", action="store_true", help="full settings (GPU) instead of quick")
    p.add_argument("--limit", type=_positive_int, default=None, help="documents per split (default: all)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps of every model (default: 80 quick, the paper's with --full)")
    p.add_argument("--max-len", dest="max_len", type=_positive_int, default=None,
                   help="input length in word pieces (default: 256 quick, 512 with --full)")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run")
    p.add_argument("--out", default="runs/pipeline", help="output folder (resumed if present)")
    _add_device_arg(p)


def _release_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (or checkpoint)")
    p.add_argument("--out", required=True, help="release folder, e.g. attnsum/models/NAME")
    p.add_argument("--notes", default=None, help="Markdown file appended to the card")


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="embedded",
                   help="embedded, cnn_dailymail, or a JSON Lines / Parquet file or folder")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per system")
    p.add_argument("--full", action="store_true", help="full settings (GPU) instead of quick")
    p.add_argument("--limit", type=_positive_int, default=None, help="documents per split (default: all)")
    p.add_argument("--out", default="runs/experiment", help="output folder (resumed if present)")
    _add_device_arg(p)


COMMANDS = {  # name: (one line of help, its options)
    "summarize": ("summaries of files, folders, stdin or JSON Lines", _summarize_options),
    "serve": ("HTTP service: POST /summarize; GET /health, /ready, /metrics, /openapi.json, /docs",
              _serve_options),
    "evaluate": ("ROUGE of baselines (lead3, oracle), a checkpoint or sentence scores",
                 _evaluate_options),
    "train": ("train a summarizer: a teacher, or a student with a head plan", _train_options),
    "score": ("sentence scores of a split, for `evaluate --scores`", _score_options),
    "shard": ("preprocess splits into compact shards (for a machine without the tokenizer or "
              "datasets)", _shard_options),
    "analyze": ("head importance, pattern scores, a suggested plan and an HTML report",
                _analyze_options),
    "pipeline": ("the whole method: teacher, analysis, patterned teacher and students, "
                 "evaluation, timing, summary", _pipeline_options),
    "release": ("a run's best checkpoint made small for git, with a card", _release_options),
    "experiment": ("the paper's comparison table over several seeds", _experiment_options),
}


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda where there is a GPU, else cpu)")


def _add_patterns_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patterns", action="append", default=[], metavar="FILE.py",
                   help="a Python file that registers user patterns (repeatable); runs that "
                        "file's code")


# The extras a command needs whatever its options (attnsum/extras.py); a corpus's own extra is
# checked where it is read (data.py).
COMMAND_EXTRAS = {"serve": ("serve",), "evaluate": ("eval",), "train": ("eval",),
                  "pipeline": ("eval",), "experiment": ("eval",)}


def main(argv: list[str] | None = None) -> int:
    from . import commands

    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
    try:
        for extra in COMMAND_EXTRAS.get(args.command, ()):  # before any work
            need(extra, f"attnsum {args.command}")
        commands.load_pattern_files(args.patterns if "patterns" in args else [])
        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except (AttnsumError, OSError) as e:  # a mistake in what was asked (errors.py), or a path
        # the machine cannot read or write; anything else is a bug and shows its traceback
        _close_progress_bars()
        print(f"attnsum {args.command}: error: {e}", file=sys.stderr)
        return 2


def _close_progress_bars() -> None:
    """End a progress bar left open by the error, so that the error gets a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
