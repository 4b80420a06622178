"""The help formatter every `stn-serve` command uses."""

from __future__ import annotations

import argparse
import re

# How a flag whose default is None says what leaving it out does: "(None: the checkpoint's)".
UNSET_NOTE = re.compile(r"\s*\(None: ([^)]*)\)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default where it tells the reader something.

    A required flag shows none. A flag whose default is None (or "") shows its "(None: ...)"
    note as its default ("(default: the checkpoint's)"), or nothing when it has no note; a flag
    whose default was set to a value (a benchmark's own defaults) shows that value and drops the
    note.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        note = UNSET_NOTE.search(text)
        if note:
            text = text[: note.start()] + text[note.end() :]
        takes_default = action.option_strings or action.nargs in (argparse.OPTIONAL, "*")
        if action.required or not takes_default:
            return text
        if action.default in (None, ""):
            return f"{text} (default: {note.group(1)})" if note else text
        return text + " (default: %(default)s)"
