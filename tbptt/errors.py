from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input (a config key or an input file), detected before compute is spent.

    The message names the key or file and the bad value, e.g. ``bptt.length must be >= 1, got 0``.
    Entry points print it as one line and exit non-zero, without a traceback.
    """
