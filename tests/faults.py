"""Run the `zutis` command line with a fault injected, as the tests of interrupted runs need.

    python tests/faults.py kill-before NAME N -- ARGS...   SIGKILL itself just before the N-th
                                                           ``os.replace`` onto a file called NAME

The process dies as it would under ``kill -9`` or the OOM killer: no handler, no clean-up runs.
"""

from __future__ import annotations

import os
import signal
import sys


def kill_before(name: str, nth: int) -> None:
    """Wrap ``os.replace`` so that the ``nth`` rename onto a file called ``name`` kills the process first."""
    real = os.replace
    seen = 0

    def replace(source, target, *args, **kwargs):
        nonlocal seen
        if os.path.basename(os.fspath(target)) == name:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(source, target, *args, **kwargs)

    os.replace = replace


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[0] != "kill-before" or "--" not in argv:
        sys.exit(__doc__)
    split = argv.index("--")
    kill_before(argv[1], int(argv[2]))
    from zutiscli.cli.app import main as zutis

    zutis(argv[split + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
