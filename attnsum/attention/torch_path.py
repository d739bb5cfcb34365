"""The fast PyTorch path of one layer under a head plan (CPU, and GPUs without Triton): learned
heads through SDPA, synthesized heads by prefix sums (no q, k), masked heads as dense attention
within the segments of their range tables (the range idea: attnsum/attention/__init__.py), or
at inference on CPU in the C kernel over the range tables themselves (kernels/cpu_kernels.c).
Same contract as reference.py: (B, H, N, D) in and out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from attnsum.kernels import cpu_kernels
from attnsum.kernels.reference import dense_masked_attention

from .inputs import all_heads, check_inputs, clear_padding
from .patterns import PatternContext, Ranges
from .plan import LayerPlan, reads_qk
from .reference import head_kinds, layer_allowed

# Inside, tensors are (B, N, h, D): the layout Hugging Face projections produce, so that the
# per-token gathers below are row gathers of a (B * N, h, D) view.


def _learned(x: torch.Tensor, k, v, valid, scale):
    """SDPA over non-padding keys. x, k, v: (B, N, h, D)."""
    any_key = valid.any(1)  # an all-padding document has no key: zero output, not NaN
    key_mask = (valid | ~any_key[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(x.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=key_mask, scale=scale)
    return out.transpose(1, 2) * any_key[:, None, None, None].to(out.dtype)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, M, h, D), index (B, N) into M -> (B, N, h, D): one row gather of a flat view."""
    B, M, h, D = x.shape
    flat = index + M * torch.arange(B, device=x.device)[:, None]
    return x.reshape(B * M, h, D).index_select(0, flat.flatten()).view(B, -1, h, D)


def _single_key(r: Ranges) -> bool:
    """Every row attends at most one key, in natural order (next / previous token)."""
    return r.perm is None and not bool(r.exclude_self.any()) and bool(((r.hi - r.lo) <= 1).all())


def _synthesize(v: torch.Tensor, r: Ranges, single: bool) -> torch.Tensor:
    """Mean of v (B, N, h, D) over each range, without q or k: differences of fp64 prefix sums
    (`single`: `_single_key(r)`, known once per batch)."""
    if single:
        # One key or none per row (next / previous token): a row gather, no prefix sums.
        return _rows(v, r.lo.long()) * (r.hi > r.lo)[:, :, None, None].to(v.dtype)
    # fp64 prefix sums: a difference of fp32 sums loses the low bits of values far from zero
    vo = v.double() if r.perm is None else _rows(v.double(), r.perm)
    cs = F.pad(torch.cumsum(vo, dim=1), (0, 0, 0, 0, 1, 0))  # (B, N+1, h, D)
    total = _rows(cs, r.hi.long()) - _rows(cs, r.lo.long())
    total = total - vo * r.exclude_self[:, :, None, None]
    out = total / r.counts().clamp_min(1)[:, :, None, None]
    if r.perm is not None:
        out = _rows(out, torch.argsort(r.perm, dim=1))
    return out.to(v.dtype)


@dataclass
class _Segments:
    """Index plan of one masked pattern for one batch, in numpy (flat `b * N + n` indices).

    Consecutive rows (in the ranges' order) with the same range form a segment: its queries
    attend the same keys (an intra-sentence span, a group of equal tokens, one row of an offset).
    Segments are bucketed by padded (queries, keys) sizes, powers of two of at least
    `MIN_SLOTS`, so each bucket is one batched dense attention with no work outside the pattern
    but the padding. Per bucket, keyed by its (query slots, key slots): the additive bias
    (S, bq, bk) (0 where allowed, -inf elsewhere), the flat index of each query slot (S * bq,) and
    key slot (S * bk,), and the query slots that are real queries. `full`: the rows that attend
    every key, a segment a document of m query slots (bias (B, 1, N); keys: the document's).
    """

    buckets: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    full: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # bias, q_idx, real rows


# Query and key slots of a segment: a power of two, at least 8. Smaller buckets save little
# arithmetic and cost a batched product each (one document's match heads: 4 buckets, not 6);
# 16 padded the many pairs and fours of a batch of 32 into 16 x 16 softmaxes for no gain
# (docs/results.md). A rule of the segment's own sizes only, so that a document's buckets,
# and its bf16 rounding, do not follow its batch.
MIN_SLOTS = 8


def _slots(x: np.ndarray) -> np.ndarray:
    return np.where(x <= MIN_SLOTS, MIN_SLOTS,
                    2 ** np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64))


def _coarse(n: int) -> int:
    """n rounded up to a multiple of 2^(floor(log2 n) - 2): at most 25% more, four sizes per
    octave, so that batches repeat shapes (the CPU's bf16 matmuls keep one compiled kernel per
    shape: a service that saw every size once would keep growing)."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


def _build_segments(r: Ranges, N: int) -> _Segments:
    """The index plan, computed in numpy on the host (a few hundred small steps: numpy's cost
    per step is a fraction of torch's, and the plan needs its sizes on the host anyway)."""
    lo_all, hi_all, ex_all = (t.cpu().numpy() for t in (r.lo, r.hi, r.exclude_self))
    B = lo_all.shape[0]
    perm = (r.perm.cpu().numpy() if r.perm is not None
            else np.broadcast_to(np.arange(N), (B, N)))
    full_all = r.full.cpu().numpy() if r.full is not None else None
    banded = (hi_all - lo_all - ex_all) > 0
    if full_all is not None:
        banded &= ~full_all
    b, p = banded.nonzero()  # rows in (b, p) order
    lo, hi, ex = lo_all[b, p].astype(np.int64), hi_all[b, p].astype(np.int64), ex_all[b, p]
    change = np.ones(len(p), dtype=bool)
    change[1:] = ((b[1:] != b[:-1]) | (p[1:] != p[:-1] + 1) | (lo[1:] != lo[:-1])
                  | (hi[1:] != hi[:-1]) | (ex[1:] != ex[:-1]))
    first = change.nonzero()[0]
    n_rows = np.diff(first, append=len(p))
    sb, sp, slo, sk, sex = b[first], p[first], lo[first], (hi - lo)[first], ex[first]
    # bucket of each segment: its (query slots, key slots) as one integer (both below 2^31)
    code, bucket, counts = np.unique((_slots(n_rows) << 32) | _slots(sk), return_inverse=True,
                                     return_counts=True)
    pairs = np.stack([code >> 32, code & 0xFFFFFFFF], 1)
    # Each bucket's segments, then copies of its first up to `_coarse` of their number (padding
    # segments: their rows are never read back), bucket after bucket; every bucket at once.
    sizes = np.array([_coarse(int(n)) for n in counts], dtype=np.int64)
    lead = np.argsort(bucket, kind="stable")[np.cumsum(counts) - counts]
    seg = np.concatenate([np.arange(len(bucket)), np.repeat(lead, sizes - counts)])
    of = np.concatenate([bucket, np.repeat(np.arange(len(sizes)), sizes - counts)])
    order = np.argsort(of, kind="stable")
    seg, of, real = seg[order], of[order], order < len(bucket)
    bq, bk = pairs[of, 0], pairs[of, 1]

    def slots(width):  # the segment of each of its `width` slots, and the slot's index in it
        owner = np.repeat(np.arange(len(seg)), width)
        return seg[owner], owner, np.arange(len(owner)) - (np.cumsum(width) - width)[owner]

    s_q, o_q, tq = slots(bq)
    qpos = sp[s_q] + tq  # ordered positions
    q_idx = sb[s_q] * N + perm[sb[s_q], np.minimum(qpos, N - 1)]
    s_k, _, tk = slots(bk)
    k_idx = sb[s_k] * N + perm[sb[s_k], np.minimum(slo[s_k] + tk, N - 1)]
    rows = ((tq < n_rows[s_q]) & real[o_q]).nonzero()[0]
    q_start = np.cumsum(sizes * pairs[:, 0]) - sizes * pairs[:, 0]
    k_start = np.cumsum(sizes * pairs[:, 1]) - sizes * pairs[:, 1]
    s_start = np.cumsum(sizes) - sizes
    row_split = np.split(rows, np.searchsorted(of[o_q][rows], np.arange(1, len(sizes))))
    zero, minus_inf = np.float32(0), np.float32(-np.inf)
    buckets = {}
    for j, ((bq_, bk_), S) in enumerate(zip(pairs.tolist(), sizes.tolist(), strict=True)):
        sel = seg[s_start[j]:s_start[j] + S]
        allowed = np.arange(bk_) < sk[sel, None, None]  # (S, 1, bk)
        if sex[sel].any():  # rows that leave themselves out
            allowed = allowed & ~(sex[sel, None, None] & (
                (sp[sel, None] + np.arange(bq_))[:, :, None]
                == (slo[sel, None] + np.arange(bk_))[:, None, :]))
        bias = np.where(np.broadcast_to(allowed, (S, bq_, bk_)), zero, minus_inf)
        buckets[bq_, bk_] = (bias, q_idx[q_start[j]:q_start[j] + S * bq_],
                             k_idx[k_start[j]:k_start[j] + S * bk_], row_split[j] - q_start[j])
    full = None
    if full_all is not None and full_all.any():
        m = min(N, _coarse(int(full_all.sum(1).max())))  # rows past the full ones unused
        ordered = np.argsort(~full_all, axis=1, kind="stable")[:, :m]  # full rows first
        full_rows = np.take_along_axis(perm, ordered, 1)
        full_real = np.take_along_axis(full_all, ordered, 1).reshape(-1).nonzero()[0]
        n_valid = hi_all.max(axis=1)  # a full row's range is the valid prefix of the order
        valid = np.zeros((B, N), dtype=bool)
        np.put_along_axis(valid, perm, np.arange(N)[None, :] < n_valid[:, None], 1)
        valid |= ~valid.any(1, keepdims=True)  # a document of padding only: no row is read back
        full = (np.where(valid, zero, minus_inf)[:, None, :],
                (full_rows + N * np.arange(B)[:, None]).reshape(-1), full_real)
    return _Segments(buckets, full)


@dataclass
class _Bucket:
    """One batched softmax attention over (head, segment) pairs of one or more masked groups:
    the flat rows of a (heads * B * N, D) head-major tensor its query and key slots read."""

    bias: list[tuple[np.ndarray, int]]  # per group: its segments' bias (S, bq or 1, bk), heads
    q_idx: torch.Tensor  # (G * bq,) for G = the sum of heads x S
    k_idx: torch.Tensor | None  # (G * bk,); None: every key of each document, in order, of
    heads: tuple[int, int] | None  # the heads [first, first + count) (rows that see every key)
    rows: torch.Tensor  # query slots that are real queries
    dest: torch.Tensor  # the flat (head * B * N + row) index each of their outputs goes to
    cache: dict = field(default_factory=dict)

    def bias_as(self, dtype, device) -> torch.Tensor:
        """The (G, bq or 1, bk) bias in `dtype`, each group's repeated for its heads: built once
        per batch and dtype (in torch: a copy of a batch of 32's bias is megabytes)."""
        if dtype not in self.cache:
            self.cache[dtype] = torch.cat([
                torch.from_numpy(b).to(device, dtype).expand(h, *b.shape).reshape(h * len(b), *b.shape[1:])
                for b, h in self.bias])
        return self.cache[dtype]


def _merge_segments(segs: list[_Segments], heads: list[int], B: int, N: int, device
                    ) -> list[_Bucket]:
    """One bucket per (query slots, key slots) over every group (head after head, a group's
    heads at its offset in the concatenated heads), and each group's rows that attend every key
    as a bucket of its own (its keys a view, no gather). A segment's matrices are the same
    whichever bucket holds them, so merging changes no result."""
    BN = B * N
    offsets = np.cumsum([0, *heads])[:-1].tolist()
    parts: dict[tuple[int, int], list] = {}
    for sg, h, off in zip(segs, heads, offsets, strict=True):
        for key, bucket in sg.buckets.items():
            parts.setdefault(key, []).append((bucket, h, off))

    def head_rows(idx, h, off):  # (h * len(idx),) flat rows of the group's heads, head-major
        return ((off + np.arange(h))[:, None] * BN + idx[None, :]).reshape(-1)

    # Every index array of the plan goes to torch as one tensor; the buckets hold views of it.
    arrays: list[np.ndarray] = []
    specs = []  # per bucket: bias parts, heads, and the arrays' numbers of q, k, rows, dest
    for (bq, _), group in parts.items():
        q_idx, k_idx, rows, dest, base = [], [], [], [], 0
        for (b_, q_, k_, r_), h, off in group:
            q_idx.append(head_rows(q_, h, off))
            k_idx.append(head_rows(k_, h, off))
            rows.append(base + ((np.arange(h) * len(b_) * bq)[:, None] + r_[None, :]).reshape(-1))
            dest.append(head_rows(q_[r_], h, off))
            base += h * len(b_) * bq
        arrays += [np.concatenate(x) for x in (q_idx, k_idx, rows, dest)]
        specs.append(([(b_, h) for (b_, *_), h, _ in group], None, len(arrays) - 4))
    for sg, h, off in zip(segs, heads, offsets, strict=True):
        if sg.full is not None:
            b_, q_, r_ = sg.full
            m = len(q_) // B
            arrays += [head_rows(q_, h, off), np.zeros(0, np.int64),
                       ((np.arange(h) * B * m)[:, None] + r_).reshape(-1), head_rows(q_[r_], h, off)]
            specs.append(([(b_, h)], (off, h), len(arrays) - 4))
    if not arrays:
        return []
    views = torch.from_numpy(np.concatenate(arrays)).to(device).split([len(a) for a in arrays])
    return [_Bucket(bias, views[i], None if heads_ else views[i + 1], heads_, views[i + 2],
                    views[i + 3]) for bias, heads_, i in specs]


def _softmax_attention(q, k, v, bias, scale: float) -> torch.Tensor:
    """Softmax attention of q (G, m, D) over k, v (G, n, D) with an additive `bias` (G, m or 1,
    n), -inf where not allowed: (G, m, D). Batched products with the scale and bias folded into
    the first (on CPU faster than SDPA's fused kernel at these sizes, docs/results.md) and a
    softmax, in the inputs' dtype."""
    p = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1)
    return torch.bmm(p, v)


def _masked_attention(q, k, v, plan: list[_Bucket], scale: float) -> torch.Tensor:
    """Softmax attention restricted to the ranges of every masked group of a layer at once:
    one batched attention per bucket. q, k, v: head-major (h, B, N, D), contiguous, the groups'
    heads concatenated; returns (B, N, h, D). Rows are gathered from (h * B * N, D) views, so a
    gather is the bucket's batch of matrices as it is."""
    h, B, N, D = q.shape
    xq, xk, xv = (x.view(h * B * N, D) for x in (q, k, v))
    out = q.new_zeros(h * B * N, D)
    for bk in plan:
        bias = bk.bias_as(q.dtype, q.device)
        G, nk = bias.shape[0], bias.shape[2]
        if bk.k_idx is None:  # every key of each document: a view of the group's heads
            first, count = bk.heads
            ks, vs = (x[first * B * N:(first + count) * B * N].view(G, nk, D) for x in (xk, xv))
        else:
            ks, vs = (x.index_select(0, bk.k_idx).view(G, nk, D) for x in (xk, xv))
        o = _softmax_attention(xq.index_select(0, bk.q_idx).view(G, -1, D), ks, vs, bias, scale)
        out.index_copy_(0, bk.dest, o.view(-1, D).index_select(0, bk.rows))
    return out.view(h, B * N, D).transpose(0, 1).view(B, N, h, D)


def _kernel_applies(tensors) -> bool:
    """Inference on CPU in bf16 or fp32 with the compiled kernel (kernels/cpu_kernels.py)."""
    q = tensors[0]
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float32)
            and all(x.dtype == q.dtype and x.stride(-1) == 1 for x in tensors)
            and not (torch.is_grad_enabled() and any(x.requires_grad for x in tensors))
            and cpu_kernels.available())


class _SplitHeads(torch.autograd.Function):
    """x (B, N, H, D) -> one (B, N, h_g, D) tensor per head group (the groups partition the
    heads). Backward writes each group's gradient into its heads: one copy, no zero fill."""

    @staticmethod
    def forward(ctx, x, *groups):
        ctx.save_for_backward(*groups)
        ctx.shape = x.shape
        return tuple(x.index_select(2, g) for g in groups)

    @staticmethod
    def backward(ctx, *grads):  # grads are materialized: zeros for unused groups
        out = grads[0].new_empty(ctx.shape)
        for g, grad in zip(ctx.saved_tensors, grads, strict=True):
            out.index_copy_(2, g, grad)
        return (out, *(None for _ in grads))


class _MergeHeads(torch.autograd.Function):
    """Inverse of `_SplitHeads`: group outputs back into (B, N, H, D)."""

    @staticmethod
    def forward(ctx, groups, *parts):
        ctx.groups = groups
        B, N, _, D = parts[0].shape
        out = parts[0].new_empty(B, N, sum(len(g) for g in groups), D)
        for g, part in zip(groups, parts, strict=True):
            out.index_copy_(2, g, part)
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, *(grad.index_select(2, g) for g in ctx.groups))


def torch_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None
                    ) -> torch.Tensor:
    """Fast PyTorch path: learned heads through SDPA, synthesized heads by prefix sums (no q, k),
    masked heads as dense attention within the segments of their ranges; patterns without
    ranges fall back to the dense reference for their heads. Differentiable by autograd.
    q and k may hold only the heads that read them (inputs.py)."""
    check_inputs(q, k, v, plan, ctx)
    groups: dict[object, list[int]] = {}
    for h, spec in enumerate(plan):
        groups.setdefault(spec, []).append(h)
    heads = [h for hs in groups.values() for h in hs]
    # Each group's heads consecutive (as `group_heads` in hf.py arranges a served model): the
    # groups are views. Else gathered copies, of every head's q and k.
    consecutive = heads == list(range(len(plan)))
    if not consecutive:
        q, k = all_heads(q, k, plan, v.shape[1])
    q, k, v = clear_padding(q, k, v, ctx)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # Work in (B, N, H, D), one tensor per group of heads sharing a spec.
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    sizes = [len(hs) for hs in groups.values()]
    if len(groups) == 1:
        qs, ks, vs = (q,), (k,), (v,)
    elif consecutive:
        vs = v.split(sizes, dim=2)
        if q.shape[2] == len(plan):
            qs, ks = q.split(sizes, dim=2), k.split(sizes, dim=2)
        elif any(reads_qk(spec) for spec in groups):  # only the heads that read q and k
            qk_sizes = [n if reads_qk(spec) else 0 for spec, n in zip(groups, sizes, strict=True)]
            qs, ks = q.split(qk_sizes, dim=2), k.split(qk_sizes, dim=2)
        else:  # synthesized heads only: q and k unused
            qs = ks = (None,) * len(groups)
    else:
        index = [torch.tensor(hs, device=q.device) for hs in groups.values()]
        qs, ks, vs = (_SplitHeads.apply(x, *index) for x in (q, k, v))
    outs: list[torch.Tensor | None] = []
    masked = []  # groups of masked heads with range tables: attended together
    for i, (spec, qh, kh, vh) in enumerate(zip(groups, qs, ks, vs, strict=True)):
        if spec is None:
            o = _learned(qh, kh, vh, ctx.valid, scale)
        elif not spec.pat.has_ranges:
            sub = (spec,) * vh.shape[2]
            if qh is None or qh.shape[2] != vh.shape[2]:
                qh = kh = torch.zeros_like(vh)  # synthesized heads do not read them
            o = dense_masked_attention(qh.transpose(1, 2), kh.transpose(1, 2), vh.transpose(1, 2),
                              layer_allowed(sub, ctx), head_kinds(sub, v.device),
                              scale)[0].transpose(1, 2)
        elif spec.mode == "synth":
            r = ctx.ranges(spec.pat)
            o = _synthesize(vh, r, ctx.memo(("single", spec.pattern), lambda r=r: _single_key(r)))
        else:
            masked.append(i)
            o = None
        outs.append(o if o is None else o.to(v.dtype))
    if masked:  # every masked group of the layer at once
        specs = [spec for i, spec in enumerate(groups) if i in masked]
        counts, N = [sizes[i] for i in masked], v.shape[1]
        if _kernel_applies([x[i] for i in masked for x in (qs, ks, vs)]):
            # the CPU kernel reads each group's views and writes its heads: no copies, no plan
            o = v.new_empty(*v.shape[:2], sum(counts), v.shape[3])
            first = 0
            for i, sp, h in zip(masked, specs, counts, strict=True):
                r = ctx.ranges(sp.pat)
                cpu_kernels.range_attention(qs[i], ks[i], vs[i], o[:, :, first:first + h], r.lo,
                                            r.hi, r.perm, r.exclude_self, scale)
                first += h
        else:  # one set of buckets (_merge_segments) over head-major copies of q, k, v
            merged = ctx.memo(("masked", *(sp.pattern for sp in specs), *counts), lambda: _merge_segments(
                [ctx.memo(("segments", sp.pattern), lambda p=sp.pat: _build_segments(ctx.ranges(p), N))
                 for sp in specs], counts, v.shape[0], N, v.device))
            parts = [torch.cat([x[i].permute(2, 0, 1, 3) for i in masked]) for x in (qs, ks, vs)]
            o = _masked_attention(*parts, merged, scale).to(v.dtype)
        for i, part in zip(masked, o.split(counts, dim=2), strict=True):
            outs[i] = part
    if len(outs) == 1:
        out = outs[0]
    elif consecutive:
        out = torch.cat(outs, dim=2)
    else:
        out = _MergeHeads.apply(tuple(index), *outs)
    return out.transpose(1, 2)
