import os

# The fused kernels run on CPU through Triton's interpreter; it must be set before triton loads.
# ATTNSUM_COMPILED=1 leaves it off, so that on a GPU tests/test_fused.py runs the compiled kernels
# (bench/gpu_session.py does).
COMPILED = os.environ.get("ATTNSUM_COMPILED") == "1"
if not COMPILED:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_CNNDM = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm"


def pytest_report_header(config):
    from attnsum.precision import resolve_precision

    return f"attnsum: {resolve_precision('auto', 'cpu').describe()}"


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNSUM_CACHE", str(tmp_path_factory.getbasetemp() / "attnsum-cache"))


@pytest.fixture
def cnndm_dir():
    if not SHARED_CNNDM.is_dir():
        pytest.skip("../shared/data/cnndm is not present")
    return SHARED_CNNDM
