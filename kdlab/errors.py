"""User-facing errors: one line that says what is wrong and what to do about it."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from contextlib import contextmanager


class KdlabError(Exception):
    """Bad input from the user (config, names, checkpoints, data). Printed as one line, exit code 1."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """' (closest: a, b, c)' for the valid names nearest to ``name``, or '' when none is near."""
    choices = list(dict.fromkeys(choices))  # once each (kdlab's zoo is also registered in timm)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:  # substring matches help for long, prefixed names (timm's)
        close = [c for c in choices if name.lower() in c.lower()][:n]
    return f" (closest: {', '.join(close)})" if close else ""


@contextmanager
def one_line_errors(prog: str):
    """The body of a command-line tool: a ``KdlabError`` ends it with ``<prog>: error: ...`` on stderr, exit code 1."""
    try:
        yield
    except KdlabError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
