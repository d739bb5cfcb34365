"""Compact shards of preprocessed examples (attnsum/shards.py): the round trip, training from
shards exactly as from the dataset, and clear errors."""

import json
from dataclasses import replace

import pytest
from helpers import embedded_examples

from attnsum.cli import main
from attnsum.data import DataError
from attnsum.evaluate import read_scores
from attnsum.shards import read_shard, write_shard


@pytest.fixture(scope="module")
def examples():
    return embedded_examples("val", limit=10, max_len=128)


def test_round_trip(tmp_path, examples):
    write_shard(examples, tmp_path, "val", 128)
    assert read_shard(tmp_path, "val", 128, need_texts=True) == examples
    assert read_shard(tmp_path, "val", limit=3) == examples[:3]
    write_shard(examples, tmp_path, "train", 128)  # tokens and ids only
    back = read_shard(tmp_path, "train", 128)
    blank = dict(sentences=[], reference=[], all_sentences=[], oracle=[])
    assert back == [replace(e, **blank) for e in examples]
    assert not (tmp_path / "train" / "texts.jsonl.gz").exists()


def test_training_from_shards_equals_training_from_the_dataset(tmp_path):
    common = ["--preset", "tiny", "--limit", "8", "--max-len", "128", "--steps", "3",
              "--val-every", "3", "--log-every", "1"]
    assert main(["shard", "--dataset", "embedded", "--limit", "8", "--max-len", "128",
                 "--out", str(tmp_path / "shards")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--dataset", str(tmp_path / "shards"),
                 "--out", str(tmp_path / "b")]) == 0
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").open()]  # noqa: E731
    strip = lambda ms: [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in ms]  # noqa: E731
    assert strip(read("b")) == strip(read("a"))


def test_bad_shards_are_clear_errors(tmp_path, examples):
    write_shard(examples, tmp_path, "train", 128)
    with pytest.raises(DataError, match="written for --max-len 128, asked for 512"):
        read_shard(tmp_path, "train", 512)
    with pytest.raises(DataError, match="without texts"):
        read_shard(tmp_path, "train", need_texts=True)
    with pytest.raises(DataError, match="not a shard of split 'val'"):
        read_shard(tmp_path, "val")
    (tmp_path / "train" / "tokens.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable shard"):
        read_shard(tmp_path, "train")
    big = replace(examples[0], input_ids=[70000] + examples[0].input_ids[1:])
    with pytest.raises(DataError, match="uint16"):
        write_shard([big], tmp_path / "x", "train", 128)


def test_loss_validation_and_scores_scored_elsewhere(tmp_path):
    """The bare-GPU recipe: train from shards ranked by validation loss, write sentence scores,
    and select and score them with ROUGE on another machine."""
    import torch

    from attnsum.batching import collate, sentence_logits
    from attnsum.checkpoints import load_model, resolve_checkpoint
    from attnsum.losses import sentence_loss

    shards, run = tmp_path / "shards", tmp_path / "run"
    common = ["--limit", "6", "--max-len", "128"]
    assert main(["shard", "--dataset", "embedded", *common, "--out", str(shards)]) == 0
    # fp32: the validation loss is compared with an fp32 recomputation below
    assert main(["train", "--preset", "tiny", "--dataset", str(shards), *common, "--steps", "2",
                 "--val-every", "2", "--val-metric", "loss", "--precision", "fp32",
                 "--out", str(run)]) == 0
    [val] = [m["val"] for m in map(json.loads, (run / "metrics.jsonl").open()) if "val" in m]
    model = load_model(resolve_checkpoint(run)).eval()
    with torch.no_grad():  # one document at a time: no padding at all
        losses = [float(sentence_loss(sentence_logits(model, b), b.labels, b.sentence_mask))
                  for b in (collate([e]) for e in read_shard(shards, "val"))]
    assert val["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert val["mean"] == -val["loss"]

    scores = tmp_path / "scores.jsonl"
    assert main(["score", "--checkpoint", str(run), "--dataset", str(shards), *common,
                 "--out", str(scores)]) == 0
    assert main(["evaluate", "--system", "", "--split", "val", *common, "--scores", str(scores),
                 "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    read = lambda name: [json.loads(x) for x in (tmp_path / "eval" / name).open()]  # noqa: E731
    assert read("scores.predictions.jsonl") == read("model.predictions.jsonl")

    lines = scores.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    for text, message in [("\n".join(lines[1:]), "no scores for document"),
                          (lines[0].replace("[", "[0.5, ", 1) + "\n" + "\n".join(lines[1:]),
                           "scores for"),
                          ("{not json", "not a scores file")]:
        bad.write_text(text + "\n")
        with pytest.raises(DataError, match=message):
            read_scores(bad, embedded_examples("val", limit=6, max_len=128))
