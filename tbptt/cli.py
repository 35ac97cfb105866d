"""Run a Hydra app so that bad input ends in one line, ``error: ...``, and exit code 2.

Hydra prints composition errors (an unknown group option, a misspelled key, a value of the
wrong type) as a multi-line block. With ``HYDRA_FULL_ERROR=1`` it re-raises them instead, and
this wrapper prints each as one line that names the key and the bad value. Other exceptions
(bugs) keep their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from tbptt.errors import ConfigError

SCHEMA_SUFFIX = "_schema"  # ConfigStore entries behind the YAML options: not options to offer


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _options(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if start is None:
        return ""
    names = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break  # the option list ends where Hydra's search-path listing begins
        if not line.strip().endswith(SCHEMA_SUFFIX):
            names.append(line.strip())
    return f" (available: {', '.join(names)})" if names else ""


def one_line(err: BaseException) -> str:
    """``Could not override 'optim.lrr': Key 'lrr' not in 'AdamConfig'`` and the like."""
    lines = _lines(str(err)) or [type(err).__name__]
    message = lines[0].rstrip(".")
    if isinstance(err, OverrideParseException) and err.override:
        key = err.override.partition("=")[0]  # the value is left out: it may hold a password
        return (
            f"cannot parse the override of {key}: {message} (quote a value that holds = or "
            f"spaces: {key}='...')"
        )
    cause = err.__cause__
    if cause is not None and _lines(str(cause)):
        message += ": " + _lines(str(cause))[0]
    return message + _options(str(err))


class HeldJobLine:
    """Holds back the line Hydra writes to stderr before it re-raises a job's exception
    (``Error executing job with overrides: [...]``): for a bad config the one-line error says
    it all; any other error gets the line back, above its traceback."""

    PREFIX = "Error executing job with overrides:"

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.held = stream, ""

    def write(self, text: str) -> int:
        if text.startswith(self.PREFIX):
            self.held = text
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_app(main: Callable[[], Any]) -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises rather than printing
    stderr = sys.stderr
    sys.stderr = held = HeldJobLine(stderr)  # type: ignore[assignment]
    try:
        main()
    except (HydraException, OmegaConfBaseException, ConfigError) as err:
        print(f"error: {one_line(err)}", file=stderr)
        sys.exit(2)
    except OSError as err:  # an unwritable output directory, a full disk: not a bug to trace
        print(f"error: {err}", file=stderr)
        sys.exit(1)
    except BaseException:
        stderr.write(held.held)
        raise
    finally:
        sys.stderr = stderr
