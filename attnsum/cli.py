"""Command line: ``attnsum <command> ...``. argparse lives here only; each command calls a typed
function of the package. A user mistake prints one clear ``error:`` line and exits 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DataError, Fields, format_skips, load_corpus


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="embedded",
                   help="embedded (default, shipped by aclsum), cnn_dailymail, or a path to a "
                        "JSON Lines / Parquet file or folder")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--article-field", default="article", help="field of a local file's article")
    p.add_argument("--summary-field", default="highlights", help="field of a local file's summary")
    p.add_argument("--id-field", default="id", help="field of a local file's document id")
    p.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    p.add_argument("--max-len", type=int, default=512, help="input length in word pieces")


def _load_examples(args):
    from .preprocess import PreprocessConfig, prepare

    corpus = load_corpus(args.dataset, args.split, limit=args.limit,
                         fields=Fields(args.article_field, args.summary_field, args.id_field))
    prepared = prepare(corpus, PreprocessConfig(max_len=args.max_len), progress=True)
    if not prepared.examples:
        raise DataError(f"{args.dataset}/{args.split}: no usable document")
    return prepared


def cmd_evaluate(args) -> None:
    from .evaluate import SYSTEMS, evaluate_system, format_table

    systems = [s.strip() for s in args.system.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            raise DataError(f"unknown system {s!r}: use one of {', '.join(SYSTEMS)}")
    prepared = _load_examples(args)
    out = Path(args.out)
    extra = {"dataset": args.dataset, "split": args.split, "max_len": args.max_len,
             "skipped": dict(prepared.skipped)}
    rows = {s: evaluate_system(s, prepared.examples, out, extra) for s in systems}
    print(f"{args.dataset}/{args.split}: {len(prepared.examples)} documents "
          "(ROUGE F1, mean [95% bootstrap interval])")
    print(format_table(rows))
    if prepared.skipped:
        print(format_skips(prepared.skipped))
    print(f"predictions and scores written to {out}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnsum", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="ROUGE of a baseline system (lead3, oracle)")
    p.add_argument("--system", default="lead3,oracle",
                   help="lead3, oracle, or a comma-separated list (default: both)")
    _add_dataset_args(p)
    p.add_argument("--out", default="runs/evaluate", help="output folder")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ValueError, RuntimeError, OSError) as e:
        print(f"attnsum {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
