"""Startup mistakes explained in one paragraph instead of Hydra's or OmegaConf's stack traces.

What goes wrong before our code runs is raised by Hydra (the command line does not parse, ``image`` was never
given, the output disk is full while Hydra saves ``.hydra/``); ``launch.py`` passes those exceptions through
:func:`explain` and prints the :class:`~cg_lightning.errors.CGError` it returns. :func:`check_overrides` parses the
command line with Hydra's own grammar first, so a path Hydra cannot read is reported with the quoting that works.
"""

from __future__ import annotations

import errno
import logging
import shlex
import sys
from collections.abc import Sequence

from cg_lightning.errors import CGError, ConfigError, InputImageError, OutputError

DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}

MISSING_IMAGE = ("No input image given: add image=<path to a picture> to the command, e.g.\n"
                 "  python launch.py +experiment=full image=experiments/data/box/box_rgba.png\n"
                 "(an RGBA image is used with its alpha mask; an RGB photo gets its background removed).")


def quoted(key: str, value: str) -> str:
    """The override ``key=value`` written so that both the shell and Hydra's grammar keep ``value`` verbatim:
    Hydra's quotes inside, the shell's outside (``image="'/data/a=b.png'"``)."""
    if "'" not in value:
        word = f"{key}='{value}'"
    elif '"' not in value:
        word = f'{key}="{value}"'
    else:
        return f"{key}=<the value in quotes for Hydra, inside quotes for the shell>"
    if not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def check_overrides(argv: Sequence[str]) -> None:
    """Parse the overrides of a ``launch.py`` command line as Hydra will; a value it cannot read -> ConfigError."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        args, _unknown = get_args_parser().parse_known_args(list(argv))
    except SystemExit:        # argparse already printed its usage message; let Hydra do the same
        return
    parser = OverridesParser.create()
    for override in args.overrides or []:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as exc:
            key, sep, value = override.partition("=")
            hydra_says = str(exc).splitlines()[0]
            if not sep:
                raise ConfigError(f"Cannot read the command-line argument {override!r} ({hydra_says}).") from None
            raise ConfigError(
                f"Cannot read the override {override!r}: Hydra's command-line grammar does not allow some "
                f"characters in plain values (=, spaces next to brackets, quotes, ~, &, #, brackets, parentheses, "
                f"non-ASCII letters). Quote the value for Hydra inside the shell's quotes:\n"
                f"  {quoted(key, value)}\n(Hydra said: {hydra_says})") from None


def _disk_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def explain(exc: BaseException) -> CGError | None:
    """The user-facing error for an exception raised while Hydra starts a job; None when it is not ours to explain."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(exc, CGError):
        return exc
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or ""
        if "image" in str(exc).split("Missing mandatory value:")[-1] or key == "image":
            return InputImageError(MISSING_IMAGE)
        return ConfigError(f"A required setting has no value: {exc}. Set it on the command line (key=value).")
    if isinstance(exc, OverrideParseException):
        return ConfigError(f"Cannot read a command-line override: {str(exc).splitlines()[0]}. Quote values that "
                           f"hold special characters for Hydra, e.g. image=\"'/path/with=sign.png'\".")
    disk = _disk_error(exc)
    if disk is not None:
        where = f" while writing {disk.filename}" if disk.filename else ""
        return OutputError(f"Cannot write the job's files: {DISK_ERRNOS[disk.errno]}{where}. Free some space or set "
                           f"paths.output_root=<a writable folder>, then re-run the same command (finished stages "
                           f"are reused).")
    return None


def print_error(error: CGError) -> None:
    print(f"\nError: {error}\n", file=sys.stderr)


class _ReportOnce:
    """``Handler.handleError`` replacement: one warning line for the first failed log write, silence afterwards.

    The default prints ``--- Logging error ---`` and a traceback for every record that cannot be written, about
    a hundred lines when the disk fills mid-run, burying the one message that says what happened.
    """

    def __init__(self, handler: logging.Handler) -> None:
        self.handler, self.reported = handler, False

    def __call__(self, record: logging.LogRecord) -> None:
        if self.reported:
            return
        self.reported = True
        exc = sys.exc_info()[1]
        target = getattr(self.handler, "baseFilename", None) or type(self.handler).__name__
        why = DISK_ERRNOS.get(getattr(exc, "errno", None), f"{type(exc).__name__}: {exc}")
        print(f"Warning: cannot write the log ({target}: {why}); further log lines there are dropped.",
              file=sys.stderr)


def quiet_logging_errors(logger: logging.Logger | None = None) -> None:
    """Make every handler of ``logger`` (default: the root logger) report a failed write once, not per record."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.handleError, _ReportOnce):
            handler.handleError = _ReportOnce(handler)  # type: ignore[method-assign]
