"""Error types that the command line turns into one-line messages and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SSLBenchError(Exception):
    """Base class for every error a user can cause with bad input.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    Messages name the offending file or value and the problem.
    """


class DataError(SSLBenchError):
    """A dataset file or source folder is missing, unreadable or malformed."""


class OutputExistsError(SSLBenchError):
    """An output file exists and ``--overwrite`` was not given."""


class UnknownNameError(SSLBenchError, KeyError):
    """A registry lookup failed; the message suggests the nearest valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class SplitError(SSLBenchError, ValueError):
    """A label-fraction subset or a train/val/test split cannot be honoured."""


def did_you_mean(word: str, valid: Iterable[str], n: int = 1, cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the names of ``valid`` closest to ``word``, else ``""``.

    The one "did you mean" helper of sslbench: registries, experiment files, method
    options and task specs all phrase their unknown-name errors with it.
    """
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=n, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
