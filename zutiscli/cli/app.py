"""The `zutis` Typer application and its entry point with uniform error handling."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Annotated, Any, Optional, Sequence

import typer

from zutiscli._version import __version__
from zutiscli.errors import ZutisError

app = typer.Typer(
    name="zutis",
    help=(
        "Zero-shot unsupervised transfer instance and semantic segmentation: "
        "class names + unlabelled images -> a segmenter, with no human masks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"zutis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Zero-shot unsupervised transfer segmentation."""


def _kinds(name: str) -> tuple[type, ...]:
    """Exception classes called ``name`` in Typer and in Click (recent Typer vendors Click)."""
    modules = [typer]
    try:
        from typer._click import exceptions as vendored

        modules.append(vendored)
    except ImportError:
        pass
    try:
        from click import exceptions as upstream

        modules.append(upstream)
    except ImportError:
        pass
    found = {getattr(module, name) for module in modules if isinstance(getattr(module, name, None), type)}
    return tuple(found)


def _register_commands() -> None:
    """The subcommands: the demo, then the stages in pipeline order (that is the order of `zutis --help`)."""
    from zutiscli.cli import (cluster, compare, copypaste, cosegment, demo, evaluate, hypotheses, index, predict,
                              pseudolabel, retrieve, synth, train)

    app.command("demo")(demo.demo)
    app.add_typer(synth.app, name="synth")
    app.add_typer(index.app, name="index")
    app.command("retrieve")(retrieve.retrieve)
    app.command("cosegment")(cosegment.cosegment)
    app.add_typer(pseudolabel.app, name="pseudolabel")
    app.command("cluster")(cluster.cluster)
    app.command("hypotheses")(hypotheses.hypotheses)
    app.command("copypaste")(copypaste.copypaste)
    app.command("train")(train.train)
    app.add_typer(predict.app, name="predict")
    app.add_typer(evaluate.app, name="evaluate")
    app.command("compare")(compare.compare)
    from zutiscli.cli import shell

    app.command("completions")(shell.completions)
    app.command("man")(shell.man)
    shell.enable_completion(app)


_register_commands()


def _debug() -> bool:
    return os.environ.get("ZUTIS_DEBUG", "").strip() not in ("", "0", "false", "no")


def _error(message: str) -> None:
    from zutiscli.cli.options import err_console

    err_console.print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False, soft_wrap=True)


class _Stopped(Exception):
    """Ctrl-C or SIGTERM carried past Click (which handles KeyboardInterrupt its own way)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, `kill`): unwinds like Ctrl-C, so every atomic write stays whole."""


#: Set when SIGTERM arrived: Click and Typer turn the exception into their own Ctrl-C handling.
_terminated = threading.Event()


#: The interrupt a signal handler put off until the main thread left the import it was in.
_pending: list[type[BaseException]] = []


def _importing(frame: Any) -> bool:
    """Whether ``frame`` (the main thread's, when a signal came) is inside an import: where a C
    extension's initialisation may be running Python code (torch's, for one), and an exception
    raised there aborts the process (pybind11: ``terminate called after throwing ...``)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_when_safe(error: type[BaseException], frame: Any) -> None:
    """Raise ``error`` in the main thread now, or, inside an import, once the import is over (looked
    at again every 20 ms with SIGALRM, where the platform has it and no host program handles it)."""
    if _importing(frame) and hasattr(signal, "SIGALRM") and signal.getsignal(signal.SIGALRM) is _on_alarm:
        _pending[:] = [error]
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    raise error()


def _on_alarm(signum, frame) -> None:
    if _pending:
        _raise_when_safe(_pending.pop(), frame)


def _on_sigterm(signum, frame) -> None:
    _terminated.set()
    _raise_when_safe(Terminated, frame)


def _on_sigint(signum, frame) -> None:
    _raise_when_safe(KeyboardInterrupt, frame)


def _interrupted() -> None:
    """Report Ctrl-C or SIGTERM, whichever it was, and exit with the shell's status for it."""
    if _terminated.is_set():
        _error("terminated (SIGTERM); finished work is kept, run the same command again to go on")
        sys.exit(143)
    _error("interrupted")
    sys.exit(130)


def _catch_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread, unless a host program set its own handler;
    SIGTERM and Ctrl-C that come during an import are raised once it is over (:func:`_raise_when_safe`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    if hasattr(signal, "SIGALRM") and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL:
        signal.signal(signal.SIGALRM, _on_alarm)


#: OS errors that come from the machine rather than from zutis: told in one line naming the file.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                       errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ESTALE}


def _environment_error(exc: OSError) -> str | None:
    """The one line for an OS error of the machine (full disk, read-only file system, ...), else ``None``."""
    if exc.errno not in _ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "a file zutis was writing"
    advice = {errno.ENOSPC: "free some space (or choose another -o) and run the same command again",
              errno.EDQUOT: "free some space (or choose another -o) and run the same command again",
              errno.EROFS: "pass -o DIR on a writable file system",
              errno.EACCES: "check its permissions or choose another -o directory",
              errno.EPERM: "check its permissions or choose another -o directory",
              errno.EMFILE: "raise the open-file limit (ulimit -n) or lower --workers",
              errno.ENFILE: "raise the open-file limit (ulimit -n) or lower --workers"}.get(exc.errno, "check the file and its device")
    return f"{where}: {exc.strerror or exc}; {advice}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the command line; exits with 0 (success), 1 (error), 2 (usage error), 130 (Ctrl-C) or 143 (SIGTERM)."""
    _catch_sigterm()
    try:  # building the command takes a moment, in which Ctrl-C or SIGTERM may come
        command = typer.main.get_command(app)
    except KeyboardInterrupt:
        _interrupted()
    invoke = command.invoke

    def invoke_keeping_interrupts(ctx):  # Click would print a blank line and turn Ctrl-C into Abort
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped() from exc

    command.invoke = invoke_keeping_interrupts
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = command.main(args=args, prog_name="zutis", standalone_mode=False)
        # Typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns that code.
        if status == 130:
            raise KeyboardInterrupt
        if isinstance(status, int) and status:
            sys.exit(status)
    except _kinds("Exit") as exc:
        sys.exit(exc.exit_code)
    except _kinds("NoArgsIsHelpError") as exc:
        sys.stderr.write(exc.format_message() + "\n")
        sys.exit(2)
    except _kinds("UsageError") as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _error(f"{exc.format_message()}{where}")
        sys.exit(2)
    except _kinds("Abort") as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted()
        _error("aborted")
        sys.exit(130)
    except (KeyboardInterrupt, _Stopped):
        _interrupted()
    except ZutisError as exc:
        if _debug():
            raise
        _error(str(exc))
        sys.exit(exc.exit_code)
    except _kinds("ClickException") as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the command line
        if _debug():
            raise
        line = _environment_error(exc) if isinstance(exc, OSError) else None  # a full disk, a read-only directory
        _error(line or f"internal error: {type(exc).__name__}: {exc}. Rerun with ZUTIS_DEBUG=1 for the traceback.")
        sys.exit(1)
    sys.exit(0)
