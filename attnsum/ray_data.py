"""Summaries of corpora beyond one machine: a Ray Data pipeline over a pool of summarizer actors
(the `ray` extra). Each actor loads the model once and summarizes batches of rows; the rows
keep their other columns and gain the summary's.

    import ray
    from attnsum.ray_data import summarize_dataset

    ray.init(address="auto")                      # or ray.init() on one machine
    ds = ray.data.read_parquet("s3://bucket/articles/")
    summarize_dataset(ds, field="article", actors=8).write_parquet("s3://bucket/summaries/")

On a cluster: `ray start --head` on one machine, `ray start --address=HEAD:6379` on the others,
then the lines above from any of them (docs/commands.md). Each row gets `summary` (the chosen
sentences), `indices`, `scores` and `error` (None, or why the document could not be summarized),
the same as `Summarizer.summarize(..., errors="return")` in one process.
"""

from __future__ import annotations

from .extras import need
from .precision import DEFAULT_PRECISION

COLUMNS = {"summary": "sentences", "indices": "indices", "scores": "scores", "error": "error"}


class SummarizerActor:
    """One model, loaded once per actor; called on a pandas batch of rows."""

    def __init__(self, checkpoint: str | None, field: str, k: int, precision: str,
                 max_len: int | None):
        from .summarizer import Summarizer

        self.summarizer = Summarizer.from_pretrained(checkpoint, precision=precision,
                                                     max_len=max_len)
        self.field, self.k = field, k

    def __call__(self, batch):
        records = [r.to_dict() for r in self.summarizer.summarize(
            [str(t) for t in batch[self.field]], k=self.k, errors="return")]
        # a Summary's record has sentences, indices and scores; a DocumentError's, error
        for column, key in COLUMNS.items():
            batch[column] = [rec.get(key) for rec in records]
        return batch


def summarize_dataset(ds, checkpoint: str | None = None, field: str = "text", k: int = 3,
                      actors: int = 2, batch_size: int = 32, precision: str = DEFAULT_PRECISION,
                      max_len: int | None = None, cpus_per_actor: float = 1.0):
    """`ds` (a ray.data.Dataset with a `field` column of texts) with each row's summary added:
    `actors` summarizer actors, `batch_size` rows a call, `cpus_per_actor` CPUs reserved for
    each (leave some for reading: on 2 CPUs, 2 actors of 0.5)."""
    need("ray", "summarize_dataset")
    return ds.map_batches(SummarizerActor, batch_format="pandas", batch_size=batch_size,
                          concurrency=actors, num_cpus=cpus_per_actor,
                          fn_constructor_kwargs={"checkpoint": None if checkpoint is None
                                                 else str(checkpoint), "field": field, "k": k,
                                                 "precision": precision, "max_len": max_len})
