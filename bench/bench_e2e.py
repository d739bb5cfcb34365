"""End-to-end benchmark: sentence scoring throughput of summarizers, and the Amdahl bound of
the patterned student's speedup over its dense twin.

    python bench/bench_e2e.py                       # GPU: N = 512, 4096, 16384
    python bench/bench_e2e.py --quick --device cpu  # seconds, the harness check CI runs

Models (random weights: speed does not depend on them): the teacher (MiniLM's shape), the
dense student and the patterned student (`paper` plan) of the same shape.

Amdahl: attention is only part of an encoder's time. For each length the dense student's
attention time A_d (its layers' attention alone), the patterned attention time A_p, and the
time of the Q/K projections that synthesized heads could skip (QK_s) give the best speedup the
patterned student could reach: T_d / (T_d - A_d + A_p - QK_s); the report sets the measured
speedup T_d / T_p beside it.

CSV schema: model, N, B, ms, docs_per_s, tokens_per_s, attention_share, bound, measured,
ratio, device, torch, commit
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if "--quick" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common import commit, device_name, model_inputs, result_dir, write_csv  # noqa: E402

from attnsum.attention import HeadPlan, patterned_attention  # noqa: E402
from attnsum.config import ModelConfig  # noqa: E402
from attnsum.model import SummarizerModel  # noqa: E402

FIELDS = ["model", "N", "B", "ms", "docs_per_s", "tokens_per_s", "attention_share", "bound",
          "measured", "ratio", "device", "torch", "commit"]


def timed(fn, device, repeats: int = 3) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


@torch.no_grad()
def bench_length(args, N: int, B: int, device, dtype, meta) -> list[dict]:
    ids, seg, am, cls, ctx = model_inputs(B, N, device)
    preset = args.student
    models = {
        "teacher": ModelConfig.from_preset("minilm", max_len=N),
        "student-dense": ModelConfig.from_preset(preset, max_len=N),
        "student-paper": ModelConfig.from_preset(preset, "paper", max_len=N),
    }
    times = {}
    for name, cfg in models.items():
        m = SummarizerModel(cfg, load_pretrained=False).to(device, dtype).eval()
        times[name] = timed(lambda m=m: m(ids, seg, am, cls, ctx), device)
        if name == "student-dense":
            dense_cfg = cfg
    # Attention alone, per layer, dense and patterned, and the skippable Q/K projections.
    L, H, hid = dense_cfg.layers, dense_cfg.heads, dense_cfg.hidden
    d = hid // H
    q, k, v = (torch.randn(B, H, N, d, device=device, dtype=dtype) for _ in range(3))
    dense_plan = HeadPlan.none(1, H).layer(0)
    paper_plan = HeadPlan.parse("paper", 1, H).layer(0)
    a_d = L * timed(lambda: patterned_attention(q, k, v, dense_plan, ctx), device)
    a_p = L * timed(lambda: patterned_attention(q, k, v, paper_plan, ctx), device)
    n_synth = sum(s is not None and s.mode == "synth" for s in paper_plan)
    proj = torch.nn.Linear(hid, 2 * n_synth * d).to(device, dtype)
    x = torch.randn(B, N, hid, device=device, dtype=dtype)
    qk_s = L * timed(lambda: proj(x), device)
    t_d, t_p = times["student-dense"], times["student-paper"]
    bound = t_d / max(t_d - a_d + a_p - qk_s, 1e-9)
    measured = t_d / t_p
    rows = []
    for name, t in times.items():
        row = {"model": name, "N": N, "B": B, "ms": 1e3 * t, "docs_per_s": B / t,
               "tokens_per_s": B * N / t, "attention_share": "", "bound": "", "measured": "",
               "ratio": "", **meta}
        if name == "student-paper":
            row.update(attention_share=a_d / t_d, bound=bound, measured=measured,
                       ratio=measured / bound)
        rows.append(row)
        print(f"{name:>14} N={N:>6} B={B}: {1e3 * t:9.1f} ms, {B / t:8.2f} docs/s")
    print(f"  attention share of the dense student {a_d / t_d:.2f}; speedup measured "
          f"{measured:.2f}x, Amdahl bound {bound:.2f}x, ratio {measured / bound:.2f}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, nargs="+", default=[512, 4096, 16384])
    p.add_argument("--tokens", type=int, default=32768, help="tokens per batch (B = tokens / N)")
    p.add_argument("--student", default="student-6x12")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.n, args.tokens, args.student, args.dtype = "cpu", [64], 128, "tiny", "float32"
    device, dtype = args.device, getattr(torch, args.dtype)
    meta = {"device": device_name(device),
            "torch": torch.__version__, "commit": commit()}
    if args.out is None:
        args.out = str(result_dir(device) / "e2e.csv")
    rows = []
    for N in args.n:  # each length's rows appended when measured: kept if the run is stopped
        got = bench_length(args, N, max(1, args.tokens // N), device, dtype, meta)
        write_csv(Path(args.out), got, FIELDS)
        rows += got
    print(f"{len(rows)} rows appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
