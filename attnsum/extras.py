"""The optional parts of attnsum and the extras that install them (pyproject.toml
[project.optional-dependencies]): summarizing needs none; a command that needs a part that is
not installed says which extra in one line (`need`)."""

from __future__ import annotations

import importlib

from .errors import AttnsumError

EXTRAS = {  # extra: the modules it provides
    "serve": ("fastapi", "prometheus_client", "uvicorn"),
    "eval": ("rouge_score",),
    "data": ("datasets", "pyarrow"),
    "embedded": ("aclsum",),
    "ray": ("ray.data",),
}


class MissingExtra(AttnsumError, RuntimeError):
    """An optional part of attnsum is not installed."""


def need(extra: str, what: str) -> None:
    """Raise MissingExtra naming `extra` unless its modules import; `what` needs them."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(f"{what} needs the {extra!r} extra ({module} is not installed): "
                               f"pip install 'attnsum[{extra}]'") from None
