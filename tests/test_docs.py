"""Every bash and Python block of README.md and docs/*.md runs as written, so none goes stale.

The blocks run in page order (README first, then docs/ by name) in one working folder that holds
`article.txt`, a news story as a reader brings one. The pages' conventions:
- a Python block whose first line is `# NAME.py` is that file, written for the commands after it;
  any other Python block runs as a script;
- `<!-- docs-test: skip: REASON -->` on the line before a block skips it, with the reason (the
  GPU session's commands: they need CUDA);
- `attnsum` commands (also under `torchrun -m attnsum`) get small settings appended (`SMALL`:
  options after the documented ones); `pip install` runs with
  `--dry-run` (the packages are installed already); the line that runs the test suite must be the
  one .ci/run runs (running it here would recurse); `attnsum serve` is started, sent the request
  its comment names, and stopped.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- docs-test: skip: (?P<skip>.+?) -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<body>.*?)```", re.S)
# What the commands' defaults would make long: steps, documents, lengths (appended to them).
SMALL = {"pipeline": "--limit 4 --steps 2 --max-len 64",
         "train": "--limit 4 --steps 2 --max-len 64 --batch-size 2 --val-limit 4"}
ARTICLE = ("The city council approved a new budget for the schools on Tuesday night after a long "
           "debate.\nTeachers had asked for smaller classes and newer books for several years.\n"
           "The mayor said that a small rise in property taxes would pay for the plan.\n"
           "Some residents at the meeting argued that the rise would hurt older homeowners.\n"
           "The budget also pays for two new school buses and a repaired library roof.\n"
           "The first changes will reach the classrooms when the new school year starts.\n")


def _blocks():
    out = []
    for page in PAGES:
        for i, m in enumerate(FENCE.finditer(page.read_text())):
            out.append(pytest.param(m["lang"], m["body"], m["skip"],
                                    id=f"{page.relative_to(ROOT)}:{i + 1}"))
    return out


BLOCKS = _blocks()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader")
    (folder / "article.txt").write_text(ARTICLE)
    return folder


def _env(**extra) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(extra)
    return env


def _run(cmd: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _commands(body: str) -> list[list[str]]:
    """The block's commands as words: continuations joined, comments and blank lines dropped."""
    lines = (shlex.split(line, comments=True) for line in body.replace("\\\n", " ").splitlines())
    return [words for words in lines if words]


def _subcommand(words: list[str]) -> str | None:
    """The attnsum command of `attnsum X ...` or `torchrun ... -m attnsum X ...`."""
    for i, w in enumerate(words):
        if w == "attnsum" and (i == 0 or words[i - 1] == "-m"):
            return next((a for a in words[i + 1:] if not a.startswith("-")), None)
    return None


def _serve(words: list[str], work: Path) -> None:
    """Start the server, POST the article as the README's comment says, stop it."""
    port = free_port()
    proc = subprocess.Popen([*words, "--port", str(port)], cwd=work, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}: {proc.stdout.read()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not listen within 300 s"
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/summarize",
                                         data=json.dumps({"text": ARTICLE}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            [summary] = json.loads(reply.read())["summaries"]
        assert len(summary["sentences"]) == 3 and all(s in ARTICLE for s in summary["sentences"])
    finally:
        proc.kill()
        proc.wait()


def _shell(line: list[str], work: Path) -> None:
    parts = [[]]
    for w in line:
        parts.append([]) if w == "&&" else parts[-1].append(w)
    for words in parts:
        part = shlex.join(words)
        if words[:2] == ["pip", "install"]:
            _run(f"pip install --dry-run --no-build-isolation {shlex.join(words[2:])}", ROOT, _env())
        elif words[:3] == ["python", "-m", "pytest"]:
            ci = _commands((ROOT / ".ci" / "run").read_text())
            assert line in ci, f".ci/run does not run `{shlex.join(line)}`"
        elif _subcommand(words) == "serve":
            _serve(words, work)
        elif (command := _subcommand(words)) is not None:
            r = _run(f"{part} {SMALL.get(command, '')}", work, _env())
            if command == "summarize" and "--format" in words:
                sentences = r.stdout.strip().splitlines()
                assert len(sentences) == 3 and all(s in ARTICLE for s in sentences)
        else:
            pytest.fail(f"`{part}`: a kind of command this test does not know how to run")


@pytest.mark.parametrize("lang,body,skip", BLOCKS)
def test_block_runs_as_written(lang, body, skip, work):
    if skip:
        pytest.skip(skip)
    if lang == "python":
        first = body.splitlines()[0]
        if re.fullmatch(r"# [\w-]+\.py", first):
            (work / first[2:]).write_text(body)
            return
        script = work / "block.py"
        script.write_text(body)
        _run(f"{shlex.quote(sys.executable)} block.py", work, _env())
        return
    for line in _commands(body):
        _shell(line, work)


def test_pages_have_blocks_to_run():
    """The pattern above finds the pages' blocks (a changed fence would silently skip them)."""
    names = {p.id.split(":")[0] for p in BLOCKS}
    assert {"README.md", "docs/commands.md", "docs/python-api.md", "docs/kernels.md"} <= names
    fences = sum(page.read_text().count("```bash") + page.read_text().count("```python")
                 for page in PAGES)
    assert fences == len(BLOCKS)
