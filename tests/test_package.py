"""attnsum as a user installs it: the wheel, installed into a fresh virtual environment outside
the checkout, summarizes with the released model it carries, serves a request and imports the
Python API, with no source tree on the path; without its extras it still summarizes."""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from helpers import free_port

from attnsum.kernels import cpu_kernels

ROOT = Path(__file__).resolve().parents[1]
ARTICLE = ("The city council approved a new budget for its schools on Tuesday night after a long "
           "debate. Teachers had asked for smaller classes and newer books for many years. The "
           "mayor said that a small rise in property taxes would pay for most of the plan. Parents "
           "who spoke at the meeting said they welcomed the vote but wanted faster repairs. The "
           "budget takes effect in July and will be reviewed again at the end of next year.")


def _run(cmd, cwd, env, **kw):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_the_wheel_carries_the_model_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    # --no-build-isolation: setuptools from this environment (the registries may be out of reach)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", str(dist), str(ROOT)], tmp_path, os.environ)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = dist.glob("attnsum-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    from attnsum.release import DEFAULT_MODEL

    for f in ("config.json", "model.safetensors", "README.md"):
        assert f"attnsum/models/{DEFAULT_MODEL}/{f}" in names
    assert any(n.endswith("/LICENSE") for n in names)
    assert "attnsum/kernels/cpu_kernels.c" in names  # the CPU kernel's source

    # A fresh environment that sees this interpreter's packages (torch, transformers, ...) but
    # gets attnsum only from the wheel; run from a folder outside the checkout.
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                 str(venv)], tmp_path, os.environ)
    assert made.returncode == 0, made.stderr
    py, cli = venv / "bin" / "python", venv / "bin" / "attnsum"
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                      "--no-index", str(wheel)], tmp_path, os.environ)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "work"
    work.mkdir()

    where = _run([str(py), "-c", "import attnsum, attnsum.release as r; from attnsum import "
                  "Summarizer; from attnsum.kernels import cpu_kernels; print(attnsum.__file__); "
                  "print(r.default_checkpoint()); print(cpu_kernels.available())"], work, env)
    assert where.returncode == 0, where.stderr[-2000:]
    module, model, kernel = where.stdout.split()
    assert kernel == str(cpu_kernels.available())  # built from the wheel's source where it builds here
    assert Path(module).is_relative_to(venv) and Path(model).is_relative_to(venv)
    assert not Path(module).is_relative_to(ROOT)

    (work / "article.txt").write_text(ARTICLE)
    summary = _run([str(cli), "summarize", "article.txt", "--format", "text", "-k", "2"],
                   work, env)
    assert summary.returncode == 0, summary.stderr[-2000:]
    lines = [line for line in summary.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and all(line in ARTICLE for line in lines)

    port = free_port()
    server = subprocess.Popen([str(cli), "serve", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import http.client

        deadline = time.time() + 120
        while True:
            assert server.poll() is None and time.time() < deadline, "the server did not start"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/summarize", json.dumps({"text": ARTICLE, "k": 2}),
                             {"Content-Type": "application/json"})
                reply = conn.getresponse()
                status, body = reply.status, json.loads(reply.read())
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200 and len(body["summaries"][0]["sentences"]) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()

    # The lean core: with every extra's modules unimportable in the environment, summarizing
    # still works and serving is one line naming its extra.
    from attnsum.extras import EXTRAS

    blocked = sorted({m for mods in EXTRAS.values() for m in mods} | {"starlette"})
    [site] = venv.glob("lib/python*/site-packages")
    (site / "zz_block_extras.pth").write_text(
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n")
    check = _run([str(py), "-c", "import sys; print(sys.modules['fastapi'])"],
                 work, env)
    assert check.stdout.strip() == "None"  # the block is in force
    lean = _run([str(cli), "summarize", "article.txt", "--format", "text", "-k", "2"], work, env)
    assert lean.returncode == 0 and lean.stdout == summary.stdout, lean.stderr[-2000:]
    refused = _run([str(cli), "serve", "--port", str(free_port())], work, env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "attnsum serve: error: attnsum serve needs the 'serve' extra (fastapi is not installed): "
        "pip install 'attnsum[serve]'"]
