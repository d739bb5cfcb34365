"""The command line as a newcomer meets it: help that explains every option and shows its
default, --version, inputs checked before a model loads, counts in words."""

import argparse
import sys

import pytest

from attnsum import __version__
from attnsum.cli import COMMANDS, build_parser, main
from attnsum.release import DEFAULT_MODEL, MODELS_DIR


def _commands(parser):
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"attnsum {__version__}"


def test_every_option_is_explained_and_shows_its_default():
    parser = build_parser()
    top = parser.format_help()
    for name, sub in _commands(parser).items():
        assert name in top
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"attnsum {name} {action.dest}: no help"
            shown = action.default not in (None, False, [], argparse.SUPPRESS)
            if shown and action.option_strings:
                assert "default" in action.help or f"(default: {action.default})" in text, (
                    name, action.dest)
    assert "(default: 8000)" in " ".join(_commands(parser)["serve"].format_help().split())


def test_train_names_every_backend_and_refuses_others(tmp_path, capsys):
    """--backend's names are written in its help (attnsum/config.py keeps train's help free of
    the attention library): every backend of attention/dispatch.py is there, and another name is
    one error line before any data loads."""
    from attnsum.attention import BACKENDS

    text = " ".join(_commands(build_parser())["train"].format_help().split())
    assert all(name in text.split("--backend", 2)[2] for name in BACKENDS)
    assert main(["train", "--backend", "flash", "--dataset", str(tmp_path / "nodata"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown attention backend 'flash'" in err and "nodata" not in err


def test_shard_has_one_split_option():
    shard = _commands(build_parser())["shard"].format_help()
    assert "--splits" in shard and "--split " not in shard


def test_inputs_are_checked_before_a_model_loads(tmp_path, capsys):
    # the checkpoint does not exist either: the input's error comes first
    assert main(["summarize", "--checkpoint", str(tmp_path / "none"),
                 str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "missing.txt: no such file or folder" in err and "checkpoint" not in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none"), "--dataset",
                 str(tmp_path / "nodata")]) == 2
    assert "unknown dataset" in capsys.readouterr().err


@pytest.mark.skipif(not (MODELS_DIR / DEFAULT_MODEL / "config.json").is_file(),
                    reason="the released model is not in this checkout")
def test_one_document_is_one_document(tmp_path, capsys):
    article = tmp_path / "a.txt"
    article.write_text("The council approved a new budget for public schools on Tuesday night. "
                       "Teachers had asked for smaller classes and better equipment for years. "
                       "The mayor said a small rise in property taxes would pay for the plan.")
    assert main(["summarize", "--precision", "fp32", "--format", "text", str(article)]) == 0
    assert "summarized 1 document (0 could not be)" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[]] + [[name] for name in COMMANDS])
def test_help_imports_no_model_code(command):
    """`attnsum --help` and every command's help load neither torch nor the models (a second and
    a half of start-up saved): train's defaults and choices come from attnsum/config.py."""
    import subprocess
    import sys

    code = ("import sys\nfrom attnsum.cli import main\ntry:\n    main(sys.argv[1:] + ['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: attnsum" in r.stdout and r.stdout.strip().endswith("False")


@pytest.mark.parametrize("argv, says", [
    (["summarize", "--device", "cuda", "README.md"], "sees no CUDA GPU"),
    (["summarize", "--device", "tpu", "README.md"], "unknown device 'tpu'"),
    (["summarize", "--device", "cuda:x", "README.md"], "unknown device 'cuda:x'"),
    (["score", "--checkpoint", "models", "--device", "cuda", "--out", "x.jsonl"], "no CUDA GPU"),
    (["evaluate", "--checkpoint", "models", "--device", "meta"], "device 'meta' is not supported"),
    (["serve", "--port", "99999"], "--port: 99999 is not a TCP port"),
    (["serve", "--port", "http"], "--port: 'http' is not a TCP port"),
    (["serve", "--timeout", "-1"], "--timeout: -1 is not a number above 0"),
    (["serve", "--max-body", "-5"], "--max-body: -5 is not a whole number of at least 1"),
    (["serve", "--max-wait-ms", "-1"], "--max-wait-ms: -1 is not a number of at least 0"),
    (["summarize", "--limit", "-1", "README.md"], "--limit: -1 is not a whole number"),
    (["summarize", "--chunk", "0", "README.md"], "--chunk: 0 is not a whole number"),
    (["summarize", "--max-chars", "0", "README.md"], "--max-chars: 0 is not a whole number"),
    (["summarize", "-k", "0", "README.md"], "-k: 0 is not a whole number"),
    (["evaluate", "--limit", "0"], "--limit: 0 is not a whole number"),
    (["train", "--steps", "0"], "--steps: 0 is not a whole number"),
    (["train", "--lr", "0"], "--lr: 0 is not a number above 0"),
    (["train", "--dropout", "1.5"], "--dropout: 1.5 is not a number from 0 to 1"),
    (["train", "--time-limit", "-3"], "--time-limit: -3 is not a number above 0"),
    (["pipeline", "--max-len", "0"], "--max-len: 0 is not a whole number"),
])
def test_every_mistyped_option_is_one_line(argv, says, capsys):
    """Devices, ports, timeouts, sizes and limits a user can mistype: one error line naming the
    option (argparse's usage line may stand above it), exit 2, no traceback, nothing loaded."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"attnsum {argv[0]}: error: ") and says in last, err


@pytest.mark.parametrize("blocked, argv, extra", [
    ("fastapi", ["serve", "--port", "8123"], "serve"),
    ("rouge_score", ["evaluate", "--dataset", "embedded", "--split", "test", "--limit", "2",
                     "--system", "lead3"], "eval"),
    ("aclsum", ["evaluate", "--dataset", "embedded", "--split", "test", "--limit", "2",
                "--system", "lead3"], "embedded"),
])
def test_a_missing_extra_is_one_line_naming_it(blocked, argv, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` raises ImportError
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'attnsum[{extra}]'" in err[0], err
    assert "Traceback" not in err[0]


def test_only_the_projects_errors_become_one_line(tmp_path, capsys, monkeypatch):
    """A mistake in what was asked (errors.py) is one line and exit status 2; anything else (a
    bug, a failure of torch) keeps its traceback: the CLI does not turn it into a user error."""
    from attnsum import summarize_files

    article = tmp_path / "a.txt"
    article.write_text("One sentence of more than five words here. Another one of many words.")
    (tmp_path / "ckpt").mkdir()
    assert main(["summarize", "--checkpoint", str(tmp_path / "ckpt"), str(article)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an attnsum checkpoint" in err

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(summarize_files, "summarize_command", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["summarize", str(article)])


def test_the_settings_import_no_torch():
    """attnsum.config (presets, choices, ModelConfig, TrainConfig and their defaults) loads
    without torch: the command line's help is built from it at once."""
    import subprocess
    import sys

    code = ("import sys\nfrom attnsum.config import PRESETS, ModelConfig, TrainConfig\n"
            "assert TrainConfig.defaults()['preset'] == 'tiny' and 'minilm' in PRESETS\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
