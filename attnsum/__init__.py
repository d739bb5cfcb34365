"""attnsum: human-guided attention patterns for extractive summarization.

Packages: ``attnsum.attention`` (the attention library: patterns, plans, reference, fast paths,
Hugging Face plug-in; its docstring holds the design notes) and ``attnsum.kernels`` (the Triton
kernels, in the top-level folder kernels/). The rest is the summarizer: config (the
settings), data, preprocess, model, batching, checkpoints, train, evaluate, analysis, plan_costs
and report, summarizer (Python API), input_files and summarize_files (the summarize command),
serve and server, release, pipeline, experiment, cli and commands.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# kernels/ is imported as attnsum.kernels. Installs map it (pyproject.toml package-dir); a source
# checkout run without installing (PYTHONPATH=., as on a bare GPU machine) finds it here.
_checkout = _Path(__file__).resolve().parents[1]
if not (_Path(__file__).parent / "kernels").is_dir() and (_checkout / "pyproject.toml").is_file() \
        and (_checkout / "kernels" / "fused.py").is_file():
    __path__.append(str(_checkout))


def __getattr__(name):  # `attnsum.Summarizer` without importing torch at `import attnsum`
    if name == "Summarizer":
        from .summarizer import Summarizer

        return Summarizer
    raise AttributeError(name)
