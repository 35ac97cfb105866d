from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input (a config key or an input file), detected before compute is spent.

    The message names the key or file and the bad value, e.g. ``bptt.length must be >= 1, got 0``.
    Entry points print it as one line and exit non-zero, without a traceback.
    """


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none): errors are
    reported in one line."""
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def summary(err: BaseException) -> str:
    """``OSError: [Errno 28] No space left on device``: the type and the first line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__

