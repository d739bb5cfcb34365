"""Range tables and their block structure, in plain PyTorch (no Triton): what the fused kernel
reads, and what the work model (attnsum/attention/work.py) counts.

A range table says, for each query at ordered position p of some ordering `perm` of a batch's
positions, which contiguous keys [lo[p], hi[p]) of that ordering it attends (minus itself when
excl[p]); see attnsum/attention/__init__.py, "range tables". Block tables list, for each block of
BLOCK_M ordered queries, the span of key blocks of BLOCK_N that its rows' ranges touch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RangeTables:
    """T range tables over a batch, all (T, B, N): perm (int32, ordered position -> original
    position), lo / hi (int32, ordered key range of each ordered query), excl (int8, 1 = the
    query's own key is excluded)."""

    perm: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    excl: torch.Tensor
    _blocks: dict = field(default_factory=dict, repr=False)
    _permutations_checked: bool = field(default=False, repr=False)

    def __post_init__(self):
        shape = self.perm.shape
        if self.perm.dim() != 3 or any(t.shape != shape for t in (self.lo, self.hi, self.excl)):
            raise ValueError("perm, lo, hi and excl must all be (T, B, N)")
        self.perm, self.lo, self.hi = (t.to(torch.int32).contiguous()
                                       for t in (self.perm, self.lo, self.hi))
        self.excl = self.excl.to(torch.int8).contiguous()

    def check_permutations(self) -> None:
        """Raise ValueError unless every row of perm is a permutation of 0..N-1 (sorted, it
        equals arange): the kernels write each row through perm, so a repeated position would be
        written by two programs at once. Checked once per tables object."""
        if self._permutations_checked:
            return
        N = self.perm.shape[-1]
        if not torch.equal(self.perm.sort(-1).values,
                           torch.arange(N, device=self.perm.device, dtype=self.perm.dtype)
                           .expand_as(self.perm)):
            raise ValueError("a range table's perm is not a permutation of its positions on "
                             "every row (a pattern's ranges() is wrong)")
        self._permutations_checked = True

    def blocks(self, block_m: int, block_n: int) -> BlockTables:
        key = (block_m, block_n)
        if key not in self._blocks:
            self._blocks[key] = _block_tables(self, block_m, block_n)
        return self._blocks[key]


@dataclass
class BlockTables:
    """Block structure of `RangeTables` for one block size.

    kb_start, kb_end: (T, B, NQB) int32, the key blocks each query block visits.
    qb_index: (T, B, NKB, MAXQ) int32, the query blocks that visit each key block, and
    qb_count: (T, B, NKB) int32 how many of them there are.
    """

    kb_start: torch.Tensor
    kb_end: torch.Tensor
    qb_index: torch.Tensor
    qb_count: torch.Tensor


def _block_tables(t: RangeTables, block_m: int, block_n: int) -> BlockTables:
    T, B, N = t.lo.shape
    nqb, nkb = -(-N // block_m), -(-N // block_n)
    lo, hi = t.lo.long(), t.hi.long()
    nonempty = hi - lo - t.excl.long() > 0
    pad = nqb * block_m - N

    def blocks(x, fill):
        return torch.nn.functional.pad(x, (0, pad), value=fill).view(T, B, nqb, block_m)

    start = blocks(torch.where(nonempty, lo, N), N).amin(-1)
    end = blocks(torch.where(nonempty, hi, 0), 0).amax(-1)
    kb_start = torch.div(start, block_n, rounding_mode="floor")
    kb_end = torch.where(end > start, torch.div(end + block_n - 1, block_n, rounding_mode="floor"),
                         kb_start)
    kb = torch.arange(nkb, device=lo.device)
    visits = (kb_start[..., None] <= kb) & (kb < kb_end[..., None])  # (T, B, NQB, NKB)
    by_key = visits.transpose(-1, -2)  # (T, B, NKB, NQB)
    count = by_key.sum(-1)
    maxq = max(1, int(count.max().item()))
    order = torch.argsort((~by_key).to(torch.int8), dim=-1, stable=True)[..., :maxq]
    return BlockTables(kb_start.to(torch.int32).contiguous(), kb_end.to(torch.int32).contiguous(),
                       order.to(torch.int32).contiguous(), count.to(torch.int32).contiguous())
