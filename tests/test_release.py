"""Training from the pretrained MiniLM with frozen word embeddings, releases made small for git
(bf16, the embeddings referenced), and the released news model used by default."""

import json

import pytest
import torch
from helpers import embedded_examples
from safetensors import safe_open

from attnsum.batching import predict_scores
from attnsum.checkpoints import WORD_EMBEDDINGS, load_model, minilm_word_embeddings
from attnsum.cli import main
from attnsum.config import ModelConfig, TrainConfig
from attnsum.errors import ConfigError, InputError
from attnsum.model import SummarizerModel
from attnsum.precision import resolve_precision
from attnsum.release import DEFAULT_MODEL, MODELS_DIR
from attnsum.summarizer import DocumentError, Summarizer
from attnsum.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two steps of a 2-layer student started from MiniLM's layers 2 and 5, embeddings frozen."""
    out = tmp_path_factory.mktemp("release") / "run"
    train(TrainConfig(model=ModelConfig.from_preset("student-mini-2", max_len=128),
                      init_from="minilm", freeze_embeddings=True, limit=6, steps=2, batch_size=2,
                      val_every=2, lr=1e-3, precision="fp32", progress=False, out=str(out)))
    return out


def test_init_from_minilm_takes_its_layers_and_keeps_frozen_embeddings(run):
    student = load_model(run).state_dict()
    minilm = SummarizerModel(ModelConfig.from_preset("minilm")).state_dict()
    assert torch.equal(student[WORD_EMBEDDINGS], minilm_word_embeddings())
    # the trained layers moved away from MiniLM's layers 2 and 5, the embeddings did not
    for mine, theirs in ((0, 2), (1, 5)):
        key = "encoder.encoder.layer.{}.attention.self.query.weight"
        diff = (student[key.format(mine)] - minilm[key.format(theirs)]).abs().max()
        assert 0 < diff < 0.05
    summary = json.loads((run / "last" / "config.json").read_text())
    assert summary["init_layers"] == [2, 5] and summary["train"]["freeze_embeddings"]


def test_release_is_small_and_scores_like_the_run(run, tmp_path):
    out = tmp_path / "models" / "tiny-news"
    assert main(["release", str(run), "--out", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert WORD_EMBEDDINGS not in keys  # referenced from the MiniLM package, not stored
        assert {f.get_tensor(k).dtype for k in keys if "position" not in k} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["release"]["word_embeddings"] == "minilm"
    card = (out / "README.md").read_text()
    assert "# tiny-news" in card and "| 2 | 4 |" in card and "layers [2, 5]" in card
    examples = embedded_examples("val", limit=6, max_len=128)
    a = predict_scores(load_model(run), examples, resolve_precision("fp32", "cpu"))
    b = predict_scores(load_model(out), examples, resolve_precision("fp32", "cpu"))
    diffs = [abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)]
    assert max(diffs) < 0.02  # bf16 weights: 8 bits of mantissa


def test_a_missing_default_model_is_one_clear_error(monkeypatch, tmp_path, capsys):
    import attnsum.release as release

    monkeypatch.setattr(release, "MODELS_DIR", tmp_path)
    assert main(["summarize", str(_article(tmp_path))]) == 2
    assert "no --checkpoint given" in capsys.readouterr().err


@pytest.mark.skipif(not (MODELS_DIR / DEFAULT_MODEL / "config.json").is_file(),
                    reason="the released model is not in this checkout")
def test_the_released_news_model_summarizes_by_default():
    text = ("( cnn ) -- the city council approved a new budget for public schools on tuesday "
            "night . teachers had asked for smaller classes and better equipment for years . "
            "the mayor said the plan would be paid for by a small rise in property taxes . "
            "some residents argued that the rise would hurt families with low incomes . "
            "the budget also includes money for three new libraries across the city .")
    s = Summarizer.from_pretrained(precision="fp32")
    assert s.checkpoint == MODELS_DIR / DEFAULT_MODEL
    assert s.cfg.max_len == 512  # from its training record: the release predates the field
    [summary] = s.summarize(text)
    assert len(summary.sentences) in (2, 3) and all(x in text for x in summary.sentences)
    # its candidate selector chose them (candidates.py), among the pairs and triples
    ex = s.prepare([text])[0][0]
    assert s.model.selector is not None and s.model.selector.info["documents"] == 7979
    [top5] = s.summarize(text, k=5)
    probs = [top5.scores[top5.indices.index(i)] if i in top5.indices else 0.0
             for i in range(len(ex.sentences))]
    assert summary.indices == s.model.selector.select(probs, ex.sentences)


def test_the_api_gives_errors_in_place_and_keeps_a_length_budget():
    text = ("The city council approved a new budget for public schools on Tuesday night. "
            "Teachers had asked for smaller classes and better equipment for many years. "
            "The mayor said the plan would be paid for by a small rise in property taxes. "
            "Some residents argued that the rise would hurt families with low incomes. "
            "The budget also includes money for three new libraries across the city.")
    s = Summarizer.from_pretrained(precision="fp32")
    out = s.summarize([text, "   ", "Too short here.", text], errors="return")
    assert out[1] == DocumentError("empty document")
    assert out[2].to_dict() == {"error": "no sentence longer than 5 words to choose from"}
    alone = s.summarize(text)[0]  # the bad ones change nothing for the rest: the same picks,
    for got in (out[0], out[3]):  # scores to fp32's last bits (the batch's products differ in
        assert got.indices == alone.indices and got.sentences == alone.sentences  # shape)
        assert got.scores == pytest.approx(alone.scores, abs=1e-6)
    with pytest.raises(InputError, match="document 1: empty document"):
        s.summarize([text, "   "])
    # budgets: the best-scored sentences that fit (evaluate.select_top_k, tested apart)
    [full] = s.summarize(text, k=5)
    assert len(full.sentences) == 5
    words = [len(x.split()) for x in full.sentences]
    [short] = s.summarize(text, k=5, max_words=30)
    assert sum(len(x.split()) for x in short.sentences) <= 30 and len(short.sentences) == 2
    assert set(short.indices) < set(full.indices)
    assert s.summarize(text, k=5, ratio=0.4) == s.summarize(text, k=5,
                                                            max_words=round(0.4 * sum(words)))
    for bad, match in [({"max_words": 0}, "max_words"), ({"ratio": 1.5}, "ratio"),
                       ({"ratio": 0.5, "max_words": 9}, "not both"), ({"errors": "skip"}, "errors")]:
        with pytest.raises(InputError, match=match):
            s.summarize(text, **bad)


def test_a_moved_run_folder_is_used_from_another_directory(run, tmp_path, monkeypatch):
    import shutil

    moved = tmp_path / "elsewhere" / "moved-run"
    shutil.copytree(run, moved, symlinks=True)
    monkeypatch.chdir(tmp_path)
    model = load_model(moved)
    assert model.checkpoint.parent == moved and model.checkpoint.name.startswith("best-")
    # trainer.json names the best checkpoints inside the run folder, not where it was made
    best = json.loads((moved / "last" / "trainer.json").read_text())["best"]
    assert [e["path"] for e in best] == [f"best-{e['step']}" for e in best]
    assert main(["summarize", "--checkpoint", str(moved.relative_to(tmp_path)), "--format",
                 "text", str(_article(tmp_path))]) == 0


def _article(folder):
    path = folder / "article.txt"
    path.write_text("the city council approved a new budget for public schools on tuesday night . "
                    "teachers had asked for smaller classes and better equipment for years . "
                    "the mayor said the plan would be paid for by a small rise in taxes .")
    return path


def test_every_command_reads_at_the_length_the_checkpoint_was_trained_at(run, tmp_path, capsys):
    """The run trained at 128 word pieces (its model has MiniLM's 512 positions): 128 is the
    default of the API, summarize, serve and evaluate; --max-len goes up to 512 and no further."""
    assert load_model(run).cfg.max_len == 128
    assert Summarizer.from_pretrained(run, precision="fp32").cfg.max_len == 128
    assert Summarizer.from_pretrained(run, precision="fp32", max_len=300).cfg.max_len == 300
    with pytest.raises(ConfigError, match="takes 8 to 512 word pieces"):
        Summarizer.from_pretrained(run, precision="fp32", max_len=600)
    assert main(["evaluate", "--system", "", "--limit", "2", "--split", "val", "--checkpoint",
                 str(run), "--precision", "fp32", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "model.scores.json").read_text())["max_len"] == 128
    article = _article(tmp_path)
    capsys.readouterr()
    assert main(["summarize", "--checkpoint", str(run), "--max-len", "9999", str(article)]) == 2
    err = capsys.readouterr().err
    assert "error: --max-len 9999: the model takes 8 to 512 word pieces" in err
    assert "Traceback" not in err


def test_a_checkpoint_without_a_recorded_length_takes_its_training_length(run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(load_model(run).checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    # as written before the model's record had the field: the length in the training record
    config["train"]["max_len"] = config["attnsum"].pop("max_len")
    (old / "config.json").write_text(json.dumps(config))
    assert load_model(old).cfg.max_len == 128
    del config["train"]
    (old / "config.json").write_text(json.dumps(config))
    assert load_model(old).cfg.input_length() == 512  # nothing recorded: its positions, at most 512


def test_tracked_tree_travels_to_a_gpu_machine():
    """The tracked tree stays under 40 MiB (a device call carries 64 MiB with what it builds
    there; bench/gpu_session.py): one released model's weights in attnsum/models/, the rest cards."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    files = [root / p for p in r.stdout.decode().split("\0") if p]
    assert sum(p.stat().st_size for p in files if p.is_file()) < 40 * 2**20
    weights = [p for p in files if p.name == "model.safetensors" and p.parts[-3] == "models"]
    assert [p.parent.name for p in weights] == [DEFAULT_MODEL]


def test_a_hub_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    """"owner/name" resolves to its snapshot in the Hugging Face cache, offline; a repository
    not in the cache is one clear error, and nothing is fetched."""
    import shutil

    from attnsum.checkpoints import resolve_checkpoint

    cache = tmp_path / "hub"
    snap = cache / "models--acme--news-summarizer" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in (MODELS_DIR / DEFAULT_MODEL).iterdir():  # weights, config, card, selector
        shutil.copy(f, snap / f.name)
    (cache / "models--acme--news-summarizer" / "refs").mkdir()
    (cache / "models--acme--news-summarizer" / "refs" / "main").write_text("0123abcd")
    from huggingface_hub import constants

    # huggingface_hub reads its environment once, at import: set what it read
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("acme/news-summarizer") == snap
    from_hub = Summarizer.from_pretrained("acme/news-summarizer", precision="fp32")
    here = Summarizer.from_pretrained(precision="fp32")
    text = ("The council approved the new budget for the city's schools on Tuesday night. "
            "Teachers had asked for smaller classes for years, the union said. The mayor said "
            "a small rise in property taxes would pay for the plan next year.")
    assert from_hub.summarize(text) == here.summarize(text)
    with pytest.raises(RuntimeError, match="nor a repository in the Hugging Face cache"):
        resolve_checkpoint("acme/not-there")
