"""Helpers shared by the benchmark scripts: the checkout on the import path (the scripts run from
a checkout without installing), synthetic BERTSum-shaped inputs (attention and whole-model),
int8 dynamic quantization, the device's name and result folder, the commit, and the CSV
writer."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnsum.attention import PatternContext  # noqa: E402
from attnsum.kernels.configs import KERNEL_ROLES, LaunchConfig, role_of  # noqa: E402
from attnsum.release import source_commit as commit  # noqa: E402, F401  (the CSVs' commit column)

# bench/aot_check.py --space all under the project's Triton (3.9), and under the GPU image's 3.6
# (kernels-triton-3.6.csv): register counts differ between versions.
AOT_TABLE = ROOT / "bench" / "results" / "aot" / "kernels.csv"


def aot_table() -> Path:
    """The AOT table of the running Triton's version where one is committed, else AOT_TABLE."""
    import triton

    major_minor = ".".join(triton.__version__.split(".")[:2])
    versioned = AOT_TABLE.with_name(f"kernels-triton-{major_minor}.csv")
    return versioned if versioned.is_file() else AOT_TABLE

VOCAB = 30522  # bert-base-uncased word pieces
FIRST_WORD = 1000  # ids below are special and unused pieces
# bert-base-uncased's [CLS] and [SEP] (attnsum.preprocess.load_tokenizer gives the same; a bare
# GPU machine may lack the package that ships the tokenizer, so synthetic inputs name them)
CLS_ID, SEP_ID = 101, 102


def pruned_space(arch: str, dtype: str, D: int, table: Path | None = None
                 ) -> dict[str, list[LaunchConfig]]:
    """The autotune space of each kernel role ("fwd", "dq", "dkdv") on one architecture
    ("sm_90"), dtype ("bf16") and head dimension: the configurations of the AOT table that
    compiled with no register spill, within shared memory and with tensor-core dots (the table
    of the running Triton by default, `aot_table`)."""
    space: dict[str, list[LaunchConfig]] = {role: [] for role in KERNEL_ROLES.values()}
    with open(table or aot_table(), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if (r["target"], r["dtype"], int(r["D"])) != (arch, dtype, D):
                continue
            if (r["compiled"] == "True" and int(r["spill_bytes"]) == 0
                    and int(r["shared_bytes"]) <= int(r["shared_limit"])
                    and r["tensor_core"] != "none"):
                space[role_of(r["kernel"])].append(LaunchConfig(
                    int(r["block_m"]), int(r["block_n"]), int(r["num_warps"]), int(r["num_stages"])))
    return space


def synthetic_batch(B: int, N: int, seed: int = 0, device="cpu"):
    """BERTSum-shaped inputs: sentences of 10-60 tokens, each [CLS] ... [SEP], word ids drawn
    from a Zipf-like law over the 30,522-piece vocabulary (so matching groups look like text)."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, VOCAB - FIRST_WORD + 1, dtype=torch.float)  # ids stay < VOCAB
    probs = 1.0 / ranks
    ids = torch.zeros(B, N, dtype=torch.long)
    for b in range(B):
        pos = 0
        while pos < N:
            n = int(torch.randint(10, 61, (1,), generator=g))
            body = torch.multinomial(probs, n, replacement=True, generator=g) + FIRST_WORD
            sent = torch.cat([torch.tensor([CLS_ID]), body, torch.tensor([SEP_ID])])[: N - pos]
            ids[b, pos:pos + len(sent)] = sent
            pos += len(sent)
    am = torch.ones(B, N, dtype=torch.long)
    ctx = PatternContext.from_bertsum(ids, am, cls_id=CLS_ID)
    return PatternContext(ctx.token_ids.to(device), ctx.valid.to(device),
                          ctx.sentence_ids.to(device))


def model_inputs(B: int, N: int, device="cpu"):
    """`SummarizerModel` inputs of a synthetic batch: (input_ids, segment_ids, attention_mask,
    cls_positions (-1 padded), pattern context)."""
    ctx = synthetic_batch(B, N, device=device)
    ids = ctx.token_ids
    cls = [(ids[b] == 101).nonzero().flatten() for b in range(B)]
    cls_pos = torch.full((B, max(map(len, cls))), -1, dtype=torch.long, device=device)
    for b, c in enumerate(cls):
        cls_pos[b, :len(c)] = c
    return ids, (ctx.sentence_ids % 2).clamp_min(0), ctx.valid.long(), cls_pos, ctx


def int8_dynamic(model):
    """`model` with its Linear layers dynamically quantized to int8 (CPU), the rest fp32."""
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def device_name(device: str) -> str:
    """The GPU's name, or "cpu-" and the CPU's model name (/proc/cpuinfo), for result folders."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "unknown")
    except OSError:
        model = "unknown"
    return "cpu-" + model


def result_dir(device: str) -> Path:
    """bench/results/<device name with spaces as _>/."""
    return ROOT / "bench" / "results" / device_name(device).replace(" ", "_")


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Append rows to a CSV of a fixed schema (header written once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != fields:
            raise SystemExit(f"{path} holds rows of another schema ({header}); move it aside "
                             "or name another --out")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
