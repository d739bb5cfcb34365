"""The commands of the command line (cli.py parses their options and calls these by name):
each reads the parsed options, never writes them, and calls the package's functions.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .config import MAX_LEN, check_choice
from .data import DataError, Fields, check_dataset, format_skips


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _examples(args, model=None, need_texts: bool = True, split: str | None = None):
    """The documents of --dataset and `split` (--split by default) and their input length: the
    length `model` was trained at unless --max-len says otherwise, or --max-len (MAX_LEN by
    default) without a model."""
    from .shards import examples_of

    split = split or args.split
    max_len = model.cfg.input_length(args.max_len) if model is not None else args.max_len or MAX_LEN
    prepared = examples_of(args.dataset, split, max_len, args.limit,
                           Fields(args.article_field, args.summary_field, args.id_field),
                           need_texts=need_texts, progress=True)
    if not prepared.examples:
        raise DataError(f"{args.dataset}/{split}: no usable document")
    return prepared, max_len


def cmd_evaluate(args) -> None:
    from .evaluate import BASELINES, evaluate_system, format_table

    systems = [s.strip() for s in args.system.split(",") if s.strip()]
    for s in systems:  # before any data loads
        check_choice("system", s, BASELINES)
    check_dataset(args.dataset)
    model = None
    if args.checkpoint:
        from .checkpoints import load_model, read_training_summary
        from .precision import Runtime

        rt = Runtime.resolve(args.device, args.precision)
        model = load_model(args.checkpoint).to(rt.device)
        trained = read_training_summary(model.checkpoint)
        schedule = trained.get("schedule", {}).get("description", "an unrecorded schedule")
        print(f"model {model.checkpoint}: trained with {schedule}\n{rt.precision.describe()}",
              file=sys.stderr)
    prepared, max_len = _examples(args, model)
    out = Path(args.out)
    extra = {"dataset": args.dataset, "split": args.split, "max_len": max_len,
             "skipped": dict(prepared.skipped)}
    rows = {s: evaluate_system(s, prepared.examples, out, extra) for s in systems}
    if args.scores:
        from .evaluate import evaluate_scores, read_scores

        scores = read_scores(args.scores, prepared.examples)
        rows["scores"] = evaluate_scores(prepared.examples, scores, out, "scores", args.k,
                                         not args.no_trigram_blocking, extra)
    if model is not None:
        from .evaluate import evaluate_model

        rows["model"] = evaluate_model(model, prepared.examples, rt.precision, out, "model", k=args.k,
                                       trigram_blocking=not args.no_trigram_blocking,
                                       device=rt.device,
                                       extra={**extra, "trained": trained}, progress=True)
    print(f"{args.dataset}/{args.split}: {_count(len(prepared.examples), 'document')} "
          "(ROUGE F1, mean [95% bootstrap interval])")
    print(format_table(rows))
    if prepared.skipped:
        print(format_skips(prepared.skipped))
    print(f"predictions and scores written to {out}/")


def cmd_train(args) -> int:
    from dataclasses import fields

    from .config import ModelConfig, TrainConfig
    from .train import train

    chosen = {k: getattr(args, k) for k in ("classifier", "pooling", "max_len", "dropout")
              if getattr(args, k) is not None}  # the plan text or file is resolved here, once
    cfg = TrainConfig(model=ModelConfig.from_preset(args.preset, args.plan, args.inject, **chosen),
                      **{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if f.name != "model" and hasattr(args, f.name)})
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
    from .precision import Runtime

    check_dataset(args.dataset)
    rt = Runtime.resolve(args.device, args.precision)
    model = load_model(args.checkpoint).to(rt.device)
    ckpt = model.checkpoint
    print(f"checkpoint {ckpt}; {rt.precision.describe()}", file=sys.stderr)
    prepared, _ = _examples(args, model, need_texts=False)
    scores = predict_scores(model, prepared.examples, rt.precision, device=rt.device,
                            progress=True)
    atomic_write_text(args.out, "".join(json.dumps({"id": e.id, "scores": s}) + "\n"
                                        for e, s in zip(prepared.examples, scores, strict=True)))
    print(f"sentence scores of {_count(len(scores), 'document')} by {ckpt} written to {args.out}")


def cmd_shard(args) -> None:
    from .shards import write_shard

    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        prepared, max_len = _examples(args, split=split)
        out = write_shard(prepared.examples, args.out, split, max_len)
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
    prepared, _ = _examples(args, model)
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
    from .serve import TOKEN_ENV, ServeConfig
    from .server import serve

    cfg = ServeConfig(host=args.host, port=args.port, max_body=args.max_body,
                      max_docs=args.max_docs, max_chars=args.max_chars, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, timeout_s=args.timeout,
                      header_timeout_s=args.header_timeout, max_queue=args.max_queue,
                      api_token=args.api_token or os.environ.get(TOKEN_ENV) or None,
                      cors_origins=tuple(args.cors_origin))
    serve(args.checkpoint, cfg, args.device, args.precision, args.max_len, args.workers)


def load_pattern_files(paths) -> None:
    """Run the --patterns files (their patterns registered), saying which are slow."""
    from .attention import get_pattern, load_pattern_file

    for path in paths:
        names = load_pattern_file(path)
        slow = [n for n in names if not get_pattern(n).has_ranges]
        print(f"patterns from {path}: {', '.join(names)}"
              + (f"; no range form, so on the dense reference path: {', '.join(slow)}"
                 if slow else ""), file=sys.stderr)
