"""attnsum: human-guided attention patterns for extractive summarization."""

__version__ = "0.1.0"
