"""The attention library: patterns, head plans, and one layer's attention under a plan, on three
paths that agree (the dense reference, a fast PyTorch path, the fused Triton kernel in
``attnsum.kernels``), with a Hugging Face plug-in. It imports nothing from the summarizer side.

Design notes (code comments cite this docstring)
================================================

Data flow, documents to summaries
---------------------------------
text -> sentences (data.py) -> BERTSum inputs ``[CLS] s1 [SEP] [CLS] s2 [SEP] ...`` with interval
segments and sentence spans (preprocess.py) -> padded batches and a `PatternContext` built once per
batch (batching.py) -> the encoder, each layer's heads following the `HeadPlan` (hf.py, this
package) -> one score per sentence [CLS] (model.py) -> top-k with trigram blocking
(evaluate.py) -> summaries (summarizer.py, summarize_files.py, serve.py).

The plan travels in one form: `HeadPlan` (plan.py), parsed from the CLI's text or JSON, stored in
the checkpoint config, handed with the batch's `PatternContext` to the encoder as one explicit
`PlanInputs` forward argument (hf.py), of which each layer takes its `LayerPlan` row.

Range tables: one idea that makes every pattern cheap
-----------------------------------------------------
Every built-in pattern head is "query i attends the contiguous range [lo_i, hi_i) of some ordering
of the positions", minus possibly itself:

- positional +1 / -1: the range is the single neighbour;
- intra-sentence: the sentence's span in the natural order;
- matching token: positions sorted by token id (stable), so equal tokens are contiguous; the
  range is the token's group, self excluded. Sorted once per batch, shared by every layer.

So a synthesized (uniform) head needs no QK^T and no softmax: its output is the mean of V over
the range (prefix sums, O(N D)); a masked head is flash attention restricted to its range, and a
program for a block of queries visits only the key blocks its rows' ranges touch; learned heads
are ordinary attention. Tables are per batch (patterns.py `PatternContext.ranges`, memoized).

Layers of a kernel (kernels/fused.py)
-------------------------------------
``@triton.jit`` kernels -> launchers that own layout, grid and block sizes -> an
``autograd.Function`` that only saves context and calls launchers -> one public function
(`attnsum.kernels.fused.fused_attention`) whose docstring states every shape -> adapters
(triton_path.py: plans to tables; hf.py: the Hugging Face attention interface). The dense
reference (`attnsum.kernels.dense_masked_attention`) has the same contract and checks all of them.

Tolerance rule (tests and benchmarks)
-------------------------------------
A path's maximum error against the fp32 dense reference must be at most twice the error of
PyTorch's own computation of the reference in the same low precision (fp16, bf16), plus a small
epsilon; fp32 paths are compared with fixed small tolerances. Backward is always checked, with
one shared upstream gradient for every path.

Modules: patterns.py (the batch context, predicates and range tables), builtin_patterns.py (the
built-in patterns), registry.py (pattern names and user pattern files), plan.py (head plans),
inputs.py (the checks every path makes of its inputs), reference.py (dense),
torch_path.py (fast PyTorch), triton_path.py (adapter to the kernel), dispatch.py (the one entry
point, `patterned_attention`), hf.py (Hugging Face plug-in).
"""

from .dispatch import BACKENDS, patterned_attention
from .hf import PlanInputs, apply_plan
from .patterns import Pattern, PatternContext, PatternError, Ranges
from .plan import HeadPlan, HeadSpec, LayerPlan
from .reference import layer_allowed, reference_attention
from .registry import get_pattern, load_pattern_file, pattern_names, register_pattern
from .torch_path import torch_attention

__all__ = ["BACKENDS", "HeadPlan", "HeadSpec", "LayerPlan", "Pattern", "PatternContext",
           "PatternError", "PlanInputs", "Ranges", "apply_plan", "get_pattern", "layer_allowed",
           "load_pattern_file", "pattern_names",
           "patterned_attention", "reference_attention", "register_pattern", "torch_attention"]
