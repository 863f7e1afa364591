"""The one distinction the command line needs: bad input the user can fix, versus a fault in cxatlas.

A :class:`UserError` (a missing file, an unknown setting, a manifest with the wrong columns, a SQL typo) is printed
as one line on stderr with exit code 2 and no traceback: the message says what to change. Anything else is a bug
or an environment failure and keeps its traceback (exit code 1), so an internal error never looks like bad input.
"""
from __future__ import annotations


class UserError(Exception):
    """Input or settings the user can fix; the message names the input and what to do."""


EXIT_FAILED = 1
EXIT_USAGE = 2
