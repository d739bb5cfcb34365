"""Fused Triton attention for a layer that mixes learned, masked and synthesized heads.

Every head reads one *range table* (attnsum/attention/__init__.py, "range tables"): in some
ordering `perm` of the positions, the query at ordered position p attends the keys at ordered positions
[lo[p], hi[p]), minus p itself when excl[p]. Learned heads use the table "every valid key";
a masked head takes a softmax restricted to its table; a synthesized head averages V over it
with no Q or K. One launch covers all heads: the head index selects its kind and table.

Programs work on blocks of *ordered* positions, so a block's rows have nearby ranges and a
program visits only the key blocks its rows' ranges touch (block skipping): 1-2 key blocks
for an intra-sentence head, the equal-token group for matching-token heads (ordered by token
id), everything for learned heads. Queries, keys and values are gathered through `perm`, and
outputs and gradients written back to original positions.

Backward is deterministic (no atomics): one kernel per query block computes dQ, one per key
block computes dK and dV, each row written by exactly one program. The key-block kernel
visits the query blocks listed for it in a block table built once per batch.

Layers: `@triton.jit` kernels -> launchers (`_forward`, `_backward`) -> `_PatternedAttention`
(autograd) -> `fused_attention` (public, shapes in its docstring).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .configs import HeadKind, launch_config
from .tables import RangeTables

SYNTH_KIND = tl.constexpr(int(HeadKind.SYNTH))  # the `kinds` tensor's synthesized heads; the
# other kinds (learned, masked) are one softmax over the head's table here
LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------- kernels


@triton.jit
def _allowed(offs_m, offs_n, lo, hi, ex, N):
    """(BM, BN) mask: ordered key offs_n lies in the ordered query's range, minus itself."""
    inside = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] < hi[:, None])
    own = (ex[:, None] != 0) & (offs_n[None, :] == offs_m[:, None])
    return inside & ~own & (offs_n[None, :] < N)


@triton.jit
def _gather(base, pos, stride_n, offs_d, inside):
    """Rows `pos` (original positions) of one (N, D) head slice; rows outside `inside` are 0."""
    return tl.load(base + pos[:, None] * stride_n + offs_d[None, :], mask=inside[:, None],
                   other=0.0)


@triton.jit
def _head_of_program(pid_bh, KIND, TAB, H, st_t, st_b):
    """Batch, head, head kind, table index and table offset of a (batch x head) program. b and
    h are int64, so base offsets such as b * stride stay right past 2^31 elements."""
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    t = tl.load(TAB + h)
    return b, h, tl.load(KIND + h), t, t * st_t + b * st_b


@triton.jit
def _load_rows(PERM, LO, HI, EX, tb, offs, N):
    """Original positions and ranges of the ordered rows `offs` of one table."""
    inside = offs < N
    pos = tl.load(PERM + tb + offs, mask=inside, other=0)
    lo = tl.load(LO + tb + offs, mask=inside, other=0)
    hi = tl.load(HI + tb + offs, mask=inside, other=0)
    ex = tl.load(EX + tb + offs, mask=inside, other=0)
    return pos, lo, hi, ex


@triton.jit
def _query_block(qb_ptr, PERM, LO, HI, EX, tb, do_base, sd_n, offs_d, offs_n, N,
                 BLOCK_M: tl.constexpr):
    """The query block a dK/dV program visits next (its index at `qb_ptr`): which rows exist,
    their positions and ranges, their dO rows, and which of them may attend the program's
    keys."""
    offs_m = tl.load(qb_ptr) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = offs_m < N
    pq, lo, hi, ex = _load_rows(PERM, LO, HI, EX, tb, offs_m, N)
    do = _gather(do_base, pq, sd_n, offs_d, in_m)
    ok = _allowed(offs_m, offs_n, lo, hi, ex, N) & in_m[:, None]
    return in_m, pq, lo, hi, ex, do, ok


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, PERM, LO, HI, EX, KBS, KBE, KIND, TAB,
                sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
                st_t, st_b, sb_t, sb_b, H, N, scale_log2,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kind, t, tb = _head_of_program(pid_bh, KIND, TAB, H, st_t, st_b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    in_m = offs_m < N
    pq, lo, hi, ex = _load_rows(PERM, LO, HI, EX, tb, offs_m, N)
    kb_lo = tl.load(KBS + t * sb_t + b * sb_b + pid_m)
    kb_hi = tl.load(KBE + t * sb_t + b * sb_b + pid_m)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    o_ptrs = O + b * so_b + h * so_h + pq[:, None] * so_n + offs_d[None, :]
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if kind == SYNTH_KIND:  # synthesize: mean of V over the range, no Q or K
        for kb in range(kb_lo, kb_hi):
            offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            pk = tl.load(PERM + tb + offs_n, mask=offs_n < N, other=0)
            v = _gather(v_base, pk, sv_n, offs_d, offs_n < N)
            p = _allowed(offs_m, offs_n, lo, hi, ex, N).to(v.dtype)
            acc += tl.dot(p, v, input_precision=PRECISION)
        count = tl.maximum(hi - lo - ex.to(tl.int32), 0).to(tl.float32)
        out = acc / tl.maximum(count, 1.0)[:, None]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_m[:, None])
    else:  # softmax over the range (flash attention with block skipping)
        q = _gather(Q + b * sq_b + h * sq_h, pq, sq_n, offs_d, in_m)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for kb in range(kb_lo, kb_hi):
            offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            pk = tl.load(PERM + tb + offs_n, mask=offs_n < N, other=0)
            k = _gather(k_base, pk, sk_n, offs_d, offs_n < N)
            v = _gather(v_base, pk, sv_n, offs_d, offs_n < N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s = tl.where(_allowed(offs_m, offs_n, lo, hi, ex, N), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("inf"))
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_m[:, None])
        tl.store(LSE + pid_bh.to(tl.int64) * N + pq, lse, mask=in_m)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, PERM, LO, HI, EX, KBS, KBE, KIND, TAB,
                   sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sd_b, sd_h, sd_n,
                   sdq_b, sdq_h, sdq_n, st_t, st_b, sb_t, sb_b, H, N, scale_log2, scale,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kind, t, tb = _head_of_program(pid_bh, KIND, TAB, H, st_t, st_b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    in_m = offs_m < N
    pq, lo, hi, ex = _load_rows(PERM, LO, HI, EX, tb, offs_m, N)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if kind != SYNTH_KIND:  # synthesized heads do not depend on Q
        q = _gather(Q + b * sq_b + h * sq_h, pq, sq_n, offs_d, in_m)
        do = _gather(DO + b * sd_b + h * sd_h, pq, sd_n, offs_d, in_m)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + pq, mask=in_m, other=float("inf"))
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + pq, mask=in_m, other=0.0)
        kb_lo = tl.load(KBS + t * sb_t + b * sb_b + pid_m)
        kb_hi = tl.load(KBE + t * sb_t + b * sb_b + pid_m)
        for kb in range(kb_lo, kb_hi):
            offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            pk = tl.load(PERM + tb + offs_n, mask=offs_n < N, other=0)
            k = _gather(K + b * sk_b + h * sk_h, pk, sk_n, offs_d, offs_n < N)
            v = _gather(V + b * sv_b + h * sv_h, pk, sv_n, offs_d, offs_n < N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            ok = _allowed(offs_m, offs_n, lo, hi, ex, N)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sdq_b + h * sdq_h + pq[:, None] * sdq_n + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=in_m[:, None])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, PERM, LO, HI, EX, QBI, QBC, KIND, TAB,
                     sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sd_b, sd_h, sd_n,
                     sdk_b, sdk_h, sdk_n, sdv_b, sdv_h, sdv_n, st_t, st_b, sc_t, sc_b, si_t, si_b,
                     si_k, H, N, scale_log2, scale,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kind, t, tb = _head_of_program(pid_bh, KIND, TAB, H, st_t, st_b)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    in_n = offs_n < N
    pk = tl.load(PERM + tb + offs_n, mask=in_n, other=0)
    k = _gather(K + b * sk_b + h * sk_h, pk, sk_n, offs_d, in_n)
    v = _gather(V + b * sv_b + h * sv_h, pk, sv_n, offs_d, in_n)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    n_qb = tl.load(QBC + t * sc_t + b * sc_b + pid_n)
    qbi = QBI + t * si_t + b * si_b + pid_n * si_k
    do_base = DO + b * sd_b + h * sd_h
    # One loop per head kind, the branch outside: a branch inside the loop body keeps Triton's
    # software pipeliner off the loop's loads (bench/aot_check.py, "pipelined").
    if kind == SYNTH_KIND:  # synthesized: dV only, P uniform over each query's range
        for i in range(0, n_qb):
            in_m, pq, lo, hi, ex, do, ok = _query_block(qbi + i, PERM, LO, HI, EX, tb, do_base,
                                                        sd_n, offs_d, offs_n, N, BLOCK_M)
            count = tl.maximum(hi - lo - ex.to(tl.int32), 1).to(tl.float32)
            p = tl.where(ok, 1.0 / count[:, None], 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    else:
        for i in range(0, n_qb):
            in_m, pq, lo, hi, ex, do, ok = _query_block(qbi + i, PERM, LO, HI, EX, tb, do_base,
                                                        sd_n, offs_d, offs_n, N, BLOCK_M)
            q = _gather(Q + b * sq_b + h * sq_h, pq, sq_n, offs_d, in_m)
            lse = tl.load(LSE + pid_bh.to(tl.int64) * N + pq, mask=in_m, other=float("inf"))
            delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + pq, mask=in_m, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    dk = dk * scale
    tl.store(DK + b * sdk_b + h * sdk_h + pk[:, None] * sdk_n + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=in_n[:, None])
    tl.store(DV + b * sdv_b + h * sdv_h + pk[:, None] * sdv_n + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=in_n[:, None])


# --------------------------------------------------------------------------- launchers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _capability(device: torch.device) -> int | None:
    """The GPU's compute capability as 80, 90, ...; None under the CPU interpreter."""
    if _interpreting() or device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _bh(x):  # strides of a (B, H, N, D) tensor whose last dim is contiguous
    return x.stride(0), x.stride(1), x.stride(2)


def _forward(q, k, v, kinds, tabs, tables: RangeTables, scale):
    B, H, N, D = q.shape
    bm, bn, warps, stages = launch_config("fwd", D, _capability(q.device), q.dtype)
    blk = tables.blocks(bm, bn)
    o = torch.empty(B, N, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, H, N, D)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(N, bm), B * H)
    _fwd_kernel[grid](q, k, v, o, lse, tables.perm, tables.lo, tables.hi, tables.excl,
                      blk.kb_start, blk.kb_end, kinds, tabs,
                      *_bh(q), *_bh(k), *_bh(v), *_bh(o),
                      tables.perm.stride(0), tables.perm.stride(1),
                      blk.kb_start.stride(0), blk.kb_start.stride(1), H, N, scale * LOG2E,
                      D=D, BLOCK_M=bm, BLOCK_N=bn, PRECISION=_precision(q.dtype), num_warps=warps,
                      num_stages=stages)
    return o, lse


def _backward(q, k, v, o, lse, do, kinds, tabs, tables: RangeTables, scale):
    B, H, N, D = q.shape
    cc = _capability(q.device)
    bm, bn, warps, stages = launch_config("dq", D, cc, q.dtype)
    blk = tables.blocks(bm, bn)
    do = do if do.stride(-1) == 1 else do.contiguous()
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, N)
    dq, dk, dv = (torch.empty(B, N, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
                  for _ in range(3))
    prec = _precision(q.dtype)
    st = (tables.perm.stride(0), tables.perm.stride(1))
    _bwd_dq_kernel[(triton.cdiv(N, bm), B * H)](
        q, k, v, do, dq, lse, delta, tables.perm, tables.lo, tables.hi, tables.excl,
        blk.kb_start, blk.kb_end, kinds, tabs, *_bh(q), *_bh(k), *_bh(v), *_bh(do), *_bh(dq),
        *st, blk.kb_start.stride(0), blk.kb_start.stride(1), H, N, scale * LOG2E, scale,
        D=D, BLOCK_M=bm, BLOCK_N=bn, PRECISION=prec, num_warps=warps, num_stages=stages)
    bm, bn, warps, stages = launch_config("dkdv", D, cc, q.dtype)
    blk = tables.blocks(bm, bn)
    _bwd_dkdv_kernel[(triton.cdiv(N, bn), B * H)](
        q, k, v, do, dk, dv, lse, delta, tables.perm, tables.lo, tables.hi, tables.excl,
        blk.qb_index, blk.qb_count, kinds, tabs, *_bh(q), *_bh(k), *_bh(v), *_bh(do), *_bh(dk),
        *_bh(dv), *st, blk.qb_count.stride(0), blk.qb_count.stride(1), blk.qb_index.stride(0),
        blk.qb_index.stride(1), blk.qb_index.stride(2), H, N, scale * LOG2E, scale,
        D=D, BLOCK_M=bm, BLOCK_N=bn, PRECISION=prec, num_warps=warps, num_stages=stages)
    return dq, dk, dv


class _PatternedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kinds, tabs, tables, scale):
        o, lse = _forward(q, k, v, kinds, tabs, tables, scale)
        ctx.save_for_backward(q, k, v, o, lse, kinds, tabs)
        ctx.tables, ctx.scale = tables, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kinds, tabs = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, kinds, tabs, ctx.tables, ctx.scale)
        return dq, dk, dv, None, None, None, None


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kinds: torch.Tensor,
                    table_of_head: torch.Tensor, tables: RangeTables,
                    scale: float | None = None) -> torch.Tensor:
    """Attention of one layer whose heads are learned, masked or synthesized, in one launch.

    Args:
        q, k, v: (B, H, N, D), fp32 / fp16 / bf16, last dimension contiguous; D in 16, 32,
            64, 128. On CUDA, or on CPU under ``TRITON_INTERPRET=1``.
        kinds: (H,) int32 `HeadKind` values: learned and masked heads take a softmax over
            their table, synthesized ones average v uniformly over it (q and k unused).
        table_of_head: (H,) int32, index into the T tables of `tables`.
        tables: `RangeTables` with (T, B, N) perm, lo, hi, excl. A learned head's table is the
            natural order with [0, n_valid) on every row.
        scale: softmax scale, default 1 / sqrt(D).

    Returns:
        (B, H, N, D) in q's dtype (a view of a (B, N, H, D) tensor). A row whose range holds
        no key outputs zero. Gradients flow to q, k and v.

    Example table of an intra-sentence head, sentences [0, 3) and [3, 5), natural order::

        p   : 0 1 2 3 4
        lo  : 0 0 0 3 3
        hi  : 3 3 3 5 5
    """
    B, H, N, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape, got {q.shape}, {k.shape}, {v.shape}")
    if D not in (16, 32, 64, 128):
        raise ValueError(f"head dim {D} is not supported (16, 32, 64 or 128)")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {q.dtype} is not supported")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.is_cuda or _interpreting()):
        raise ValueError("the fused kernel runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1)")
    if q.is_cuda and q.dtype == torch.float32:
        raise ValueError("the fused kernel takes bf16 or fp16 on a GPU (fp32 has no tensor-core "
                         "path): cast q, k and v to one of those, or run fp32 on the PyTorch path")
    if tables.perm.shape[1:] != (B, N):
        raise ValueError(f"tables are for (B, N) = {tuple(tables.perm.shape[1:])}, input is {(B, N)}")
    if kinds.shape != (H,) or table_of_head.shape != (H,):
        raise ValueError(f"kinds and table_of_head must be ({H},)")
    tables.check_permutations()  # a repeated position would be written by two programs
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kinds = kinds.to(device=q.device, dtype=torch.int32)
    table_of_head = table_of_head.to(device=q.device, dtype=torch.int32)
    return _PatternedAttention.apply(q, k, v, kinds, table_of_head, tables, scale)
