"""The fused Triton kernel against the dense reference, forward and every gradient, under
TRITON_INTERPRET=1 on CPU (set in conftest.py), or compiled on a GPU with ATTNSUM_COMPILED=1
(bench/gpu_session.py). The kernel takes no fp32 on a GPU: there each fp32 case runs in fp16 and
in bf16 instead, by the same tolerance rule, and fp32 goes where dispatch routes it (the PyTorch
path, test_fp32_on_a_gpu_goes_to_the_torch_path)."""

import pytest
import torch
from conftest import COMPILED
from helpers import CLS_ID, MIXED, check_padding_isolation, make_batch, tiny_bert

from attnsum.attention import patterned_attention, reference_attention
from attnsum.attention.plan import HeadPlan
from attnsum.attention.triton_path import fused_layer_attention

DEVICE = "cuda" if COMPILED and torch.cuda.is_available() else "cpu"
# The dtype of a case that reads "fp32" on CPU: the kernel's own dtype on each device.
WORK_DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32

KINDS = {
    "learned": "none",
    "match/mask": "*:*=match/mask",
    "match-self/mask": "*:*=match-self/mask",
    "match/synth": "*:*=match/synth",
    "sent/mask": "*:*=sent/mask",
    "sent/synth": "*:*=sent/synth",
    "next/synth": "*:*=next/synth",
    "prev/mask": "*:*=prev/mask",
    "offset:3/synth": "*:*=offset:3/synth",
    "window:3/mask": "*:*=window:3/mask",
    "sent-cls/synth": "*:*=sent-cls/synth",
}


def _to(device, *xs):
    return [x.to(device) for x in xs]


def _on_device(q, k, v, ctx, dtype=None):
    """q, k, v (in `dtype`, default WORK_DTYPE) and the context on DEVICE."""
    dtype = dtype or WORK_DTYPE
    return (*(x.to(DEVICE, dtype) for x in (q, k, v)),
            type(ctx)(*_to(DEVICE, ctx.token_ids, ctx.valid, ctx.sentence_ids)))


def _check(plan_text, B, N, H, D, dtype):
    if DEVICE == "cuda" and dtype == torch.float32:  # the kernel's dtypes there, both
        return [_check(plan_text, B, N, H, D, low) for low in (torch.float16, torch.bfloat16)][-1]
    q, k, v, ctx = make_batch(B, N, H=H, D=D)
    plan = HeadPlan.parse(plan_text, 1, H).layer(0)
    q, k, v = (x.to(DEVICE, dtype).requires_grad_(True) for x in (q, k, v))
    ctx = type(ctx)(*_to(DEVICE, ctx.token_ids, ctx.valid, ctx.sentence_ids))
    grad_out = torch.randn(B, H, N, D, device=DEVICE, dtype=dtype)  # one shared upstream grad
    out = fused_layer_attention(q, k, v, plan, ctx)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    # fp32 reference, and the same reference computed in the low precision: by the tolerance rule
    # (attnsum/attention/__init__.py) the kernel's error must be at most 2x PyTorch's own error in
    # that precision, + epsilon.
    qf, kf, vf = (x.detach().float().requires_grad_(True) for x in (q, k, v))
    ref = reference_attention(qf, kf, vf, plan, ctx)[0]
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), grad_out.float())
    ql, kl, vl = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    low = reference_attention(ql, kl, vl, plan, ctx, upcast=False)[0]
    low_grads = torch.autograd.grad(low, (ql, kl, vl), grad_out)
    eps = 1e-5 if dtype == torch.float32 else 1e-3
    pairs = [("out", out, low, ref)] + [
        (f"d{n}", g, lg, rg) for n, g, lg, rg in zip("qkv", grads, low_grads, ref_grads, strict=True)]
    for name, got, lowp, want in pairs:
        assert torch.isfinite(got).all(), name
        err = (got.float() - want).abs().max().item()
        base = (lowp.float() - want).abs().max().item()
        assert err <= 2 * base + eps, f"{name}: kernel error {err:.3g}, PyTorch's own {base:.3g}"
    return out, grads


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_head_kind_alone(kind):
    _check(KINDS[kind], B=2, N=40, H=2, D=16, dtype=torch.float32)


@pytest.mark.parametrize("N", [
    1,    # a single token: every pattern row but the learned one is empty
    17,   # one full block and a ragged one (blocks of 16 under the interpreter)
    113,  # many blocks, padding in document 1, a one-sentence document 2
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_all_kinds_mixed_in_one_launch(N, dtype):
    _check(MIXED, B=3, N=N, H=9, D=16, dtype=dtype)


def test_nan_and_inf_in_padding_rows_stay_there():
    q, k, v, ctx = _on_device(*make_batch(2, 40))
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    check_padding_isolation(lambda *x: fused_layer_attention(*x, plan, ctx), q, k, v, ctx)


def test_longer_sequence_and_wider_heads():
    # N = 300: windows that straddle blocks, matching groups spread over the sorted order.
    _check("*:0=match/mask; *:1=sent/mask; *:2=next/synth; *:3=prev/synth", B=1, N=300, H=5,
           D=32, dtype=torch.float32)


def test_head_dim_64_fp16():
    _check("*:0=sent/mask; *:1=match/synth", B=1, N=50, H=3, D=64, dtype=torch.float16)


def test_backward_is_deterministic():
    q, k, v, ctx = _on_device(*make_batch(2, 60, H=9, D=16))
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    g = torch.randn_like(q)
    runs = []
    for _ in range(2):
        qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
        out = fused_layer_attention(qq, kk, vv, plan, ctx)
        runs.append(torch.autograd.grad(out, (qq, kk, vv), g))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_dispatch_and_bad_input():
    q, k, v, ctx = _on_device(*make_batch(2, 20, H=9, D=16))
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    fused = patterned_attention(q, k, v, plan, ctx, backend="triton")
    tol = 1e-5 if WORK_DTYPE == torch.float32 else 2e-2
    torch.testing.assert_close(fused, patterned_attention(q, k, v, plan, ctx, backend="torch"),
                               atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="head dim 24"):
        q2, k2, v2, ctx2 = _on_device(*make_batch(1, 8, H=9, D=24))
        fused_layer_attention(q2, k2, v2, plan, ctx2)
    valid = ctx.valid.clone()
    valid[0, 3] = False  # a hole in the middle: not right padding
    holed = type(ctx)(ctx.token_ids, valid, ctx.sentence_ids)
    with pytest.raises(ValueError, match="right padding"):
        fused_layer_attention(q, k, v, plan, holed)
    other = torch.float16 if q.dtype != torch.float16 else torch.float32
    with pytest.raises(ValueError, match="one floating dtype"):  # not an assertion deep in Triton
        fused_layer_attention(q.to(other), k, v, plan, ctx)


def test_hf_model_runs_its_patterned_heads_through_the_kernel():
    from attnsum.attention import PatternContext, PlanInputs, apply_plan

    model = tiny_bert(300, attn_implementation="sdpa").to(DEVICE, WORK_DTYPE)
    ids = torch.randint(110, 300, (2, 30), device=DEVICE)
    ids[:, [0, 12]] = 101
    am = torch.ones_like(ids)
    am[1, 20:] = 0
    ctx = PatternContext.from_bertsum(ids, am, cls_id=CLS_ID)
    outs = {}
    plan = HeadPlan.parse("paper", 2, 4)
    apply_plan(model, plan)
    for backend in ("torch", "triton"):
        with torch.no_grad():
            outs[backend] = model(ids, attention_mask=am,
                                  attnsum=PlanInputs(plan, ctx, backend)).last_hidden_state
    tol = (1e-5, 1e-4) if WORK_DTYPE == torch.float32 else (5e-2, 5e-2)
    torch.testing.assert_close(outs["triton"], outs["torch"], atol=tol[0], rtol=tol[1])


@pytest.mark.skipif(DEVICE != "cuda", reason="fp32 routing is a GPU matter (ATTNSUM_COMPILED=1)")
def test_fp32_on_a_gpu_goes_to_the_torch_path():
    """The kernel refuses fp32 on a GPU with a clear error; dispatch's "auto" sends it to the
    PyTorch path, which agrees with the reference."""
    q, k, v, ctx = _on_device(*make_batch(2, 40), dtype=torch.float32)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    with pytest.raises(ValueError, match="bf16 or fp16 on a GPU"):
        fused_layer_attention(q, k, v, plan, ctx)
    torch.testing.assert_close(patterned_attention(q, k, v, plan, ctx),
                               reference_attention(q, k, v, plan, ctx)[0], atol=1e-4, rtol=1e-4)


COMPILE_FOR_HOPPER = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from attnsum.kernels import fused

dtype, D = sys.argv[1], int(sys.argv[2])
bm, bn = 64, (64 if D <= 64 else 32)
consts = {"D": D, "BLOCK_M": bm, "BLOCK_N": bn, "PRECISION": "ieee" if dtype == "fp32" else "tf32"}
pointers = {**{n: "*" + dtype for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")},
            "LSE": "*fp32", "DELTA": "*fp32", "EX": "*i8",
            **{n: "*i32" for n in ("PERM", "LO", "HI", "KBS", "KBE", "KIND", "TAB", "QBI", "QBC")}}
for kernel in (fused._fwd_kernel, fused._bwd_dq_kernel, fused._bwd_dkdv_kernel):
    signature = {n: "constexpr" if n in consts else pointers.get(n) or (
        "fp32" if n in ("scale_log2", "scale") else "i32") for n in kernel.arg_names}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.asm["cubin"], kernel.__name__
    assert compiled.metadata.shared <= 228 * 1024, (kernel.__name__, compiled.metadata.shared)
    print(kernel.__name__, "compiled,", compiled.metadata.shared, "bytes of shared memory")
"""


@pytest.mark.parametrize("dtype, D", [("bf16", 64), ("fp16", 128), ("fp32", 32)])
def test_kernels_compile_for_hopper(dtype, D):
    """Compile the three kernels for sm_90 (H100/H200) with no GPU present: the interpreter
    runs them on CPU but never type-checks the compiled path (branches, dots, casts). Runs in
    a subprocess because the interpreter replaces the compiled functions in this one."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER, dtype, str(D)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("compiled") == 3


@pytest.mark.parametrize("table", ["kernels.csv", "kernels-triton-3.6.csv"])
def test_launch_configs_are_the_ones_checked_ahead_of_time(table):
    """bench/results/aot/kernels.csv (bench/aot_check.py under the project's Triton) and
    kernels-triton-3.6.csv (under the GPU image's) hold, for every kernel, target, dtype and head
    dimension, the configuration the launcher picks untuned, compiled with no spill, within
    shared memory, with tensor-core dots (every dot on wgmma on sm_90) and a pipelined loop: the
    launcher may not drift from it, under either version."""
    import csv
    from pathlib import Path

    from attnsum.kernels.configs import KERNEL_ROLES, LaunchConfig, default_config, role_of

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "aot" / table
    rows = [r for r in csv.DictReader(path.open()) if r["default"] == "True"]
    seen = set()
    for r in rows:
        cc, D = int(r["target"].removeprefix("sm_")), int(r["D"])
        assert default_config(role_of(r["kernel"]), D, cc) == LaunchConfig(
            int(r["block_m"]), int(r["block_n"]), int(r["num_warps"]), int(r["num_stages"])), r
        assert r["compiled"] == "True" and int(r["spill_bytes"]) == 0, r
        assert int(r["shared_bytes"]) <= int(r["shared_limit"]) and r["pipelined"] == "True"
        assert r["tensor_core"] == ("wgmma" if cc == 90 else "mma"), r
        seen.add((r["kernel"], cc, r["dtype"], D))
    assert seen == {(k.lstrip("_"), cc, dt, D) for k in KERNEL_ROLES for cc in (80, 90)
                    for dt in ("fp16", "bf16") for D in (16, 32, 64, 128)}


def test_tuned_configs_replace_the_defaults_where_given(tmp_path, monkeypatch):
    """A kernel_configs.json written by the GPU session's autotuning (bench/gpu_session.py)
    and named by ATTNSUM_KERNEL_CONFIGS overrides the default for its (arch, dtype, D, kernel)
    only; the kernel still agrees with the reference under it."""
    import json

    from attnsum.kernels import configs, fused

    cc = fused._capability(torch.device(DEVICE))  # None under the interpreter
    arch, dname, other_cc = configs.arch_key(cc), configs.DTYPE_NAMES[WORK_DTYPE], 80 if cc == 90 else 90
    path = tmp_path / "kernel_configs.json"
    path.write_text(json.dumps({arch: {dname: {"16": {"fwd": [32, 16, 4, 2]}}}}))
    monkeypatch.setenv(configs.TUNED_ENV, str(path))
    assert configs.launch_config("fwd", 16, cc, WORK_DTYPE) == (32, 16, 4, 2)
    assert configs.launch_config("dq", 16, cc, WORK_DTYPE) == configs.default_config("dq", 16, cc)
    assert configs.launch_config("fwd", 32, cc, WORK_DTYPE) == configs.default_config("fwd", 32, cc)
    assert configs.launch_config("fwd", 16, other_cc, torch.float16) == configs.default_config(
        "fwd", 16, other_cc)
    q, k, v, ctx = _on_device(*make_batch(2, 40, D=16))
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    tol = (1e-5, 1e-4) if WORK_DTYPE == torch.float32 else (2e-2, 2e-2)
    torch.testing.assert_close(fused_layer_attention(q, k, v, plan, ctx).float(),
                               reference_attention(q.float(), k.float(), v.float(), plan, ctx)[0],
                               atol=tol[0], rtol=tol[1])


def test_a_table_whose_perm_repeats_a_position_is_refused_before_any_launch():
    """perm is checked on the host (sorted, it equals arange) before the kernels run: a repeated
    position would have two programs write one row at once on a GPU."""
    from attnsum.attention.triton_path import layer_tables
    from attnsum.kernels.configs import HeadKind
    from attnsum.kernels.fused import fused_attention
    from attnsum.kernels.tables import RangeTables

    q, k, v, ctx = _on_device(*make_batch(2, 20, H=2, D=16))
    _, tables = layer_tables(HeadPlan.parse("*:*=sent/mask", 1, 2).layer(0), ctx)
    kinds = torch.full((2,), HeadKind.MASK, dtype=torch.int32)
    tab = torch.ones(2, dtype=torch.int32)  # the sentence table (0 is every valid key)
    perm = tables.perm.clone()
    perm[1, 0, 5] = perm[1, 0, 6]  # one position twice, another never
    bad = RangeTables(perm, tables.lo, tables.hi, tables.excl)
    with pytest.raises(ValueError, match="not a permutation"):
        fused_attention(q, k, v, kinds, tab, bad)
    out = fused_attention(q, k, v, kinds, tab, tables)  # the real table passes the check
    assert torch.isfinite(out).all()


def test_fused_attention_on_tables_built_by_hand():
    """The kernel's own interface, no plan or pattern code: one batch of N = 12 with 10 valid
    tokens; head 0 learned (table 0: every valid key in natural order), head 1 masked over a
    reversed ordering (table 1: position p attends p and the two after it in that ordering,
    itself excluded), head 2 synthesized over the previous token (table 2). The dense answer is
    written out from the same definitions; forward and gradients match it."""
    from attnsum.kernels.configs import HeadKind
    from attnsum.kernels.fused import fused_attention
    from attnsum.kernels.tables import RangeTables

    torch.manual_seed(0)
    B, H, N, D, n = 1, 3, 12, 16, 10
    pos = torch.arange(N)
    natural = pos.clone()
    reverse = torch.cat([torch.arange(n - 1, -1, -1), torch.arange(n, N)])  # valid ones reversed
    order = torch.stack([natural, reverse, natural])[:, None]  # (T, B, N)
    valid_row = (pos < n).int()
    lo = torch.stack([torch.zeros(N), pos, (pos - 1).clamp_min(0)]).int()
    hi = torch.stack([torch.full((N,), n), (pos + 3).clamp_max(n), pos]).int()
    lo, hi = lo * valid_row, hi * valid_row  # padding rows attend nothing
    excl = torch.stack([torch.zeros(N), torch.ones(N), torch.zeros(N)]).int()
    tables = RangeTables(order, lo[:, None], hi[:, None], excl[:, None])
    kinds = torch.tensor([HeadKind.LEARNED, HeadKind.MASK, HeadKind.SYNTH], dtype=torch.int32)
    tab = torch.tensor([0, 1, 2], dtype=torch.int32)

    allowed = torch.zeros(H, N, N, dtype=torch.bool)  # [head, query, key] in original positions
    for h in range(H):
        for p in range(n):
            q_pos = int(order[h, 0, p])
            for r in range(int(lo[h, p]), int(hi[h, p])):
                if not (excl[h, p] and r == p):
                    allowed[h, q_pos, int(order[h, 0, r])] = True
    assert allowed[2, 5].nonzero().flatten().tolist() == [4] and not allowed[2, 0].any()
    assert allowed[1, 5].nonzero().flatten().tolist() == [3, 4]  # reversed: 5 -> 4 -> 3
    q, k, v = (torch.randn(B, H, N, D, dtype=WORK_DTYPE, device=DEVICE, requires_grad=True)
               for _ in range(3))
    out = fused_attention(q, k, v, kinds.to(DEVICE), tab.to(DEVICE),
                          RangeTables(*(t.to(DEVICE) for t in (tables.perm, tables.lo, tables.hi,
                                                               tables.excl))))
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)

    qf, kf, vf = (x.detach().float().cpu().requires_grad_(True) for x in (q, k, v))
    scores = (qf @ kf.transpose(-1, -2)) / D ** 0.5
    soft = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    uniform = allowed.float() / allowed.sum(-1, keepdim=True).clamp_min(1)
    probs = torch.where((kinds == HeadKind.SYNTH).view(1, H, 1, 1), uniform, soft)
    ref = probs @ vf
    want = torch.autograd.grad(ref, (qf, kf, vf), grad.float().cpu())
    tol = dict(atol=1e-4, rtol=1e-4) if WORK_DTYPE == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.float().cpu(), ref, **tol)
    assert out[0, :, n:].abs().max() == 0  # padding rows output zero
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float().cpu(), w, **tol)
