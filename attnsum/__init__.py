"""attnsum: human-guided attention patterns for extractive summarization."""

__version__ = "0.1.0"


def __getattr__(name):  # `attnsum.Summarizer` without importing torch at `import attnsum`
    if name == "Summarizer":
        from .api import Summarizer

        return Summarizer
    raise AttributeError(name)
