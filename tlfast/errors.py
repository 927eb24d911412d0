"""Helpers for Keras-style error messages."""

import difflib


def suggest(name, choices):
    """Returns a ' Did you mean ...?' hint for an unknown name, or ''.

    Args:
        name: What the user typed.
        choices: The valid names.
    """
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
