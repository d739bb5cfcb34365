"""The project's own errors: a mistake in what was asked of attnsum (a setting, a checkpoint, a
document), told in one line. `attnsum` commands print these and exit with status 2 (cli.py);
anything else is a bug or a failure of the machine and shows its traceback.

Domain modules subclass `AttnsumError` for their own cases: `DataError` (data.py, a corpus that
cannot be read), `PatternError` (attention/patterns.py, a pattern or plan that does not fit),
`ScheduleError` (schedule.py), `MissingExtra` (extras.py, an optional part not installed).
"""


class AttnsumError(Exception):
    """A mistake in what was asked, with a one-line message that says what to do."""


class ConfigError(AttnsumError, ValueError):
    """A model or training setting that cannot work (preset, classifier, injection, layers,
    input length, device, precision); mistakes in a head plan are `PatternError`s."""


class CheckpointError(AttnsumError, RuntimeError):
    """A checkpoint (or pretrained encoder) that is missing, unreadable or not attnsum's."""


class InputError(AttnsumError, ValueError):
    """A document or request that cannot be summarized (empty, not text, no usable sentence)."""
