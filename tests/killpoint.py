"""Run the attnsum command line with a kill point: at the chosen moment of a write the process
creates MARKER and hangs there, for a test to SIGKILL it in the middle of that write. Runs under
python or torchrun (each rank counts its own writes).

    python tests/killpoint.py rename NAME COUNT MARKER -- ATTNSUM ARGS
        the COUNT-th rename of a finished temporary file onto a file called NAME (io.py's
        atomic writes): the new file is complete, not yet in place
    python tests/killpoint.py write SUFFIX COUNT MARKER -- ATTNSUM ARGS
        the COUNT-th write to a file whose name ends with SUFFIX: half of it written and flushed
"""

import builtins
import os
import sys
import time
from pathlib import Path


def hang(marker: str) -> None:
    Path(marker).touch()
    while True:
        time.sleep(60)


def main() -> int:
    kind, name, count, marker = sys.argv[1:5]
    count = int(count)
    args = sys.argv[sys.argv.index("--") + 1:]
    seen = 0
    if kind == "rename":
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            nonlocal seen
            if Path(dst).name == name:
                seen += 1
                if seen == count:
                    hang(marker)
            return real_replace(src, dst, *a, **kw)

        os.replace = replace
    else:
        real_open = builtins.open

        class Torn:
            def __init__(self, f):
                self._f = f

            def write(self, text):
                nonlocal seen
                seen += 1
                if seen == count:
                    self._f.write(text[: len(text) // 2])
                    self._f.flush()
                    hang(marker)
                return self._f.write(text)

            def __getattr__(self, attr):
                return getattr(self._f, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def __iter__(self):
                return iter(self._f)

        def open_(file, mode="r", *a, **kw):
            f = real_open(file, mode, *a, **kw)
            return Torn(f) if str(file).endswith(name) and ("a" in mode or "w" in mode) else f

        builtins.open = open_
    from attnsum.cli import main as attnsum_main

    return attnsum_main(args)


if __name__ == "__main__":
    sys.exit(main())
