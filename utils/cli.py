"""One error policy for the command-line scripts: bad input ends in one line, a bug in a traceback.

Bad input (a flag, a yaml, a label, a checkpoint) raises a `UserError` (or a type registered with
`register_user_error`) whose message names the thing and the fix. `run_cli(main)` runs a script's main:
such an error is printed as one `ERROR: <message>` line on stderr and the process exits with status 2;
anything else is a bug and propagates with its traceback. `YOLOV5_TRACEBACK=1` shows the traceback of
user errors too (for reporting a message that looks wrong).

    if __name__ == "__main__":
        run_cli(lambda: main(parse_opt()))
"""
from __future__ import annotations

import os
import sys
from typing import Callable

TRACEBACK_ENV = "YOLOV5_TRACEBACK"
EXIT_USER_ERROR = 2  # what argparse uses for a bad flag


class UserError(Exception):
    """Bad input; the message names the file, line, layer or flag and how to fix it."""


class InputError(UserError, ValueError):
    """A bad option value or file content. Also a ValueError, so callers that catch those still do."""


# FileNotFoundError: every one this project raises names the path, and so does the OS's own.
_USER_ERRORS: list[type[BaseException]] = [UserError, FileNotFoundError]


def register_user_error(*types: type[BaseException]) -> None:
    """Treat these exception types as bad input too (for error types that cannot subclass UserError)."""
    _USER_ERRORS.extend(t for t in types if t not in _USER_ERRORS)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, tuple(_USER_ERRORS))


def one_line(message) -> str:
    """The message on one line: line breaks and runs of spaces become single spaces."""
    return " ".join(str(message).split())


def show_tracebacks() -> bool:
    return os.getenv(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_cli(main: Callable, *args, **kwargs):
    """Call main(*args, **kwargs); a user error becomes one `ERROR:` line and exit status 2."""
    try:
        return main(*args, **kwargs)
    except Exception as e:
        if not is_user_error(e) or show_tracebacks():
            raise
        print(f"ERROR: {one_line(e) or type(e).__name__}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
