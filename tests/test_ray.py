"""The Ray Data recipe (attnsum/ray_data.py) on a local Ray of 2 CPUs started here: its rows
equal one process's summaries of the same documents, errors in place."""

import pytest
import ray


def test_ray_summaries_equal_one_process(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnsum.ray_data import summarize_dataset
    from attnsum.summarizer import Summarizer

    base = ("The city council approved a new budget for public schools on Tuesday night. "
            "Teachers had asked for smaller classes and better equipment for many years. "
            "The mayor said the plan would be paid for by a small rise in property taxes. "
            "Some residents argued that the rise would hurt families with low incomes. ")
    texts = [base + f"The vote in district {i} was close, with {i + 3} members against it."
             for i in range(5)] + ["too short"]
    ids = [f"doc-{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "article": texts}), tmp_path / "part.parquet",
                   row_group_size=2)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             log_to_driver=False)
    try:
        ds = summarize_dataset(ray.data.read_parquet(str(tmp_path / "part.parquet")),
                               field="article", k=2, actors=2, batch_size=2, precision="fp32",
                               cpus_per_actor=0.5)
        rows = {r["id"]: r for r in ds.take_all()}
    finally:
        ray.shutdown()
    one = Summarizer.from_pretrained(precision="fp32").summarize(texts, k=2, errors="return")
    assert sorted(rows) == sorted(ids)
    for i, want in zip(ids, one, strict=True):
        got = rows[i]
        if i == "doc-5":
            assert got["error"] == want.error and got["summary"] is None
            continue
        assert got["error"] is None and list(got["summary"]) == want.sentences
        assert list(got["indices"]) == want.indices
        assert list(got["scores"]) == pytest.approx(want.scores, abs=1e-6)
