"""SIGTERM and Ctrl-C that come while a module is being imported are raised once the import is over:
raised inside it, where a C extension's initialisation may be running Python code (torch's c10d
init, for one), they abort the process with a C++ message instead of the one-line report."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import signal, sys, time
from zutiscli.cli.app import _catch_sigterm
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (a background job starts with it ignored)
_catch_sigterm()
sys.path.insert(0, sys.argv[1])
try:
    import signalled_during_import
    time.sleep(5)
    print("never raised", flush=True)
except KeyboardInterrupt as exc:
    # the put-off interrupt may come at any point after the import, so what the import finished is read
    # here: a module interrupted inside its import would not be in sys.modules
    module = sys.modules.get("signalled_during_import")
    print("imported", getattr(module, "FINISHED", None), flush=True)
    print("raised after the import:", type(exc).__name__, flush=True)
"""

MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.{name})
time.sleep(0.2)  # the import goes on: the handler put the interrupt off
FINISHED = True
"""


@pytest.mark.parametrize("name, raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_an_interrupt_during_an_import_is_raised_once_the_import_is_over(tmp_path, name, raised):
    (tmp_path / "signalled_during_import.py").write_text(MODULE.format(name=name))
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["imported True", f"raised after the import: {raised}"], done.stderr


def test_outside_an_import_it_is_raised_at_once(tmp_path):
    probe = ("import os, signal, time\nfrom zutiscli.cli.app import _catch_sigterm, Terminated\n_catch_sigterm()\n"
             "try:\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(5)\n    print('late')\n"
             "except Terminated:\n    print('at once')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "at once", done.stderr
