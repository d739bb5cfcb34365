"""The pattern registry: the names head plans use (``name/mode``) for the built-in patterns
(builtin_patterns.py), the families ``offset:K`` and ``window:K`` built on first use, and user
patterns registered by a ``--patterns`` file (`load_pattern_file`)."""

from __future__ import annotations

from collections.abc import Callable

from .builtin_patterns import (
    generate_intra_sentence,
    generate_matching_token,
    generate_offset,
    generate_sentence_cls,
    generate_window,
)
from .patterns import MODES, Pattern, PatternError

_REGISTRY: dict[str, Pattern] = {}
# Families named NAME:K, built on first use.
_FAMILIES: dict[str, Callable[[int], Pattern]] = {"offset": generate_offset, "window": generate_window}


def _add(pattern: Pattern) -> Pattern:
    for m in pattern.modes:
        if m not in MODES:
            raise PatternError(f"pattern {pattern.name!r}: unknown mode {m!r}")
    _REGISTRY[pattern.name] = pattern
    return pattern


def register_pattern(pattern: Pattern) -> Pattern:
    """Make a user pattern available by name to head plans (``name/mode``); see
    `load_pattern_file`. Built-in names (and the NAME:K families) cannot be taken."""
    if not isinstance(pattern, Pattern):
        raise PatternError(f"register_pattern takes a Pattern, got {type(pattern).__name__}")
    if pattern.name in _BUILTIN or pattern.name.split(":", 1)[0] in _FAMILIES:
        raise PatternError(f"pattern {pattern.name!r} shadows a built-in pattern; pick another name")
    if not pattern.name or any(c in pattern.name for c in ";=/,* "):
        raise PatternError(f"bad pattern name {pattern.name!r}: no spaces or ; = / , *")
    return _add(pattern)


for _p in (generate_matching_token("full"), generate_matching_token("self"),
           generate_intra_sentence(), generate_offset(1), generate_offset(-1),
           generate_sentence_cls()):
    _add(_p)
_BUILTIN = frozenset(_REGISTRY)


def get_pattern(name: str) -> Pattern:
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, _, arg = name.partition(":")
    if family in _FAMILIES and arg:
        try:
            k = int(arg)
        except ValueError:
            raise PatternError(f"bad pattern {name!r}: use {family}:K with an integer K") from None
        pattern = _FAMILIES[family](k)
        return _REGISTRY.get(pattern.name) or _add(pattern)  # offset:1 is "next"
    raise PatternError(f"unknown pattern {name!r}: use one of {', '.join(pattern_names())}, "
                       "offset:K or window:K; a user pattern needs the --patterns file that "
                       "registers it")


def pattern_names() -> list[str]:
    return sorted(_REGISTRY)


def load_pattern_file(path) -> list[str]:
    """Run a Python file that registers patterns (`register_pattern`); returns their names.
    User code runs only when a command is given ``--patterns FILE.py``. Every failure is one
    `PatternError` naming the file."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise PatternError(f"{path}: no such pattern file (a .py file that registers patterns)")
    before = dict(_REGISTRY)
    spec = importlib.util.spec_from_file_location(f"attnsum_user_patterns_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except PatternError as e:
        raise PatternError(f"{path}: {e}") from None
    except BaseException as e:  # the user's code: any failure is reported, not raised
        if isinstance(e, KeyboardInterrupt):
            raise
        raise PatternError(f"{path}: the pattern file raised {type(e).__name__}: {e}") from None
    added = [n for n, p in _REGISTRY.items() if before.get(n) is not p]
    if not added:
        raise PatternError(f"{path}: registers no pattern (call "
                           "attnsum.attention.register_pattern(Pattern(...)))")
    return added
