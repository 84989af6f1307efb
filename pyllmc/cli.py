"""What the commands share: argparse's help with each flag's default, and
the one-line error a command ends with."""
import argparse
import contextlib
import sys

from .files import os_error_message


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default, where it has one and its help does not
    already tell it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, argparse.SUPPRESS) \
                and action.default is not False:
            text += " (default: %(default)s)"
        return text


@contextlib.contextmanager
def one_line_errors(*expected):
    """Ends the command with exit status 1 and one line, `error: FILE: reason`
    for an OSError or `error: message` for one of the expected exceptions."""
    try:
        yield
    except OSError as e:
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
