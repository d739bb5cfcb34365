"""Turn benchmark CSVs into Markdown tables and PNG plots, next to the CSVs.

    python bench/plot.py bench/results/<device>/

attention.csv -> attention.md (medians, ratios to sdpa-flash beside the work model's bound and
fractions: tiles the kernel visits, allowed cells, FlexAttention tiles) and one
attention_d<D>_<dtype>_<mode>.png per head dim (time vs N, one line per provider and plan);
e2e.csv -> e2e.md (throughput, measured speedup next to its Amdahl bound).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def attention_markdown(rows: list[dict]) -> str:
    latest = {}
    for r in rows:  # the last measurement of each configuration wins
        latest[(r["provider"], r["plan"], r["mode"], r["N"], r["D"], r["dtype"])] = r
    lines = ["| provider | plan | mode | N | D | dtype | ms (p20-p80) | TFLOP/s dense-eq | "
             "TFLOP/s needed | GB/s synth | vs sdpa-flash | work bound | tiles / cells / flex | note |",
             "|" + "---|" * 14]
    for key in sorted(latest, key=lambda k: (k[5], int(k[4]), k[2], int(k[3]), k[1], k[0])):
        r = latest[key]
        base = latest.get(("sdpa-flash", "learned", r["mode"], r["N"], r["D"], r["dtype"]))
        timing = r["mode"] != "build" and not r["provider"].endswith("-first-call")
        ratio = f"{float(base['ms']) / float(r['ms']):.2f}x" if base and timing else ""
        lines.append(f"| {r['provider']} | {r['plan']} | {r['mode']} | {r['N']} | {r['D']} | "
                     f"{r['dtype']} | {float(r['ms']):.3f} ({float(r['ms_p20']):.3f}-"
                     f"{float(r['ms_p80']):.3f}) | {float(r['tflops_dense']):.1f} | "
                     f"{float(r['tflops_needed']):.1f} | {float(r['gbps']):.0f} | {ratio} | "
                     f"{float(r['work_bound']):.1f}x | {float(r['work_fraction']):.3f} / "
                     f"{float(r['cell_fraction']):.3f} / {float(r['flex_tile_fraction']):.3f} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def attention_plots(rows: list[dict], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["mode"] in ("build", "") or r.get("note") or r["provider"].endswith("-first-call"):
            continue  # not a timing of the mode: a build, a first call, a skipped provider
        groups[(r["D"], r["dtype"], r["mode"])][f"{r['provider']} ({r['plan']})"].append(
            (int(r["N"]), float(r["ms"])))
    paths = []
    for (D, dtype, mode), lines in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(lines.items()):
            pts = sorted(dict(pts).items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel="ms",
               title=f"attention {mode}, head dim {D}, {dtype}")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        path = folder / f"attention_d{D}_{dtype}_{mode.replace('+', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def e2e_markdown(rows: list[dict]) -> str:
    lines = ["| model | N | B | ms | docs/s | tokens/s | attention share | measured | bound | "
             "ratio |", "|" + "---|" * 10]
    for r in rows:
        def fmt(key, spec=".2f", r=r):
            return f"{float(r[key]):{spec}}" if r[key] else ""

        lines.append(f"| {r['model']} | {r['N']} | {r['B']} | {fmt('ms', '.1f')} | "
                     f"{fmt('docs_per_s')} | {fmt('tokens_per_s', '.0f')} | "
                     f"{fmt('attention_share')} | {fmt('measured')} | {fmt('bound')} | "
                     f"{fmt('ratio')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python bench/plot.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if (folder / "attention.csv").is_file():
        rows = _read(folder / "attention.csv")
        (folder / "attention.md").write_text(attention_markdown(rows))
        for p in attention_plots(rows, folder):
            print(f"wrote {p}")
    if (folder / "e2e.csv").is_file():
        (folder / "e2e.md").write_text(e2e_markdown(_read(folder / "e2e.csv")))
    print(f"wrote Markdown tables in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
