"""What the commands share: argparse's help with each flag's default."""
import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default, where it has one and its help does not
    already tell it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, argparse.SUPPRESS) \
                and action.default is not False:
            text += " (default: %(default)s)"
        return text
