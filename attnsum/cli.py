"""attnsum: extractive summaries with human-guided attention patterns.

The command line, ``attnsum <command> ...``: argparse lives here only; each command calls a typed
function of the package. A user mistake prints one clear ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from . import __version__
from .data import DataError, Fields, check_dataset, format_skips
from .errors import AttnsumError
from .extras import need
from .preprocess import MAX_CHARS, MAX_LEN


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


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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


def _load_examples(args, model=None, need_texts: bool = True):
    """The documents of --dataset/--split at the input length of `model` (its training length
    unless --max-len says otherwise), or of --max-len (512 by default) without one."""
    from .shards import examples_of

    args.max_len = (model.cfg.input_length(args.max_len) if model is not None
                    else args.max_len or MAX_LEN)
    prepared = examples_of(args.dataset, args.split, args.max_len, args.limit,
                           Fields(args.article_field, args.summary_field, args.id_field),
                           need_texts=need_texts, progress=True)
    if not prepared.examples:
        raise DataError(f"{args.dataset}/{args.split}: no usable document")
    return prepared


def cmd_evaluate(args) -> None:
    from .evaluate import BASELINES, evaluate_system, format_table

    systems = [s.strip() for s in args.system.split(",") if s.strip()]
    for s in systems:
        if s not in BASELINES:
            raise DataError(f"unknown system {s!r}: use one of {', '.join(BASELINES)}")
    check_dataset(args.dataset)
    model = None
    if args.checkpoint:
        from .checkpoints import load_model, read_training_summary
        from .precision import resolve_device, resolve_precision

        device = resolve_device(args.device)
        model = load_model(args.checkpoint).to(device)
        precision = resolve_precision(args.precision, device)
        trained = read_training_summary(model.checkpoint)
        schedule = trained.get("schedule", {}).get("description", "an unrecorded schedule")
        print(f"model {model.checkpoint}: trained with {schedule}\n{precision.describe()}",
              file=sys.stderr)
    prepared = _load_examples(args, model)
    out = Path(args.out)
    extra = {"dataset": args.dataset, "split": args.split, "max_len": args.max_len,
             "skipped": dict(prepared.skipped)}
    rows = {s: evaluate_system(s, prepared.examples, out, extra) for s in systems}
    if args.scores:
        from .evaluate import evaluate_scores, read_scores

        scores = read_scores(args.scores, prepared.examples)
        rows["scores"] = evaluate_scores(prepared.examples, scores, out, "scores", args.k,
                                         not args.no_trigram_blocking, extra)
    if model is not None:
        from .evaluate import evaluate_model

        rows["model"] = evaluate_model(model, prepared.examples, precision, out, "model", k=args.k,
                                       trigram_blocking=not args.no_trigram_blocking, device=device,
                                       extra={**extra, "trained": trained}, progress=True)
    print(f"{args.dataset}/{args.split}: {_count(len(prepared.examples), 'document')} "
          "(ROUGE F1, mean [95% bootstrap interval])")
    print(format_table(rows))
    if prepared.skipped:
        print(format_skips(prepared.skipped))
    print(f"predictions and scores written to {out}/")


def cmd_train(args) -> int:
    from dataclasses import fields

    from .settings import TrainConfig
    from .train import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if hasattr(args, f.name)})
    result = train(cfg)
    stopped = result["step"] < cfg.steps
    for e in result["best"]:
        v = e["val"]
        shown = (f"val loss {v['loss']:.4f}" if "loss" in v else
                 f"val ROUGE-1/2/Lsum {v['rouge1']:.2f}/{v['rouge2']:.2f}/{v['rougeLsum']:.2f}")
        print(f"step {e['step']}: {shown}  {e['path']}")
    print(f"run folder: {result['out']}")
    return 3 if stopped else 0  # 3: stopped by --time-limit, run again to go on


def cmd_score(args) -> None:
    from .batching import predict_scores
    from .checkpoints import load_model
    from .io import atomic_write_text
    from .precision import resolve_device, resolve_precision

    check_dataset(args.dataset)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint).to(device)
    ckpt = model.checkpoint
    precision = resolve_precision(args.precision, device)
    print(f"checkpoint {ckpt}; {precision.describe()}", file=sys.stderr)
    prepared = _load_examples(args, model, need_texts=False)
    scores = predict_scores(model, prepared.examples, precision, device=device, progress=True)
    atomic_write_text(args.out, "".join(json.dumps({"id": e.id, "scores": s}) + "\n"
                                        for e, s in zip(prepared.examples, scores, strict=True)))
    print(f"sentence scores of {_count(len(scores), 'document')} by {ckpt} written to {args.out}")


def cmd_shard(args) -> None:
    from .shards import write_shard

    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        args.split = split
        prepared = _load_examples(args)
        out = write_shard(prepared.examples, args.out, split, args.max_len)
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
        print(f"{split}: {_count(len(prepared.examples), 'document')}, {size:.1f} MiB in {out}")
        if prepared.skipped:
            print(format_skips(prepared.skipped))


def cmd_release(args) -> None:
    from .release import release

    notes = ""
    if args.notes:
        try:
            notes = Path(args.notes).read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"cannot read notes file {args.notes}: {e.strerror}") from None
    out, size = release(args.run, args.out, notes)
    print(f"released {out} ({size / 2**20:.1f} MiB of weights); card: {out}/README.md")


def cmd_experiment(args) -> None:
    import time

    from .experiment import run_experiment

    t0 = time.time()
    table = run_experiment(args.out, args.seeds, args.full, args.dataset, args.limit,
                           device=args.device)
    print(table)
    print(f"({time.time() - t0:.0f} s; written to {args.out}/experiment.md)")


def cmd_analyze(args) -> None:
    from .analysis import analyze
    from .checkpoints import load_model

    check_dataset(args.dataset)
    model = load_model(args.checkpoint)
    ckpt = model.checkpoint
    print(f"checkpoint {ckpt}", file=sys.stderr)
    prepared = _load_examples(args, model)
    result = analyze(model, prepared.examples, args.out, top_heads=args.top_heads,
                     threshold=args.threshold, title=f"attnsum analysis of {ckpt}",
                     pattern_files=args.patterns, progress=True)
    print(f"analyzed {_count(result['documents'], 'document')}; suggested plan: "
          f"{result['plan_text']}")
    print(f"report: {args.out}/report.html; plan for `attnsum train --plan`: {args.out}/plan.json")


def cmd_pipeline(args) -> None:
    from .pipeline import run_pipeline

    print(run_pipeline(args.out, args.dataset, args.full, args.limit, args.seed, steps=args.steps,
                       max_len=args.max_len, device=args.device))


def cmd_summarize(args) -> None:
    from .summarize_files import summarize_command

    counts = summarize_command(args.checkpoint, args.inputs, args.out, args.format, args.field,
                               args.jsonl, args.k, not args.no_trigram_blocking, args.chunk,
                               args.device, args.precision, args.limit, args.max_len,
                               args.max_chars, args.overwrite)
    from .distributed import world

    if world()[0] == 0:  # under torchrun every rank has the whole run's counts: one prints them
        print(f"summarized {_count(counts['documents'], 'document')} ({counts['errors']} could "
              "not be)", file=sys.stderr)


def cmd_serve(args) -> None:
    from .serve import TOKEN_ENV, ServeConfig, serve

    cfg = ServeConfig(host=args.host, port=args.port, max_body=args.max_body,
                      max_docs=args.max_docs, max_chars=args.max_chars, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, timeout_s=args.timeout,
                      header_timeout_s=args.header_timeout, max_queue=args.max_queue,
                      api_token=args.api_token or os.environ.get(TOKEN_ENV) or None,
                      cors_origins=tuple(args.cors_origin))
    serve(args.checkpoint, cfg, args.device, args.precision, args.max_len, args.workers)


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
    p.set_defaults(func=cmd_summarize)


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
    p.set_defaults(func=cmd_serve)


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
    p.set_defaults(func=cmd_evaluate)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .schedule import OPTIMIZERS
    from .settings import POOLINGS, PRESET_SHAPES, TrainConfig

    d = TrainConfig()

    p.add_argument("--preset", default=d.preset, choices=list(PRESET_SHAPES),
                   help="model shape (attnsum/settings.py): minilm and bert-base are pretrained; "
                        "student-* and tiny start from random weights or --init-from")
    p.add_argument("--plan", default="none",
                   help="head plan: none, paper, LAYERS:HEADS=PATTERN/MODE;... or a plan "
                        "file (.json, from `attnsum analyze` or the report)")
    p.add_argument("--inject", default=d.inject, choices=["heads", "side"],
                   help="patterns on the encoder's own heads, or on side layers (pretrained)")
    p.add_argument("--classifier", default=d.classifier, choices=["linear", "transformer"],
                   help="sentence scorer: a linear layer, or BERTSum's 2-layer inter-sentence "
                        "transformer")
    p.add_argument("--pooling", default=d.pooling, choices=POOLINGS,
                   help="a sentence's vector: its [CLS] output, or the mean of its word pieces' "
                        "outputs")
    p.add_argument("--dropout", type=_fraction, default=None, help="dropout (default: the preset's)")
    p.add_argument("--dataset", default=d.dataset,
                   help="embedded, cnn_dailymail, a JSON Lines / Parquet file or folder, or a "
                        "shard folder (attnsum shard)")
    p.add_argument("--train-split", dest="train_split", default=d.train_split,
                   help="the split trained on")
    p.add_argument("--val-split", dest="val_split", default=d.val_split,
                   help="the split validated on")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="documents per split (default: all)")
    p.add_argument("--val-limit", dest="val_limit", type=_positive_int, default=None,
                   help="validation documents (default: --limit)")
    p.add_argument("--max-len", dest="max_len", type=_positive_int, default=d.max_len,
                   help="input length in word pieces")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=d.batch_size,
                   help="documents per step and process")
    p.add_argument("--accum", type=_positive_int, default=d.accum,
                   help="gradient accumulation: batches per optimizer step")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS,
                   help="adamw: linear warmup and decay to zero; adam-noam: the paper's Adam + "
                        "Noam (its exact recipe with --steps 50000)")
    p.add_argument("--lr", type=_positive_float, default=d.lr,
                   help="peak learning rate (default: 5e-5 AdamW on a pretrained encoder, 5e-4 "
                        "AdamW from scratch, 2e-5 Noam)")
    p.add_argument("--warmup", type=_nonneg_float, default=d.warmup,
                   help="warmup steps (>= 1) or fraction of the run (< 1); default 6%% of the "
                        "run for AdamW, min(10000, 20%%) for Noam")
    p.add_argument("--allow-short-warmup", dest="allow_short_warmup", action="store_true",
                   help="let a run end before its warmup does")
    _add_precision_arg(p)
    p.add_argument("--val-every", dest="val_every", type=_positive_int, default=d.val_every,
                   help="steps between validations (each keeps the checkpoint if among the best)")
    p.add_argument("--keep-best", dest="keep_best", type=_positive_int, default=d.keep_best,
                   help="best checkpoints kept")
    p.add_argument("--log-every", dest="log_every", type=_positive_int, default=d.log_every,
                   help="steps between lines of metrics.jsonl")
    p.add_argument("--val-metric", dest="val_metric", default=d.val_metric,
                   choices=["rouge", "loss"],
                   help="what ranks checkpoints: validation ROUGE, or the validation loss (no "
                        "texts or rouge-score needed)")
    p.add_argument("--time-limit", dest="time_limit", type=_positive_float, default=None,
                   help="minutes: after a step past this, save the resume state and stop with exit "
                        "status 3 (a rerun goes on): for jobs with a time limit")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the documents drawn and of the initial weights")
    p.add_argument("--teacher", default=None, help="checkpoint to distil sentence scores from")
    p.add_argument("--init-from", dest="init_from", default=None,
                   help="checkpoint, or pretrained preset (minilm), to start from by layer "
                        "dropping (same width and heads)")
    p.add_argument("--init-layers", dest="init_layers", default=None,
                   help="its layers to take, e.g. 1,3,5 (default: evenly spaced, ending at the "
                        "last)")
    p.add_argument("--distill-weight", dest="distill_weight", type=_nonneg_float, default=d.distill_weight,
                   help="weight of the distillation loss beside the oracle labels' (--teacher)")
    p.add_argument("--freeze-embeddings", dest="freeze_embeddings", action="store_true",
                   help="keep the word embeddings as initialised (a release then references the "
                        "pretrained package's instead of storing them)")
    p.add_argument("--backend", default=d.backend,
                   help="attention path (attention/dispatch.py): auto (the fused Triton kernel on "
                        "a GPU, the PyTorch path on CPU), triton, torch or reference")
    p.add_argument("--out", default=d.out, help="run folder (resumed if it holds a checkpoint)")
    _add_patterns_arg(p)
    p.set_defaults(func=cmd_train)


def _score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    _add_dataset_args(p)
    p.set_defaults(split="val")
    _add_precision_arg(p)
    _add_device_arg(p)
    p.add_argument("--out", required=True, help="JSON Lines file: {id, scores} per document")
    _add_patterns_arg(p)
    p.set_defaults(func=cmd_score)


def _shard_options(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p, split=False)
    p.add_argument("--splits", default="train,val", help="comma-separated splits")
    p.add_argument("--out", required=True, help="shard folder (shards/ is ignored by git)")
    p.set_defaults(func=cmd_shard)


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
    p.set_defaults(func=cmd_analyze)


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
    p.set_defaults(func=cmd_pipeline)


def _release_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (or checkpoint)")
    p.add_argument("--out", required=True, help="release folder, e.g. attnsum/models/NAME")
    p.add_argument("--notes", default=None, help="Markdown file appended to the card")
    p.set_defaults(func=cmd_release)


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="embedded",
                   help="embedded, cnn_dailymail, or a JSON Lines / Parquet file or folder")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per system")
    p.add_argument("--full", action="store_true", help="full settings (GPU) instead of quick")
    p.add_argument("--limit", type=_positive_int, default=None, help="documents per split (default: all)")
    p.add_argument("--out", default="runs/experiment", help="output folder (resumed if present)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_experiment)


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


def _load_pattern_files(args) -> None:
    from .attention import get_pattern, load_pattern_file

    for path in getattr(args, "patterns", None) or []:
        names = load_pattern_file(path)
        slow = [n for n in names if not get_pattern(n).has_ranges]
        print(f"patterns from {path}: {', '.join(names)}"
              + (f"; no range form, so on the dense reference path: {', '.join(slow)}"
                 if slow else ""), file=sys.stderr)


def _parse_plan(args) -> None:
    """--plan, text or a .json plan file, parsed here once into a HeadPlan for the preset."""
    text = getattr(args, "plan", None)
    if text is None:
        return
    from .model import model_config, parse_plan

    if text.endswith(".json"):
        from .checkpoints import read_plan_file

        args.plan = read_plan_file(text)
        try:
            model_config(args.preset, args.plan, args.inject)
        except AttnsumError as e:
            raise DataError(f"plan file {text}: {e}") from None
    else:
        args.plan = parse_plan(text, args.preset, args.inject)


# Options appended to every command line read from the shell (docs/commands.md, "Environment
# variables"), as PYTEST_ADDOPTS does for pytest; tests/test_docs.py runs the documented commands
# with small settings this way.
ADDOPTS_ENV = "ATTNSUM_ADDOPTS"
# The extras a command needs whatever its options (attnsum/extras.py); a corpus's own extra is
# checked where it is read (data.py).
COMMAND_EXTRAS = {"serve": ("serve",), "evaluate": ("eval",), "train": ("eval",),
                  "pipeline": ("eval",), "experiment": ("eval",)}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:] + shlex.split(os.environ.get(ADDOPTS_ENV, ""))
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
    try:
        for extra in COMMAND_EXTRAS.get(args.command, ()):  # before any work
            need(extra, f"attnsum {args.command}")
        _load_pattern_files(args)
        _parse_plan(args)
        return args.func(args) or 0
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


if __name__ == "__main__":
    sys.exit(main())
